"""Gather the runs' metrics.json files into one table, and the paper tables made from it.

Inputs, one ``metrics.json`` per run (the stage's rules register them, see ``rules/aggregate.smk``):

``finetune``  ``results/finetune/{model}/{task}/{k}-{seed}/{run}/metrics.json`` (``{run}``: the method or a grid trial)
    keys used: ``model task k seed method metric test_metric``; ``type``
    (zeroshot|icl|linear-probe|ft|mezo, orders the rows), ``head`` (prompt|cls|causal, pairs the
    run with a kernel), ``dev_metric`` (picks the best ``trial``); ``n_test`` and ``test_majority``
    (share of the most frequent class among the scored test labels; older runs lack it) for the
    baselines and standard errors of the main table; ``mode``, ``peak_mem_mb``, ``device`` in the findings.
``kernel``    ``results/kernel_solve/{model}/{task}/{k}-{seed}/{formula}-{prompt}/{solver}/metrics.json``
    keys used: ``model task k seed formula prompt solver metric test_metric``; ``n_test``,
    ``test_majority`` as for finetune; ``kernel.mode`` in the findings.
``graft``     ``results/graft/{model}/{task}/{k}-{seed}/{method}/sparsity-{s}/metrics.json``
    keys used: ``model task k seed method sparsity metric test_metric``; ``test_ece``,
    ``kept_fraction``, ``ft_test_metric``, ``pre_test_metric``, ``ood.*`` when present.
``interpolate`` ``results/interpolate/{model}/{task}/{pair}/metrics.json`` and ``curve.parquet``
    beside it (columns alpha, split, loss, metric); keys used: ``model task pair``; ``l2``,
    ``cosine``, ``{split}_loss_barrier``, ``{split}_metric_barrier`` when present.

:func:`load_runs` makes one row per file (nested dicts flattened to ``a.b`` columns, lists kept
as JSON text, the union of all keys as columns) and marks in ``selected`` the run kept for the
tables: where a hyper-parameter grid ran (several files share a run key and differ in
``trial``), the trial with the best ``dev_metric``, per seed, as LM-BFF's ``gather_result.py``
does. Tables report ``mean (std)`` over seeds of the metric x 100 with the population standard
deviation (``np.std``, ddof 0), as LM-BFF does; a cell of one seed shows ``mean ±se`` instead, the
binomial standard error sqrt(p (1 - p) / n_test) of its accuracy (a std over one seed would be 0).
The main table opens each (model, k) block with the baselines: the test set's majority-class share
and its number of examples. The ``findings`` topic checks each paper's claim against the runs
(:mod:`lmft.findings`).

Every output is a deterministic function of the inputs: rows and columns are sorted, floats
have a fixed format, so the same metrics give byte-identical tables.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmft.io import ArtifactError, LmftError, PathLike, atomic_path, read_json, read_parquet, write_parquet

STAGES = ("finetune", "kernel", "graft", "interpolate")
# Fields that name one run of a stage; files that share them differ only in the grid `trial`.
RUN_KEYS: dict[str, tuple[str, ...]] = {
    "finetune": ("model", "task", "k", "seed", "method"),
    "kernel": ("model", "task", "k", "seed", "formula", "prompt", "solver"),
    "graft": ("model", "task", "k", "seed", "method", "sparsity"),
    "interpolate": ("model", "task", "pair"),
}
_SCORED = ("metric", "test_metric")
REQUIRED: dict[str, tuple[str, ...]] = {
    "finetune": RUN_KEYS["finetune"] + _SCORED,
    "kernel": RUN_KEYS["kernel"] + _SCORED,
    "graft": RUN_KEYS["graft"] + _SCORED,
    "interpolate": RUN_KEYS["interpolate"],
}
_INTS = ("k", "seed")
_NUMBERS = ("sparsity", "test_metric")
# Column order of runs.parquet: these first (where present), the rest sorted, `path` last.
_FIRST = ("stage", "model", "task", "k", "seed", "method", "type", "formula", "prompt", "solver",
          "sparsity", "pair", "trial", "selected", "metric", "dev_metric", "test_metric", "test_ece")

# Row order in the tables: by family (as the papers list them), then by name.
TYPE_ORDER = ("zeroshot", "icl", "linear-probe", "ft", "mezo", "kernel")
FORMULA_ORDER = ("sgd", "signgd", "asymmetric-signgd")
PROMPT_ORDER = ("prompt", "noprompt")
SOLVER_ORDER = ("lstsq", "logistic", "logistic-dev", "svm", "asym")
FT_TYPES = ("ft", "mezo")  # the runs a kernel is compared with

TOPICS = ("main", "kernel", "graft", "interpolate", "findings")
TABLE_FORMATS = ("csv", "md", "tex", "html")
# the findings are sentences, not a paper table: no LaTeX
TOPIC_TABLE_FORMATS: dict[str, tuple[str, ...]] = {"findings": ("csv", "md", "html")}
PLOT_FORMATS = ("png", "pdf")
# topic -> (stem of its table, stem of its plot or None, title)
TOPIC_FILES: dict[str, tuple[str, str | None, str]] = {
    "main": ("main", "accuracy_vs_k", "Test metric (mean (std) over seeds, x100)"),
    "kernel": ("kernel_vs_ft", "kernel_vs_ft", "Kernel solutions vs fine-tuning (test metric x100)"),
    "graft": ("graft", "graft_sparsity", "Grafting: test metric, ECE and kept fraction vs sparsity (x100)"),
    "interpolate": ("interpolate", "interpolate_curves", "Linear interpolation: barriers and distances"),
    "findings": ("findings", None, "Findings: each paper's claim against this run"),
}
MISSING = "-"
# rows that open each (model, k) block of the main table
BASELINE_ROWS = ("majority class", "test examples")


def topics_for(stages: Iterable[str]) -> list[str]:
    """The topics (tables + plots) that the registered ``stages`` can fill, in :data:`TOPICS` order."""
    s = set(stages)
    unknown = s - set(STAGES)
    if unknown:
        raise LmftError(f"aggregate: unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    have = {"main": bool(s & {"finetune", "kernel"}), "kernel": {"finetune", "kernel"} <= s,
            "graft": "graft" in s, "interpolate": "interpolate" in s, "findings": bool(s)}
    return [t for t in TOPICS if have[t]]


def table_formats(topic: str) -> tuple[str, ...]:
    """The formats a topic's table is written in."""
    return TOPIC_TABLE_FORMATS.get(topic, TABLE_FORMATS)


