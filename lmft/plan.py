"""The plan: every job a config asks for, in one place, for the rules and the ``all`` target.

``Plan(config)`` turns a config into each stage's jobs, their parameters and their targets; the
rules files (``rules/*.smk``) read it from ``PLAN`` (``rules/common.smk``) and declare files,
params and resources, so no rules file needs another and their order does not matter. The stages'
own parts live in their folders: :mod:`lmft.data.plan`, :mod:`lmft.models.plan`, :mod:`lmft.finetune.plan`,
:mod:`lmft.kernels.plan`, :mod:`lmft.graft.plan`, :mod:`lmft.interpolate.plan`, :mod:`lmft.aggregate.plan`;
paths come from :mod:`lmft.paths`. A rule reads the config only through ``PLAN``, and a stage's runner
gets its settings resolved, as the rule's params.

A stage is planned when the config has its section (``finetune:``, ``kernels:``, ``graft:``,
``interpolate:``, ``memory:``), and the aggregate when some stage has runs. Every default comes from the config
schema: a config that Snakemake validated has them all, and ``Plan`` fills in the missing ones
(:func:`lmft.schema.with_defaults`), so a hand-made config plans what the workflow would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from lmft.aggregate import plan as aggregate_plan
from lmft.aggregate.topics import ZO_TYPES, topics_for
from lmft.data import plan as data_plan
from lmft.data.tasks import Task, get_task
from lmft.finetune.grid import check_pinned, expand_methods
from lmft.finetune.plan import MEMORY_KEYS, finetune_targets, memory_jobs
from lmft.graft.plan import graft_jobs, graft_methods, graft_options, overlap_groups, overlap_path, reference_options
from lmft.interpolate.plan import interpolate_jobs, pair_kinds
from lmft.kernels import plan as kernel_plan
from lmft.models.plan import model_source
from lmft.paths import graft_dir, interpolate_dir, memory_metrics
from lmft.schema import section, with_defaults

# A job's resources (mem_mb in MB, runtime in minutes, GPUs) where neither its section nor its method sets them.
RESOURCES = {"finetune": {"mem_mb": 4000, "runtime": 60, "gpu": 0},
             "memory": {"mem_mb": 4000, "runtime": 30, "gpu": 0},
             "graft": {"mem_mb": 8000, "runtime": 60, "gpu": 0},
             "interpolate": {"mem_mb": 8000, "runtime": 60, "gpu": 0}}


class Plan:
    """The jobs of one config, each part computed once, on first use."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = with_defaults(config)
        self.data, self.results = self.config["data_dir"], self.config["results_dir"]
        self._task_configs: dict[str, dict[str, Any]] = {}

    def _planned(self, stage: str) -> bool:
        return self.config.get(stage) is not None

    # --- tasks -----------------------------------------------------------------------------------

    def task_config(self, task: str) -> dict[str, Any]:
        """The part of the config that defines one task (:func:`lmft.data.plan.task_config`)."""
        if task not in self._task_configs:
            self._task_configs[task] = data_plan.task_config(self.config, task)
        return self._task_configs[task]

    def task(self, name: str) -> Task:
        """The task ``name`` as the config defines it."""
        return get_task(name, self.config)

    def tasks_config(self, names: Iterable[str]) -> dict[str, Any]:
        """The config entries that define ``names`` (:meth:`task_config`), merged."""
        out: dict[str, Any] = {"user_tasks": {}, "task_overrides": {}}
        for name in names:
            for key, value in self.task_config(name).items():
                out[key] = {**out[key], **value} if isinstance(value, dict) else value
        return out

    @cached_property
    def generation_tasks(self) -> list[str]:
        """Every generation task the config can name (:func:`lmft.data.plan.generation_tasks`)."""
        return data_plan.generation_tasks(self.config)

    @cached_property
    def kshot_targets(self) -> list[str]:
        return data_plan.kshot_targets(self.config)

    def raw_inputs(self, task: str) -> list[str]:
        """The files the download job of ``task`` reads (:func:`lmft.data.plan.raw_inputs`)."""
        return data_plan.raw_inputs(self.config, task)

    def kshot_settings(self, task: str) -> dict[str, Any]:
        """A k-shot job's settings (:func:`lmft.data.plan.kshot_settings`)."""
        return data_plan.kshot_settings(self.config, task)

    # --- models ----------------------------------------------------------------------------------

    def model_source(self, model: str) -> str:
        return model_source(self.config, model)

    def resources(self, stage: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A job's resources: :data:`RESOURCES` of its stage, overridden by ``given`` (its section's or method's)."""
        return {**RESOURCES[stage], **(given or {})}

    # --- fine-tuning -----------------------------------------------------------------------------

    @cached_property
    def finetune(self) -> dict[str, Any]:
        return section(self.config, "finetune")

    @cached_property
    def finetune_runs(self) -> dict[str, dict[str, Any]]:
        """Run name -> settings: every method, a grid's trials apart (:mod:`lmft.finetune.grid`)."""
        return expand_methods(self.finetune["methods"])

    def run_setting(self, run: str, key: str) -> Any:
        """A run's own value of ``key`` (its method's), else the finetune section's."""
        return self.finetune_runs[run].get(key, self.finetune[key])

    def run_resources(self, run: str) -> dict[str, Any]:
        """A run's resources: the finetune section's, overridden by its method's (:meth:`resources`)."""
        return self.resources("finetune", {**(self.finetune.get("resources") or {}),
                                           **(self.finetune_runs[run].get("resources") or {})})

    def eval_cap(self, method: str) -> int | None:
        """The test cap the fine-tuning runs of ``method`` used, so that scores compare with theirs."""
        return (self.finetune["methods"].get(method) or {}).get("eval_cap", self.finetune["eval_cap"])

    @cached_property
    def finetune_metrics(self) -> list[str]:
        return finetune_targets(self.config) if self._planned("finetune") else []

    # --- kernels ---------------------------------------------------------------------------------

    @cached_property
    def kernels(self) -> dict[str, Any]:
        """The ``kernels:`` section resolved (:func:`lmft.kernels.plan.settings`)."""
        return kernel_plan.settings(self.config)

    @cached_property
    def kernel_metrics(self) -> list[str]:
        return kernel_plan.solve_targets(self.config, self.kernels) if self._planned("kernels") else []

    def kernel_shard_settings(self, task: str, split: str) -> dict[str, Any]:
        """Everything a shard job of ``task``'s ``split`` computes with (:func:`lmft.kernels.plan.shard_settings`)."""
        return kernel_plan.shard_settings(self.kernels, self.task(task), split)

    def kernel_shard_mem_mb(self, task: str, model_json: str) -> int:
        """A shard job's memory (:func:`lmft.kernels.plan.shard_mem_mb_for`)."""
        return kernel_plan.shard_mem_mb_for(model_json, self.task(task), self.kernels)

    # --- grafting --------------------------------------------------------------------------------

    @cached_property
    def graft(self) -> dict[str, Any]:
        return section(self.config, "graft")

    @cached_property
    def graft_jobs(self) -> list[dict[str, Any]]:
        """The graft jobs (:func:`lmft.graft.plan.graft_jobs`); each reads one fine-tuning run per seed,
        so no method of a grid."""
        if not self._planned("graft"):
            return []
        jobs = graft_jobs(self.config)
        unset = self.graft["methods"] is None
        where = "graft.methods (unset: every ft and mezo method)" if unset else "graft.methods"
        check_pinned(self.config, [(where, job["method"]) for job in jobs])
        return jobs

    @cached_property
    def _graft_options(self) -> dict[str, dict[str, Any]]:
        return {method: graft_options(self.config, method) for method in graft_methods(self.config)}

    def graft_options(self, method: str) -> dict[str, Any]:
        """The graft settings of ``method``'s jobs (:func:`lmft.graft.plan.graft_options`)."""
        known = self._graft_options
        return known[method] if method in known else graft_options(self.config, method)

    def graft_reference_options(self, method: str) -> dict[str, Any]:
        """The part of ``method``'s graft settings that its reference jobs take
        (:func:`lmft.graft.plan.reference_options`)."""
        return reference_options(self.graft_options(method))

    def graft_ood(self, task: str) -> list[str]:
        """The tasks whose test splits score the grafts of ``task`` out of distribution."""
        return list(self.graft["ood"].get(task, []))

    @cached_property
    def overlap_groups(self) -> dict[str, dict[str, Any]]:
        """Overlap table -> the group of masks it compares (:func:`lmft.graft.plan.overlap_groups`)."""
        if not self.graft["overlap"]:
            return {}
        return {overlap_path(self.results, g): g for g in overlap_groups(self.graft_jobs)}

    # --- interpolation ---------------------------------------------------------------------------

    @cached_property
    def interpolate(self) -> dict[str, Any]:
        return section(self.config, "interpolate")

    @cached_property
    def interpolate_jobs(self) -> dict[str, dict[str, Any]]:
        """Job folder -> job (:func:`lmft.interpolate.plan.interpolate_jobs`); each endpoint reads one run."""
        if not self._planned("interpolate"):
            return {}
        jobs = {interpolate_dir(self.results, job["model"], job["task"], job["pair"]): job
                for job in interpolate_jobs(self.config)}
        check_pinned(self.config, [(f"interpolate.pairs.{job['pair']}.{end}", job[end]["method"])
                                   for job in jobs.values() for end in ("a", "b")])
        return jobs

    @cached_property
    def pair_kinds(self) -> dict[str, str]:
        return pair_kinds(self.config)

    # --- memory -------------------------------------------------------------------------------------

    @cached_property
    def memory(self) -> dict[str, Any]:
        return section(self.config, "memory")

    @cached_property
    def memory_settings(self) -> dict[str, Any]:
        """What a memory job's measurements depend on (its rule's params): changing one reruns them."""
        return {key: self.memory[key] for key in MEMORY_KEYS}

    @cached_property
    def memory_resources(self) -> dict[str, Any]:
        return self.resources("memory", self.memory.get("resources"))

    @cached_property
    def memory_jobs(self) -> list[dict[str, Any]]:
        """One job per model, classification task, k and seed (:func:`lmft.finetune.plan.memory_jobs`)."""
        return memory_jobs(self.config) if self._planned("memory") else []

    @cached_property
    def memory_metrics(self) -> list[str]:
        return [memory_metrics(self.results, **job) for job in self.memory_jobs]

    # --- the aggregate and all targets -----------------------------------------------------------

    @cached_property
    def metrics(self) -> dict[str, list[str]]:
        """Stage -> the metrics.json files of its runs, for the stages that have some; the fine-tuning
        runs of generation tasks are a stage of their own here (``generation``: their own table)."""
        planned = self._planned("finetune")
        stages = {"finetune": finetune_targets(self.config, "classification") if planned else [],
                  "generation": finetune_targets(self.config, "generation") if planned else [],
                  "kernel": self.kernel_metrics,
                  "graft": [f"{graft_dir(self.results, **job)}/metrics.json" for job in self.graft_jobs],
                  "interpolate": [f"{path}/metrics.json" for path in self.interpolate_jobs],
                  "memory": self.memory_metrics}
        return {stage: files for stage, files in stages.items() if files}

    @cached_property
    def curves(self) -> list[str]:
        return aggregate_plan.curves(self.metrics)

    @cached_property
    def zo_curves(self) -> list[str]:
        """The curves of the zeroth-order runs (:data:`lmft.aggregate.topics.ZO_TYPES`) of classification tasks:
        accuracy against forward passes (the ``zo`` topic)."""
        if not self._planned("finetune"):
            return []
        return [str(Path(p).with_name("curve.parquet")) for p in finetune_targets(self.config, "classification", ZO_TYPES)]

    @cached_property
    def evidence(self) -> list[str]:
        return aggregate_plan.evidence(self.metrics)

    @cached_property
    def topics(self) -> list[str]:
        """The aggregate's topics: those the stages with runs fill (:func:`lmft.aggregate.topics.topics_for`)."""
        return topics_for(self.metrics, zo=bool(self.zo_curves))

    @cached_property
    def aggregate_files(self) -> dict[str, str]:
        return aggregate_plan.aggregate_files(self.results, self.topics)

    @cached_property
    def aggregate_settings(self) -> dict[str, Any]:
        return aggregate_plan.aggregate_settings(self.config)

    @cached_property
    def targets(self) -> list[str]:
        """Everything the config asks for: the k-shot splits, every stage's runs, the overlap tables, the aggregate."""
        return [*self.kshot_targets, *self.finetune_metrics, *self.kernel_metrics, *self.metrics.get("graft", []),
                *self.overlap_groups, *self.metrics.get("interpolate", []), *self.memory_metrics,
                *(self.aggregate_files.values() if self.topics else [])]
