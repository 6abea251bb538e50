"""The plan: every job a config asks for, in one place, for the rules and the ``all`` target.

``Plan(config)`` turns a config into each stage's jobs, their parameters and their targets; the
rules files (``rules/*.smk``) read it from ``PLAN`` (``rules/common.smk``) and declare files,
params and resources, so no rules file needs another and their order does not matter. The stages'
own parts live beside it: :mod:`lmft.kernels.plan`, :mod:`lmft.graft.plan`,
:mod:`lmft.interpolate.plan`; paths come from :mod:`lmft.paths`.

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

from lmft.aggregate.topics import output_files, topics_for
from lmft.data.tasks import BUILTIN, get_task
from lmft.finetune.grid import check_pinned, expand_methods
from lmft.graft.plan import graft_jobs, graft_methods, graft_options, overlap_groups, overlap_path
from lmft.interpolate.plan import interpolate_jobs, pair_kinds
from lmft.io import LmftError
from lmft.kernels.plan import settings, solve_targets
from lmft.paths import (evidence_files, finetune_run, graft_dir, interpolate_dir, kshot_files, memory_metrics, plots_dir,
                        runs_table, tables_dir)
from lmft.schema import section, with_defaults


def finetune_targets(config: Mapping[str, Any], kind: str | None = None) -> list[str]:
    """``metrics.json`` of every job of the config: each method (each trial of a grid, named by
    :mod:`lmft.finetune.grid`) on its ``models``, ``tasks``, ``k`` and ``seeds`` (each defaulting to all of the
    config's); with ``kind``, only the jobs of tasks of that kind (``classification``, ``generation``)."""
    config = with_defaults(config)
    kshot = config["kshot"]
    return [f"{finetune_run(config['results_dir'], model, task, k, seed, run)}/metrics.json"
            for run, spec in expand_methods(section(config, "finetune")["methods"]).items()
            for model in (spec.get("models") or list(config.get("models") or {}))
            for task in spec.get("tasks") or config.get("tasks") or []
            if kind is None or get_task(task, config).kind == kind
            for k in spec.get("k") or kshot["k"]
            for seed in spec.get("seeds") or kshot["seeds"]]


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
        """The part of the config that defines one task (a param of its jobs): its change reruns that
        task's jobs only."""
        if task not in self._task_configs:
            entry: dict[str, Any] = {"user_tasks": {}, "task_overrides": {}}
            for key in ("user_tasks", "task_overrides"):
                if task in self.config[key]:
                    entry[key][task] = self.config[key][task]
            if get_task(task, self.config).source.get("kind") == "snli":
                entry["snli_source"] = self.config["snli_source"]
            self._task_configs[task] = entry
        return self._task_configs[task]

    def tasks_config(self, names: Iterable[str]) -> dict[str, Any]:
        """The config entries that define ``names`` (:meth:`task_config`), merged."""
        out: dict[str, Any] = {"user_tasks": {}, "task_overrides": {}}
        for name in names:
            for key, value in self.task_config(name).items():
                out[key] = {**out[key], **value} if isinstance(value, dict) else value
        return out

    @cached_property
    def generation_tasks(self) -> list[str]:
        """Every generation task the config can name (built-in and the user's): their k-shot splits hold
        k examples, not k per label (rule ``kshot_examples``), and their runs fill the generation table."""
        return sorted(t for t in [*BUILTIN, *self.config["user_tasks"]] if get_task(t, self.config).kind == "generation")

    @cached_property
    def kshot_targets(self) -> list[str]:
        kshot = self.config["kshot"]
        return [f for t in self.config["tasks"] for k in kshot["k"] for s in kshot["seeds"]
                for f in kshot_files(self.data, t, k, s).values()]

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
        """A run's resources: the finetune section's, overridden by its method's."""
        return {**(self.finetune.get("resources") or {}), **(self.finetune_runs[run].get("resources") or {})}

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
        return settings(self.config)

    @cached_property
    def kernel_metrics(self) -> list[str]:
        return solve_targets(self.config, self.kernels) if self._planned("kernels") else []

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
        return {key: self.memory[key] for key in ("modes", "batch_size", "steps", "repeats")}

    @cached_property
    def memory_resources(self) -> dict[str, Any]:
        """A memory job's resources (mem_mb, runtime, gpu): the section's, else 4000 MB, 30 minutes, no GPU."""
        return {"mem_mb": 4000, "runtime": 30, "gpu": 0, **(self.memory.get("resources") or {})}

    @cached_property
    def memory_jobs(self) -> list[dict[str, Any]]:
        """One job per model, classification task, k and seed of the ``memory:`` section (unset: all the config's)."""
        if not self._planned("memory"):
            return []
        from lmft.models.params import parse_mode  # heavy (torch): only where memory is planned

        m, kshot = self.memory, self.config["kshot"]
        for mode in m["modes"]:
            try:
                parse_mode(mode)
            except LmftError as e:
                raise LmftError(f"config: memory.modes: {e}") from e
        tasks = m["tasks"] or [t for t in self.config["tasks"] if get_task(t, self.config).kind == "classification"]
        return [{"model": model, "task": task, "k": k, "seed": seed}
                for model in m["models"] or list(self.config["models"]) for task in tasks
                for k in m["k"] or kshot["k"] for seed in m["seeds"] or kshot["seeds"]]

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
        """The interpolation curves, which the interpolate jobs write beside their metrics.json."""
        return [str(Path(p).with_name("curve.parquet")) for p in self.metrics.get("interpolate", [])]

    @cached_property
    def evidence(self) -> list[str]:
        """The per-example files beside the runs' metrics that the findings compare pairwise."""
        return sorted({f for stage, files in self.metrics.items() for m in files for f in evidence_files(m, stage)})

    @cached_property
    def topics(self) -> list[str]:
        """The aggregate's topics: those the stages with runs fill (:func:`lmft.aggregate.topics.topics_for`)."""
        return topics_for(self.metrics)

    @cached_property
    def aggregate_files(self) -> dict[str, str]:
        """The aggregate's outputs by name: ``runs`` (the table of every run), each topic's tables and plots."""
        return {"runs": runs_table(self.results),
                **output_files(tables_dir(self.results), plots_dir(self.results), self.topics)}

    @cached_property
    def targets(self) -> list[str]:
        """Everything the config asks for: the k-shot splits, every stage's runs, the overlap tables, the aggregate."""
        return [*self.kshot_targets, *self.finetune_metrics, *self.kernel_metrics, *self.metrics.get("graft", []),
                *self.overlap_groups, *self.metrics.get("interpolate", []), *self.memory_metrics,
                *(self.aggregate_files.values() if self.topics else [])]
