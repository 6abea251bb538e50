"""Gather the runs' metrics.json files into one table (``runs.parquet``) and mark the trial each seed keeps.

:func:`load_runs` makes one row per file (nested dicts flattened to ``a.b`` columns, lists kept
as JSON text, the union of all keys as columns) and marks in ``selected`` the run kept for the
tables: where a hyper-parameter grid ran (several files share a run key and differ in
``trial``), the trial with the best ``dev_metric``, per seed, as LM-BFF's ``gather_result.py``
does.

Inputs, one ``metrics.json`` per run (the stage's rules plan them, :class:`lmft.plan.Plan`):

``finetune``  ``results/finetune/{model}/{task}/{k}-{seed}/{run}/metrics.json`` (``{run}``: the method or a grid trial)
    keys used: ``model task k seed method metric test_metric``; ``type``
    (zeroshot|icl|linear-probe|ft|mezo, orders the rows), ``head`` (prompt|cls|causal, pairs the
    run with a kernel), ``dev_metric`` (picks the best ``trial``); ``n_test`` and ``test_majority``
    (share of the most frequent class among the scored test labels; older runs lack it) for the
    baselines and standard errors of the main table; ``mode``, ``peak_mem_mb``, ``device`` in the findings.
``generation`` the fine-tuning stage's runs of generation tasks, in the same paths (``stage`` says
    ``generation``); keys used: as for finetune, ``test_se`` (standard error over the test examples),
    ``test_scores.*`` (ROUGE-1/2/L or exact match and token F1), ``n_test``, ``gen_tokens_mean``.
``kernel``    ``results/kernel_solve/{model}/{task}/{k}-{seed}/{formula}-{prompt}/{solver}/metrics.json``
    keys used: ``model task k seed formula prompt solver metric test_metric``; ``n_test``,
    ``test_majority`` as for finetune; ``kernel.mode`` in the findings.
``graft``     ``results/graft/{model}/{task}/{k}-{seed}/{method}/sparsity-{s}/metrics.json``
    keys used: ``model task k seed method sparsity metric test_metric``; ``test_ece``,
    ``kept_fraction``, ``ft_test_metric``, ``pre_test_metric``, ``ood.*`` when present.
``interpolate`` ``results/interpolate/{model}/{task}/{pair}/metrics.json`` and ``curve.parquet``
    beside it (columns alpha, split, loss, metric); keys used: ``model task pair``; ``l2``,
    ``cosine``, ``{split}_loss_barrier``, ``{split}_metric_barrier`` when present.
``memory``    ``results/memory/{model}/{task}/{k}-{seed}/metrics.json`` (:mod:`lmft.finetune.memory`): one row
    per entry of its ``rows`` (mode, what), with the file's other keys, the entry's keys and
    ``peak_mb_min``, ``peak_mb_median``, ``peak_mb_max`` over its repeats (NaN where not measured);
    keys used: ``model task k seed rows``, and each row's ``mode what peak_mb``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmft.aggregate.topics import STAGES
from lmft.io import ArtifactError, LmftError, PathLike, read_json

# Fields that name one run of a stage; files that share them differ only in the grid `trial`.
RUN_KEYS: dict[str, tuple[str, ...]] = {
    "finetune": ("model", "task", "k", "seed", "method"),
    "generation": ("model", "task", "k", "seed", "method"),
    "kernel": ("model", "task", "k", "seed", "formula", "prompt", "solver"),
    "graft": ("model", "task", "k", "seed", "method", "sparsity"),
    "interpolate": ("model", "task", "pair"),
    "memory": ("model", "task", "k", "seed", "mode", "what"),
}
_SCORED = ("metric", "test_metric")
REQUIRED: dict[str, tuple[str, ...]] = {
    "finetune": RUN_KEYS["finetune"] + _SCORED,
    "generation": RUN_KEYS["generation"] + _SCORED,
    "kernel": RUN_KEYS["kernel"] + _SCORED,
    "graft": RUN_KEYS["graft"] + _SCORED,
    "interpolate": RUN_KEYS["interpolate"],
    "memory": ("model", "task", "k", "seed"),  # and ``rows``, each with mode, what and peak_mb (:func:`_memory_rows`)
}
_INTS = ("k", "seed")
_NUMBERS = ("sparsity", "test_metric")
# Column order of runs.parquet: these first (where present), the rest sorted, `path` last.
_FIRST = ("stage", "model", "task", "k", "seed", "method", "type", "formula", "prompt", "solver",
          "sparsity", "pair", "trial", "selected", "metric", "dev_metric", "test_metric", "test_ece")


def load_runs(paths: Sequence[PathLike]) -> pd.DataFrame:
    """One row per metrics.json in ``paths``: checked, flattened, sorted, with ``selected`` marked.

    Raises :class:`ArtifactError` naming the file for a missing, unreadable or incomplete file,
    and :class:`LmftError` when two files describe the same run and trial.
    """
    if not paths:
        raise LmftError("aggregate: no metrics.json files to gather (no stage registered any run)")
    records = [row for p in paths for row in _read_run(Path(p))]
    columns = sorted({c for r in records for c in r})
    data = {c: _column([r.get(c) for r in records]) for c in columns}
    runs = pd.DataFrame(data)
    first = [c for c in _FIRST if c in runs.columns]
    rest = sorted(c for c in runs.columns if c not in first and c != "path")
    runs = runs[first + rest + ["path"]]
    order = sorted(range(len(runs)), key=lambda i: (STAGES.index(records[i]["stage"]),
                                                     _run_sort_key(records[i]), str(records[i]["path"])))
    runs = runs.iloc[order].reset_index(drop=True)
    return mark_selected(runs)


def _read_run(path: Path) -> list[dict[str, Any]]:
    """The rows of one metrics.json: one, or a memory file's one per (mode, what)."""
    m = read_json(path)
    if not isinstance(m, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(m).__name__}")
    stage = m.get("stage")
    if stage not in STAGES:
        raise ArtifactError(f"{path}: 'stage' is {stage!r}, expected one of {list(STAGES)}")
    missing = [k for k in REQUIRED[stage] if m.get(k) is None]
    if missing:
        raise ArtifactError(f"{path}: {stage} metrics lack key(s) {missing}; delete it and rerun the job that made it")
    for key in REQUIRED[stage]:
        v = m[key]
        if key in _INTS:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif key in _NUMBERS:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        else:
            ok = isinstance(v, str) and v != ""
        if not ok:
            raise ArtifactError(f"{path}: key {key!r} has a bad value {v!r}")
    if stage == "memory":
        return _memory_rows(path, m)
    row = _flatten(m)
    row["path"] = str(path)
    return [row]


