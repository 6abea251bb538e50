"""The interpolation stage's part of the plan: the jobs of ``interpolate.pairs``.

Every key of ``interpolate:`` and its default is in the config schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmft.config import section, with_defaults
from lmft.io import LmftError

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
