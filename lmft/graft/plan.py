"""The grafting stage's part of the plan (:mod:`lmft.plan`): which runs are grafted at which
sparsities, with which settings, and which masks are compared for overlap.

Every key of ``graft:`` and its default is in the config schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmft.io import LmftError
from lmft.paths import overlap_seeds, overlap_tasks
from lmft.schema import section, with_defaults

# The settings a graft's numbers depend on (its rule's params): the section's, or a method entry's.
OPTIONS = ("epochs", "lr", "sigmoid_bias", "batch_size", "mask_seed", "select", "exclude", "eval_batch_size")
# Those the scores of "pre" and "ft" depend on (the graft_reference rule's params): a change of the
# relaxation's settings reruns the grafts, not their reference.
REFERENCE_OPTIONS = ("exclude", "eval_batch_size")


def graft_methods(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``graft.methods`` (name -> entry), default every method of ``finetune.methods`` whose type trains."""
    from lmft.finetune.methods import get_type  # heavy (torch): only where a graft is planned

    methods = section(config, "finetune")["methods"]
    chosen = section(config, "graft")["methods"]
    if chosen is None:
        chosen = {m: {} for m, spec in methods.items() if get_type(spec.get("type"), m).trains}
    for method in chosen:
        if method not in methods:
            raise LmftError(f"config: graft.methods names {method!r}, not one of finetune.methods: {sorted(methods)}")
        if not get_type(methods[method].get("type"), method).trains:
            raise LmftError(f"config: graft.methods: {method!r} is a {methods[method].get('type')} method; grafting "
                            "needs a method that trains (ft or mezo)")
    return {m: dict(entry or {}) for m, entry in chosen.items()}


def graft_options(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The graft settings of ``method``'s jobs (:data:`OPTIONS`, every one): the section's (the schema's
    defaults filled in), overridden by the method's entry."""
    merged = {**section(config, "graft"), **(graft_methods(config).get(method) or {})}
    return {key: merged[key] for key in OPTIONS}


def reference_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a method's graft settings (:func:`graft_options`) that its reference job takes."""
    return {key: value for key, value in options.items() if key in REFERENCE_OPTIONS}


def graft_jobs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The graft jobs of a config: every (model, task, k, seed, method, sparsity) its ``graft`` section asks for.

    Each method of :func:`graft_methods` on its models (the entry's ``models``, else the fine-tuning
    method's, else all), for ``graft.tasks``/``k``/``seeds`` (default the config's tasks and k-shot
    settings) and ``graft.sparsities``.
    """
    config = with_defaults(config)
    graft, kshot = section(config, "graft"), config["kshot"]
    ft_methods = section(config, "finetune")["methods"]
    jobs = []
    for method, entry in graft_methods(config).items():
        models = entry.get("models") or ft_methods[method].get("models") or list(config.get("models") or {})
        jobs += [{"model": model, "task": task, "k": k, "seed": seed, "method": method, "sparsity": float(s)}
                 for model in models
                 for task in graft["tasks"] or config.get("tasks") or []
                 for k in graft["k"] or kshot["k"]
                 for seed in graft["seeds"] or kshot["seeds"]
                 for s in graft["sparsities"]]
    return jobs


def overlap_groups(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mask groups to compare, from the graft jobs: per (model, k, seed, method, sparsity) the masks of
    all tasks (``by="tasks"``), and per (model, task, k, method, sparsity) those of all seeds
    (``by="seeds"``); groups of fewer than two masks are left out. Each group lists its ``members`` (jobs)."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for job in jobs:
        for by, free in (("tasks", "task"), ("seeds", "seed")):
            key = (by, *(job[f] for f in ("model", "task", "k", "seed", "method", "sparsity") if f != free))
            group = groups.setdefault(key, {"by": by, **{f: v for f, v in job.items() if f != free}, "members": []})
            group["members"].append(job)
    return [g for g in groups.values() if len(g["members"]) >= 2]


def overlap_path(results: str, group: Mapping[str, Any]) -> str:
    """Where a group's overlap table goes (one pattern per ``by``, so the two rules never collide)."""
    shared = {key: group[key] for key in ("model", "k", "method", "sparsity")}
    if group["by"] == "tasks":
        return overlap_tasks(results, seed=group["seed"], **shared)
    return overlap_seeds(results, task=group["task"], **shared)
