"""Hyper-parameter grids of fine-tuning methods (LM-BFF's protocol: run a grid, keep the best dev trial per seed).

A ``finetune.methods`` entry may give a non-empty list of numbers for any of :data:`GRID_KEYS`
(``lr``, ``batch_size``, ``eps``, ``steps``, ``weight_decay``). The lists expand into *trials*,
their Cartesian product: keys in :data:`GRID_KEYS` order, each list's values in the order given,
the last key varying fastest. Each trial is one job per model, task, k and seed, with the
method's settings and single values in place of the lists.

Run names (the ``{method}`` component of ``results/finetune/{model}/{task}/{k}-{seed}/{method}/``):

- a method without lists keeps its own name, so its paths are those of a plain method;
- a trial is the method's name, then ``~{key}-{value}`` per list in :data:`GRID_KEYS` order, with
  the short keys ``lr``, ``bs``, ``eps``, ``steps``, ``wd`` and the value as Python writes it
  (``repr``: shortest exact form), e.g. ``ft~lr-1e-05~bs-8``, ``mezo~lr-0.001~eps-0.01``.

Method names cannot hold ``~`` (the config schema's pattern), so trial names never collide with
them or with each other, and :func:`split_run` recovers the method. A trial's metrics.json
carries ``method`` (the configured name), ``trial`` (the run name) and ``hparams`` (its values of
:data:`GRID_KEYS`); :func:`lmft.aggregate.gather.mark_selected` then selects the best dev trial per seed.
Giving a method a list renames its existing run (``ft/`` becomes ``ft~lr-...``); changing one
value of a list reruns that value's trials only.

Stages that read a fine-tuning run (grafting, interpolation) are planned before the runs finish,
so they cannot follow the best trial: :func:`check_pinned` refuses grid methods there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

from lmft.io import LmftError

# key -> its short form in trial names; the order is the order of the product and of the names.
GRID_KEYS: dict[str, str] = {"lr": "lr", "batch_size": "bs", "eps": "eps", "steps": "steps", "weight_decay": "wd"}
SEP = "~"  # not allowed in method names, so it marks a trial


def grid_keys(spec: Mapping[str, Any], method: str = "method") -> list[str]:
    """The keys of ``spec`` given as lists (in :data:`GRID_KEYS` order), each checked: non-empty,
    finite numbers, no value twice (two trials would share a name)."""
    keys = [key for key in GRID_KEYS if isinstance(spec.get(key), (list, tuple))]
    for key in keys:
        values = spec[key]
        where = f"finetune method {method!r}: {key}"
        if not values:
            raise LmftError(f"{where} is an empty list; give a number or a non-empty list of numbers")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            raise LmftError(f"{where} holds {bad}, not finite numbers (YAML reads 1e-5 as text: write 1.0e-5)")
        if len(set(values)) != len(values):
            raise LmftError(f"{where} lists a value twice: {list(values)}")
    return keys


def _value(v: int | float) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


def trials(method: str, spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Run name -> settings of each trial of ``method`` (see the module doc); ``{method: spec}`` without lists."""
    keys = grid_keys(spec, method)
    out = {}
    for values in itertools.product(*(spec[key] for key in keys)):
        name = method + "".join(f"{SEP}{GRID_KEYS[key]}-{_value(v)}" for key, v in zip(keys, values))
        out[name] = dict(spec) | dict(zip(keys, values))
    return out


def expand_methods(methods: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run name -> settings of every trial of every method, in the methods' order."""
    return {name: trial for method, spec in methods.items() for name, trial in trials(method, spec).items()}


def split_run(run: str) -> tuple[str, str | None]:
    """``(method, trial)`` of a run name: the trial is the run name for a grid's trial, else None."""
    method, sep, _ = run.partition(SEP)
    return method, run if sep else None


def trial_fields(trial: str | None, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics.json fields of a trial (``trial``, ``hparams``: its resolved values of
    :data:`GRID_KEYS`); none for a method without a grid, whose metrics stay as they were."""
    if trial is None:
        return {}
    return {"trial": trial, "hparams": {key: settings[key] for key in GRID_KEYS if key in settings}}


def check_pinned(config: Mapping[str, Any], uses: Iterable[tuple[str, str]]) -> None:
    """Raise unless every ``(where, method)`` of ``uses`` names a method without a grid.

    ``where`` is the config key that reads the method's runs (e.g. ``graft.methods``). Such a
    stage is planned before the runs finish, when the best dev trial is not known yet.
    """
    methods = (config.get("finetune") or {}).get("methods") or {}
    for where, method in dict.fromkeys(uses):
        keys = grid_keys(methods.get(method) or {}, method)
        if keys:
            listed = " and ".join(keys)
            raise LmftError(f"config: {where} reads finetune method {method!r}, a grid over {listed}: its best "
                            f"trial is known only once the runs finish; pin one value of {listed} in "
                            f"finetune.methods.{method} or name a non-grid method")
