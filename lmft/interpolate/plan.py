"""The interpolation stage's part of the plan (:mod:`lmft.plan`): the jobs of ``interpolate.pairs``, and
what kind of path each pair is (the findings need it; the metrics name the endpoints by path only).

Every key of ``interpolate:`` and its default is in the config schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmft.io import LmftError
from lmft.schema import section, with_defaults

_ENDPOINT_KEYS = {"method", "task", "k", "seed", "step", "pretrained"}
_PAIR_KEYS = {"a", "b", "tasks", "k", "seed"}


def interpolate_jobs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The interpolate jobs of a config: one per (model, evaluation task, pair) of ``interpolate.pairs``.

    ``interpolate.models`` narrows the models (default all; a pair runs only on the models both
    endpoints' methods run on). A pair is ``{a: endpoint, b: endpoint}`` with optional ``k``/``seed`` (default: the first of
    ``kshot``) and ``tasks`` (the evaluation tasks; default: the endpoints' tasks when they name
    any, else every task of the config). An endpoint names a ``finetune.methods`` entry
    (``method``) and may set ``task``, ``k``, ``seed`` (default: the job's), ``step`` (a
    ``save_steps`` checkpoint of that run) and ``pretrained: true`` (the run's values before
    training). Each job carries the endpoints resolved to ``{method, task, k, seed, step, pretrained}``.
    """
    config = with_defaults(config)
    interp, kshot = section(config, "interpolate"), config["kshot"]
    methods = section(config, "finetune")["methods"]
    declared = list(config.get("models") or {})
    unknown_models = [m for m in interp["models"] or [] if m not in declared]
    if unknown_models:
        raise LmftError(f"config: interpolate.models names {unknown_models}, not among models: {declared}")
    jobs = []
    for pair, spec in interp["pairs"].items():
        where = f"config: interpolate.pairs.{pair}"
        if not isinstance(spec, Mapping) or "a" not in spec or "b" not in spec:
            raise LmftError(f"{where}: needs endpoints a and b")
        unknown = sorted(set(spec) - _PAIR_KEYS)
        if unknown:
            raise LmftError(f"{where}: unknown key(s) {unknown}; known: {sorted(_PAIR_KEYS)}")
        k = spec.get("k", kshot["k"][0])
        seed = spec.get("seed", kshot["seeds"][0])
        ends = {}
        for end in ("a", "b"):
            ep = spec[end]
            bad = sorted(set(ep) - _ENDPOINT_KEYS)
            if bad or "method" not in ep:
                raise LmftError(f"{where}.{end}: an endpoint needs 'method' and takes {sorted(_ENDPOINT_KEYS)}"
                                f"{f'; unknown {bad}' if bad else ''}")
            if ep["method"] not in methods:
                raise LmftError(f"{where}.{end}: method {ep['method']!r} is not one of finetune.methods: "
                                f"{sorted(methods)}")
            step = ep.get("step")
            if step is not None and step not in (methods[ep["method"]].get("save_steps") or []):
                raise LmftError(f"{where}.{end}: step {step} is not in finetune.methods.{ep['method']}.save_steps "
                                f"({methods[ep['method']].get('save_steps') or []})")
            ends[end] = {"method": ep["method"], "task": ep.get("task"), "k": ep.get("k", k),
                         "seed": ep.get("seed", seed), "step": step, "pretrained": bool(ep.get("pretrained", False))}
        named = list(dict.fromkeys(e["task"] for e in ends.values() if e["task"]))
        tasks = spec.get("tasks") or named or list(config.get("tasks") or [])
        models = [m for m in (interp["models"] or declared)
                  if all(m in (methods[e["method"]].get("models") or [m]) for e in ends.values())]
        for model in models:
            for task in tasks:
                resolved = {end: {**e, "task": e["task"] or task} for end, e in ends.items()}
                jobs.append({"model": model, "task": task, "pair": pair, "k": k, "seed": seed, **resolved})
    return jobs


def pair_kinds(config: Mapping[str, Any]) -> dict[str, str]:
    """Kind of each ``interpolate.pairs`` entry of ``config``: ``pretrained-ft`` (one end a run's
    pre-trained values, the other that run's final checkpoint); for two checkpoints at the same
    step and k of methods with the same settings (but the effective ``model_seed`` and which
    checkpoints they save): ``seed-seed`` (same task and data seed, another ``model_seed``),
    ``data-seed`` (same task, another k-shot data seed), ``task-task`` (same data seed, another
    task); else ``other`` (also when the pair's jobs on several tasks disagree).

    The interpolate metrics name their endpoints by path only, so the workflow passes this to the aggregate.
    """
    from lmft.finetune.methods import resolve_spec  # heavy (torch): lazily

    methods = section(config, "finetune")["methods"]

    def settings(end: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        spec = resolve_spec(methods[end["method"]], end["method"])
        for key in ("save_steps", "save_every"):  # what a run keeps on disk, not what it trains
            spec.pop(key, None)
        seed = spec.pop("model_seed")
        return spec, end["seed"] if seed is None else int(seed)

    def kind(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
        same = [f for f in ("method", "task", "k", "seed", "step") if a[f] == b[f]]
        if a["pretrained"] != b["pretrained"]:
            final = b if a["pretrained"] else a
            same_run = {"method", "task", "k", "seed"} <= set(same)
            return "pretrained-ft" if same_run and final["step"] is None else "other"
        if a["pretrained"] or not {"k", "step"} <= set(same):
            return "other"
        (spec_a, seed_a), (spec_b, seed_b) = settings(a), settings(b)
        if spec_a != spec_b:
            return "other"
        differ = [f for f in ("task", "seed") if f not in same]
        if not differ:
            return "seed-seed" if seed_a != seed_b else "other"
        return {("seed",): "data-seed", ("task",): "task-task"}.get(tuple(differ), "other")

    kinds: dict[str, set[str]] = {}
    for job in interpolate_jobs(config):
        kinds.setdefault(job["pair"], set()).add(kind(job["a"], job["b"]))
    return {pair: found.pop() if len(found) == 1 else "other" for pair, found in sorted(kinds.items())}
