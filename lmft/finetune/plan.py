"""The fine-tuning stage's part of the plan (:mod:`lmft.plan`): the runs of ``finetune.methods`` (a grid's
trials apart) and the jobs of the ``memory:`` section.

Every key of both sections and its default is in the config schema (a method entry's, in its type's
settings: :mod:`lmft.finetune.methods`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lmft.data.tasks import get_task
from lmft.finetune.grid import expand_methods
from lmft.io import LmftError
from lmft.paths import finetune_run
from lmft.schema import section, with_defaults

# What a memory job's measurements depend on (its rule's params): changing one reruns them.
MEMORY_KEYS = ("modes", "batch_size", "steps", "repeats")


def finetune_targets(config: Mapping[str, Any], kind: str | None = None,
                     types: Iterable[str] | None = None) -> list[str]:
    """``metrics.json`` of every job of the config: each method (each trial of a grid, named by
    :mod:`lmft.finetune.grid`) on its ``models``, ``tasks``, ``k`` and ``seeds`` (each defaulting to all of the
    config's); with ``kind``, only the jobs of tasks of that kind (``classification``, ``generation``);
    with ``types``, only the methods of those types."""
    config = with_defaults(config)
    kshot = config["kshot"]
    return [f"{finetune_run(config['results_dir'], model, task, k, seed, run)}/metrics.json"
            for run, spec in expand_methods(section(config, "finetune")["methods"]).items()
            if types is None or spec.get("type") in types
            for model in (spec.get("models") or list(config.get("models") or {}))
            for task in spec.get("tasks") or config.get("tasks") or []
            if kind is None or get_task(task, config).kind == kind
            for k in spec.get("k") or kshot["k"]
            for seed in spec.get("seeds") or kshot["seeds"]]


def memory_jobs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One job per model, classification task, k and seed of the ``memory:`` section (unset: all the config's)."""
    from lmft.models.params import parse_mode  # heavy (torch): only where memory is planned

    config = with_defaults(config)
    m, kshot = section(config, "memory"), config["kshot"]
    for mode in m["modes"]:
        try:
            parse_mode(mode)
        except LmftError as e:
            raise LmftError(f"config: memory.modes: {e}") from e
    tasks = m["tasks"] or [t for t in config["tasks"] if get_task(t, config).kind == "classification"]
    return [{"model": model, "task": task, "k": k, "seed": seed}
            for model in m["models"] or list(config["models"]) for task in tasks
            for k in m["k"] or kshot["k"] for seed in m["seeds"] or kshot["seeds"]]


def memory_resources(memory: Mapping[str, Any]) -> dict[str, Any]:
    """A memory job's resources (mem_mb, runtime, gpu): the section's, else 4000 MB, 30 minutes, no GPU."""
    return {"mem_mb": 4000, "runtime": 30, "gpu": 0, **(memory.get("resources") or {})}