def _memory_rows(path: Path, m: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A memory file's rows: its keys but ``rows``, each entry's keys, and the peaks' min, median and max."""
    entries = m.get("rows")
    if not isinstance(entries, list) or not entries:
        raise ArtifactError(f"{path}: memory metrics need a non-empty list 'rows'; delete it and rerun the job")
    shared = _flatten({k: v for k, v in m.items() if k != "rows"})
    out = []
    for i, entry in enumerate(entries):
        bad = [k for k in ("mode", "what") if not (isinstance(entry, Mapping) and isinstance(entry.get(k), str))]
        peaks = entry.get("peak_mb") if isinstance(entry, Mapping) else None
        if bad or not isinstance(peaks, list):
            raise ArtifactError(f"{path}: rows[{i}] needs strings 'mode' and 'what' and a list 'peak_mb'; "
                                "delete it and rerun the job")
        measured = [float(p) for p in peaks if not is_missing(p)]
        summary = {f"peak_mb_{name}": float(f(measured)) if measured else math.nan
                   for name, f in (("min", np.min), ("median", np.median), ("max", np.max))}
        out.append(shared | _flatten(entry) | summary | {"path": str(path)})
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``a.b`` keys; lists -> JSON text (one cell, one type per column)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, sort_keys=True)
        else:
            out[key] = v
    return out


def _column(values: list[Any]) -> pd.Series:
    """A column with one type: ints, floats, bools or strings (mixed values become JSON text)."""
    present = [v for v in values if not is_missing(v)]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present) and present:
        return pd.Series(values, dtype="Int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([math.nan if is_missing(v) else float(v) for v in values], dtype="float64")
    return pd.Series([None if is_missing(v) else v if isinstance(v, str) else json.dumps(v) for v in values],
                     dtype="object")


def is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _sort_key(v: Any) -> tuple:
    """Total order over missing < numbers < strings (a column may mix them, e.g. ``trial``)."""
    if is_missing(v):
        return (0,)
    if isinstance(v, (bool, int, float, np.integer, np.floating)):
        return (1, float(v))
    return (2, str(v))


def _run_sort_key(row: Mapping[str, Any]) -> tuple:
    return tuple(_sort_key(row.get(k)) for k in RUN_KEYS[row["stage"]] + ("trial",))


def mark_selected(runs: pd.DataFrame) -> pd.DataFrame:
    """Set ``selected``: per run key (seed included), the trial with the best ``dev_metric``.

    Ties go to the first trial in sort order. A run key with one file is selected as it is.
    ``runs`` must be sorted as :func:`load_runs` sorts it.
    """
    runs = runs.copy()
    selected = np.zeros(len(runs), dtype=bool)
    trial = runs["trial"] if "trial" in runs.columns else pd.Series([None] * len(runs))
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs.to_dict("records")):
        key = (r["stage"],) + tuple(_sort_key(r.get(k)) for k in RUN_KEYS[r["stage"]])
        groups.setdefault(key, []).append(i)
    for rows in groups.values():
        seen: dict[tuple, int] = {}
        for i in rows:
            t = _sort_key(trial.iloc[i])
            if t in seen:
                raise LmftError(f"aggregate: {runs['path'].iloc[seen[t]]} and {runs['path'].iloc[i]} describe "
                                f"the same run and trial; remove one of them from the inputs")
            seen[t] = i
        if len(rows) == 1:
            selected[rows[0]] = True
            continue
        dev = []
        for i in rows:
            v = runs["dev_metric"].iloc[i] if "dev_metric" in runs.columns else math.nan
            if is_missing(v):
                raise ArtifactError(f"{runs['path'].iloc[i]}: no dev_metric, which picks the best of the grid's trials")
            dev.append(float(v))
        selected[rows[int(np.argmax(dev))]] = True  # argmax: the first of equal values
    runs["selected"] = selected
    first = [c for c in _FIRST if c in runs.columns]
    return runs[first + [c for c in runs.columns if c not in first]]


def selected(runs: pd.DataFrame, stages: Sequence[str]) -> pd.DataFrame:
    part = runs[runs["stage"].isin(stages) & runs["selected"]]
    return part.reset_index(drop=True)