def output_files(tables_dir: PathLike, plots_dir: PathLike, topics: Sequence[str]) -> dict[str, str]:
    """Named output files of the aggregate: ``{topic}_{fmt}`` for tables, ``{topic}_plot_{fmt}`` for plots."""
    out: dict[str, str] = {}
    for topic in topics:
        table, plot, _ = TOPIC_FILES[topic]
        out.update({f"{topic}_{fmt}": f"{tables_dir}/{table}.{fmt}" for fmt in table_formats(topic)})
        if plot is not None:
            out.update({f"{topic}_plot_{fmt}": f"{plots_dir}/{plot}.{fmt}" for fmt in PLOT_FORMATS})
    return out


# ----------------------------------------------------------------------------- loading

def load_runs(paths: Sequence[PathLike]) -> pd.DataFrame:
    """One row per metrics.json in ``paths``: checked, flattened, sorted, with ``selected`` marked.

    Raises :class:`ArtifactError` naming the file for a missing, unreadable or incomplete file,
    and :class:`LmftError` when two files describe the same run and trial.
    """
    if not paths:
        raise LmftError("aggregate: no metrics.json files to gather (no stage registered any run)")
    records = [_read_run(Path(p)) for p in paths]
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


def _read_run(path: Path) -> dict[str, Any]:
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
    row = _flatten(m)
    row["path"] = str(path)
    return row


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
    present = [v for v in values if not _is_missing(v)]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present) and present:
        return pd.Series(values, dtype="Int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([math.nan if _is_missing(v) else float(v) for v in values], dtype="float64")
    return pd.Series([None if _is_missing(v) else v if isinstance(v, str) else json.dumps(v) for v in values],
                     dtype="object")


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _sort_key(v: Any) -> tuple:
    """Total order over missing < numbers < strings (a column may mix them, e.g. ``trial``)."""
    if _is_missing(v):
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
            if _is_missing(v):
                raise ArtifactError(f"{runs['path'].iloc[i]}: no dev_metric, which picks the best of the grid's trials")
            dev.append(float(v))
        selected[rows[int(np.argmax(dev))]] = True  # argmax: the first of equal values
    runs["selected"] = selected
    first = [c for c in _FIRST if c in runs.columns]
    return runs[first + [c for c in runs.columns if c not in first]]


# ----------------------------------------------------------------------------- method names

def method_label(row: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """Display name of a run's method: the config name (``kernel {formula}/{prompt}/{solver}`` for
    kernels), or its entry in ``labels``."""
    if row["stage"] == "kernel":
        name = f"kernel {row['formula']}/{row['prompt']}/{row['solver']}"
    else:
        name = str(row["method"])
    return (labels or {}).get(name, name)


def _method_order(row: Mapping[str, Any]) -> tuple:
    if row["stage"] == "kernel":
        return (_rank("kernel", TYPE_ORDER), _rank(row["formula"], FORMULA_ORDER),
                _rank(row["prompt"], PROMPT_ORDER), _rank(row["solver"], SOLVER_ORDER))
    kind = row.get("type")
    return (_rank(kind if isinstance(kind, str) else "", TYPE_ORDER), (0, str(row["method"])))


def _rank(value: str, order: Sequence[str]) -> tuple:
    return (order.index(value), "") if value in order else (len(order), value)


def _task_rank(task: str, task_order: Sequence[str]) -> tuple:
    return _rank(task, list(task_order))


# ----------------------------------------------------------------------------- summaries

def _selected(runs: pd.DataFrame, stages: Sequence[str]) -> pd.DataFrame:
    part = runs[runs["stage"].isin(stages) & runs["selected"]]
    return part.reset_index(drop=True)


def summarize(runs: pd.DataFrame, labels: Mapping[str, str] | None = None,
              task_order: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and population std over seeds of the test metric of the finetune and kernel runs.

    Returns columns ``model task k method type metric n mean std se`` (metric in [0, 1], not x100),
    one row per (model, task, k, method), sorted by model, k, method family and name, task; ``se``
    is :func:`single_seed_se` (NaN but for one seed).
    """
    part = _selected(runs, ("finetune", "kernel"))
    cols = ["model", "task", "k", "method", "type", "metric", "n", "mean", "std", "se"]
    if part.empty:
        return pd.DataFrame(columns=cols)
    groups: dict[tuple, dict[str, Any]] = {}
    named: dict[str, str] = {}  # label -> the method it names
    for r in part.to_dict("records"):
        label = method_label(r, labels)
        name = method_label(r)
        if named.setdefault(label, name) != name:
            raise LmftError(f"aggregate.labels: {named[label]!r} and {name!r} both display as {label!r}")
        key = (r["model"], r["task"], int(r["k"]), label)
        g = groups.setdefault(key, {"values": [], "n_test": [], "order": _method_order(r), "metric": r["metric"],
                                    "type": "kernel" if r["stage"] == "kernel" else _text(r.get("type"))})
        g["values"].append(float(r["test_metric"]))
        g["n_test"].append(r.get("n_test"))
    rows = []
    for (model, task, k, label), g in groups.items():
        v = np.asarray(g["values"])
        rows.append({"model": model, "task": task, "k": k, "method": label, "type": g["type"], "metric": g["metric"],
                     "n": len(v), "mean": float(v.mean()), "std": float(v.std()),
                     "se": single_seed_se(g["values"], g["n_test"][0], g["metric"]), "_order": g["order"]})
    rows.sort(key=lambda r: (r["model"], r["k"], r["_order"], r["method"], _task_rank(r["task"], task_order)))
    return pd.DataFrame(rows)[cols]


def _text(v: Any) -> str:
    return "" if _is_missing(v) else str(v)


def single_seed_se(values: Sequence[float], n_test: Any, metric: str) -> float:
    """Binomial standard error sqrt(p (1 - p) / n_test) of one seed's accuracy p: the test sampling
    noise of a cell that has no spread over seeds. NaN for several seeds, another metric than
    accuracy, or an unknown ``n_test``."""
    if len(values) != 1 or metric != "acc" or _is_missing(n_test) or n_test <= 0:
        return math.nan
    p = float(values[0])
    return math.sqrt(p * (1 - p) / float(n_test))


def spread_text(mean: float, std: float, n: int, se: float, scale: float = 100.0, digits: int = 1) -> str:
    """A cell over ``n`` seeds x ``scale``: ``mean (std)``; for one seed ``mean ±se`` (``se`` from
    :func:`single_seed_se`), or the bare mean where no standard error is known."""
    m = _fixed(scale * mean, digits)
    if n > 1:
        return f"{m} ({_fixed(scale * std, digits)})"
    return m if math.isnan(se) else f"{m} ±{_fixed(scale * se, digits)}"


def majority_baselines(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, k): the test set's majority-class share (x100) and size as the scored runs
    (finetune and kernel) report them in ``test_majority`` and ``n_test``.

    Returns text columns ``model task k majority n_test``: the distinct values joined by ``/``
    (runs with other test caps differ), ``-`` where no run reports one (runs made before
    ``test_majority`` existed).
    """
    part = _selected(runs, ("finetune", "kernel"))
    cols = ["model", "task", "k", "majority", "n_test"]
    if part.empty:
        return pd.DataFrame(columns=cols)
    fields = {"majority": ("test_majority", lambda x: _fixed(100 * x, 1)), "n_test": ("n_test", lambda x: str(int(x)))}
    rows = []
    for (model, task, k), g in part.groupby(["model", "task", "k"], sort=True):
        row = {"model": model, "task": task, "k": int(k)}
        for name, (col, fmt) in fields.items():
            found = sorted({float(x) for x in g.get(col, pd.Series(dtype=float)) if not _is_missing(x)})
            row[name] = "/".join(dict.fromkeys(fmt(x) for x in found)) or MISSING
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def kernel_pairs(runs: pd.DataFrame, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Per seed, each kernel run beside each fine-tuning run (type ft or mezo) of the same model,
    task, k and seed with the matching head: a ``prompt`` kernel with a ``prompt``/``causal``
    head, a ``noprompt`` kernel with a ``cls`` head.

    Returns columns ``model task k seed kernel ft metric kernel_metric ft_metric``.
    """
    cols = ["model", "task", "k", "seed", "kernel", "ft", "metric", "kernel_metric", "ft_metric"]
    kern = _selected(runs, ("kernel",))
    ft = _selected(runs, ("finetune",))
    if kern.empty or ft.empty or "type" not in ft.columns or "head" not in ft.columns:
        return pd.DataFrame(columns=cols)
    ft = ft[ft["type"].isin(FT_TYPES) & ft["head"].notna()]
    by_run: dict[tuple, list[dict[str, Any]]] = {}
    for r in ft.to_dict("records"):
        prompt = "noprompt" if r["head"] == "cls" else "prompt"
        by_run.setdefault((r["model"], r["task"], int(r["k"]), int(r["seed"]), prompt), []).append(r)
    rows = []
    for kr in kern.to_dict("records"):
        for fr in by_run.get((kr["model"], kr["task"], int(kr["k"]), int(kr["seed"]), kr["prompt"]), []):
            rows.append({"model": kr["model"], "task": kr["task"], "k": int(kr["k"]), "seed": int(kr["seed"]),
                         "kernel": method_label(kr, labels), "ft": method_label(fr, labels), "metric": kr["metric"],
                         "kernel_metric": float(kr["test_metric"]), "ft_metric": float(fr["test_metric"]),
                         "_order": (_method_order(kr), _method_order(fr))})
    rows.sort(key=lambda r: (r["model"], r["task"], r["k"], r["_order"], r["kernel"], r["ft"], r["seed"]))
    return pd.DataFrame(rows, columns=cols + ["_order"])[cols]


def load_curves(runs: pd.DataFrame, curve_paths: Sequence[PathLike]) -> pd.DataFrame:
    """The interpolation curves (``curve.parquet`` beside each interpolate metrics.json), tagged
    with model, task and pair: columns ``model task pair alpha split loss metric``."""
    interp = _selected(runs, ("interpolate",))
    by_dir = {str(Path(p).parent): r for p, r in zip(interp["path"], interp.to_dict("records"))}
    parts = []
    for p in sorted(str(p) for p in curve_paths):
        run = by_dir.get(str(Path(p).parent))
        if run is None:
            raise LmftError(f"aggregate: {p} has no interpolate metrics.json beside it among the inputs")
        c = read_parquet(p, ["alpha", "split", "loss", "metric"])
        parts.append(c.assign(model=run["model"], task=run["task"], pair=run["pair"]))
    cols = ["model", "task", "pair", "alpha", "split", "loss", "metric"]
    if not parts:
        return pd.DataFrame(columns=cols)
    curves = pd.concat(parts, ignore_index=True)[cols]
    return curves.sort_values(["model", "task", "pair", "split", "alpha"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- tables

@dataclass
class Table:
    """A paper table: every cell is text; the first ``labels`` columns name the row."""

    title: str
    frame: pd.DataFrame
    labels: int


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"mean (std)"`` of ``values`` x ``scale`` with the population std; ``-`` if none are finite."""
    v = np.asarray([x for x in values if not _is_missing(x)], dtype=float) * scale
    if v.size == 0:
        return MISSING
    return f"{_fixed(v.mean(), digits)} ({_fixed(v.std(), digits)})"


def _fixed(x: float, digits: int) -> str:
    s = f"{x:.{digits}f}"
    return s[1:] if re.fullmatch(r"-0\.?0*", s) else s  # no "-0.0"


def _task_header(task: str, metric: str) -> str:
    return task if metric == "acc" else f"{task} ({metric})"


def main_table(summary: pd.DataFrame, task_order: Sequence[str] = (),
               baselines: pd.DataFrame | None = None) -> Table:
    """Rows (model, k, method), columns tasks; cells ``mean (std)`` x100, or ``mean ±se`` for one
    seed (see :func:`summarize`). With ``baselines`` (:func:`majority_baselines`) each (model, k) block
    opens with the rows :data:`BASELINE_ROWS` where some run reports them."""
    title = TOPIC_FILES["main"][2]
    if summary.empty:
        return Table(title, pd.DataFrame(columns=["model", "k", "method"]), 3)
    tasks = sorted(summary["task"].unique(), key=lambda t: _task_rank(t, task_order))
    metric = {t: summary.loc[summary["task"] == t, "metric"].iloc[0] for t in tasks}
    base: dict[tuple, dict[str, dict[str, str]]] = {}  # (model, k) -> baseline row -> task header -> cell
    for b in ([] if baselines is None else baselines.to_dict("records")):
        if b["task"] in metric:
            block = base.setdefault((b["model"], int(b["k"])), {name: {} for name in BASELINE_ROWS})
            for name, col in zip(BASELINE_ROWS, ("majority", "n_test")):
                if b[col] != MISSING:
                    block[name][_task_header(b["task"], metric[b["task"]])] = b[col]
    rows: dict[tuple, dict[str, str]] = {}
    for r in summary.to_dict("records"):  # summarize's order: model, k, method family/name
        for name, cells in base.pop((r["model"], r["k"]), {}).items():  # once, before the block's first method
            if cells:
                rows[(r["model"], r["k"], name)] = {"model": r["model"], "k": str(r["k"]), "method": name, **cells}
        row = rows.setdefault((r["model"], r["k"], r["method"]),
                              {"model": r["model"], "k": str(r["k"]), "method": r["method"]})
        row[_task_header(r["task"], metric[r["task"]])] = spread_text(r["mean"], r["std"], r["n"], r["se"])
    headers = [_task_header(t, metric[t]) for t in tasks]
    frame = pd.DataFrame(list(rows.values()), columns=["model", "k", "method"] + headers).fillna(MISSING)
    return Table(title, frame.astype(str), 3)


def kernel_table(pairs: pd.DataFrame, task_order: Sequence[str] = ()) -> Table:
    """Rows (model, task, k, kernel, fine-tuning method) over the seeds both ran; cells x100."""
    title = TOPIC_FILES["kernel"][2]
    cols = ["model", "task", "k", "kernel", "fine-tuning", "kernel metric", "fine-tuning metric", "gap", "seeds"]
    rows = []
    for (model, task, k, kernel, ft), g in pairs.groupby(["model", "task", "k", "kernel", "ft"], sort=False):
        gap = 100 * (g["kernel_metric"].mean() - g["ft_metric"].mean())
        rows.append({"model": model, "task": task, "k": str(k), "kernel": kernel, "fine-tuning": ft,
                     "kernel metric": mean_std(g["kernel_metric"]), "fine-tuning metric": mean_std(g["ft_metric"]),
                     "gap": ("+" if gap > 0 else "") + _fixed(gap, 1), "seeds": str(len(g)),
                     "_t": _task_rank(task, task_order)})
    rows.sort(key=lambda r: (r["model"], r["_t"]))  # stable: keeps kernel_pairs' method order
    return Table(title, pd.DataFrame(rows, columns=cols), 5)


def graft_table(runs: pd.DataFrame, labels: Mapping[str, str] | None = None, task_order: Sequence[str] = ()) -> Table:
    """Rows (model, task, k, method, sparsity): graft test metric, ECE, kept fraction, and the
    fine-tuned / pre-trained models' test metric and the out-of-distribution metrics when the
    metrics carry them; ``mean (std)`` over seeds x100."""
    title = TOPIC_FILES["graft"][2]
    part = _selected(runs, ("graft",))
    optional = [("test_ece", "test ECE"), ("kept_fraction", "kept fraction"),
                ("ft_test_metric", "FT test"), ("ft_test_ece", "FT ECE"), ("pre_test_metric", "pre-trained test")]
    optional = [(c, h) for c, h in optional if c in part.columns and part[c].notna().any()]
    ood = sorted(c for c in part.columns if c.startswith("ood.") and pd.api.types.is_numeric_dtype(part[c])
                 and part[c].notna().any())
    columns = [("test_metric", "test")] + optional + [(c, "OOD " + c.removeprefix("ood.").replace(".", " "))
                                                      for c in ood]
    head = ["model", "task", "k", "method", "sparsity", "seeds"]
    rows = []
    keys = ["model", "task", "k", "method", "sparsity"]
    for (model, task, k, method, sparsity), g in part.groupby(keys, sort=False):
        first = g.iloc[0].to_dict()
        row = {"model": model, "task": task, "k": str(k), "method": method_label(first, labels),
               "sparsity": f"{sparsity:g}", "seeds": str(len(g))}
        row.update({h: mean_std(g[c]) for c, h in columns})
        row["_order"] = (model, _task_rank(task, task_order), int(k), _method_order(first), float(sparsity))
        rows.append(row)
    rows.sort(key=lambda r: r["_order"])
    frame = pd.DataFrame(rows, columns=head + [h for _, h in columns])
    return Table(title, frame, 5)


def interpolate_table(runs: pd.DataFrame, task_order: Sequence[str] = ()) -> Table:
    """Rows (model, task, pair): per split the loss barrier and the metric barrier (x100), the
    endpoints' L2 distance and cosine, as the metrics carry them."""
    title = TOPIC_FILES["interpolate"][2]
    part = _selected(runs, ("interpolate",))
    splits = sorted({m.group(1) for c in part.columns if (m := re.fullmatch(r"(\w+?)_(?:loss|metric)_barrier", c))})
    columns: list[tuple[str, str, float, int]] = []  # (column, header, scale, digits)
    for s in splits:
        if f"{s}_loss_barrier" in part.columns:
            columns.append((f"{s}_loss_barrier", f"{s} loss barrier", 1.0, 4))
        if f"{s}_metric_barrier" in part.columns:
            columns.append((f"{s}_metric_barrier", f"{s} metric barrier", 100.0, 1))
    columns += [(c, h, 1.0, 4) for c, h in (("l2", "L2 distance"), ("cosine", "cosine")) if c in part.columns]
    rows = []
    for r in part.to_dict("records"):
        row = {"model": r["model"], "task": r["task"], "pair": r["pair"]}
        row.update({h: MISSING if _is_missing(r.get(c)) else _fixed(scale * float(r[c]), d)
                    for c, h, scale, d in columns})
        row["_order"] = (r["model"], _task_rank(r["task"], task_order), r["pair"])
        rows.append(row)
    rows.sort(key=lambda r: r["_order"])
    return Table(title, pd.DataFrame(rows, columns=["model", "task", "pair"] + [h for _, h, _, _ in columns]), 3)


# ----------------------------------------------------------------------------- rendering

def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown pipe table (``|`` in cells escaped)."""
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    cols = list(table.frame.columns)
    align = [":--" if i < table.labels else "--:" for i in range(len(cols))]
    body = [line(r) for r in table.frame.itertuples(index=False)]
    return "\n".join([line(cols), "| " + " | ".join(align) + " |", *body]) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A ``booktabs`` tabular: label columns left-aligned, value columns right-aligned."""
    cols = list(table.frame.columns)
    spec = "l" * table.labels + "r" * (len(cols) - table.labels)
    lines = [f"% {latex_escape(table.title)}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in table.frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


_CSS = ("body{font-family:sans-serif;margin:1em;color:#111;background:#fff}"
        "table{border-collapse:collapse;font-size:14px}"
        "th,td{border-bottom:1px solid #ccc;padding:4px 10px;text-align:right;white-space:nowrap}"
        "th.l,td.l{text-align:left}thead th{border-bottom:2px solid #333}")


def to_html(table: Table) -> str:
    """A standalone HTML page holding the table (what the Snakemake report shows)."""
    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="l"' if i < table.labels else ""
        return f"<{tag}{cls}>{html.escape(str(text))}</{tag}>"

    head = "".join(cell("th", i, c) for i, c in enumerate(table.frame.columns))
    body = "\n".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>"
                     for r in table.frame.itertuples(index=False))
    title = html.escape(table.title)
    return (f'<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n<h3>{title}</h3>\n<table>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>\n</body>\n</html>\n")


def write_table(table: Table, stem: PathLike, formats: Sequence[str] = TABLE_FORMATS) -> list[Path]:
    """Write ``table`` to ``stem.{csv,md,tex,html}`` (atomically); returns the paths."""
    render = {"md": to_markdown, "tex": to_latex, "html": to_html,
              "csv": lambda t: t.frame.to_csv(index=False, lineterminator="\n")}
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            tmp.write_text(render[fmt](table), encoding="utf-8")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- the stage

def aggregate(metrics: Sequence[PathLike], curves: Sequence[PathLike], runs_path: PathLike,
              tables_dir: PathLike, plots_dir: PathLike, topics: Sequence[str],
              labels: Mapping[str, str] | None = None, task_order: Sequence[str] = (),
              pair_kinds: Mapping[str, str] | None = None) -> list[Path]:
    """Gather ``metrics`` into ``runs_path`` (parquet) and write each topic's table
    (``tables_dir/{stem}.{csv,md,tex,html}``) and plot (``plots_dir/{stem}.{png,pdf}``), as
    :func:`output_files` names them. ``pair_kinds`` (:func:`lmft.findings.pair_kinds`) tells the
    findings which interpolate pairs are pre-trained -> fine-tuned and seed -> seed. Returns the
    paths written."""
    from lmft import plots
    from lmft.findings import findings_table  # it builds on this module

    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        raise LmftError(f"aggregate: unknown topic(s) {unknown}; topics are {list(TOPICS)}")
    runs = load_runs(metrics)
    write_parquet(runs, runs_path)
    written = [Path(runs_path)]
    for topic in topics:
        table_stem, plot_stem, _ = TOPIC_FILES[topic]
        if topic == "main":
            summary = summarize(runs, labels, task_order)
            table = main_table(summary, task_order, majority_baselines(runs))
            figure = plots.accuracy_vs_k(summary, task_order)
        elif topic == "kernel":
            pairs = kernel_pairs(runs, labels)
            table = kernel_table(pairs, task_order)
            figure = plots.kernel_vs_ft(pairs)
        elif topic == "graft":
            table = graft_table(runs, labels, task_order)
            graft = _selected(runs, ("graft",))
            figure = plots.graft_curves(graft.assign(label=[method_label(r, labels) for r in graft.to_dict("records")]),
                                        task_order)
        elif topic == "interpolate":
            table = interpolate_table(runs, task_order)
            figure = plots.interpolation_curves(load_curves(runs, curves), task_order)
        else:
            table, figure = findings_table(runs, pair_kinds, labels, task_order), None
        written += write_table(table, Path(tables_dir) / table_stem, table_formats(topic))
        if plot_stem is not None:
            written += plots.save(figure, Path(plots_dir) / plot_stem)
    return written
