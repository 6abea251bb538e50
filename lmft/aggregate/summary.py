"""Summaries of the runs table (:mod:`lmft.aggregate.gather`) that the paper tables, the plots and the findings use.

Method names and their order, the mean and spread over seeds of each (model, task, k, method),
the majority-class baselines, kernel runs beside their fine-tuning runs, and the interpolation
curves. Cells report ``mean (std)`` over seeds of the metric x 100 with the population standard
deviation (``np.std``, ddof 0), as LM-BFF does; a cell of one seed shows ``mean ±se`` instead, the
binomial standard error sqrt(p (1 - p) / n_test) of its accuracy (a std over one seed would be 0).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmft.aggregate.gather import is_missing, selected
from lmft.aggregate.topics import ZO_TYPES
from lmft.finetune.methods import TYPES
from lmft.io import LmftError, PathLike, read_parquet
from lmft.kernels.formulas import FORMULAS, PROMPTS
from lmft.kernels.solvers import SOLVERS

# Row order in the tables: by family, then by name; the families are the method types in the order of
# their registry (:data:`lmft.finetune.methods.TYPES`: the built-in ones as the papers list them, then
# plugins'), then the kernels, in the order of the formula, prompt and solver registries.
FORMULA_ORDER = tuple(FORMULAS)
PROMPT_ORDER = tuple(PROMPTS)
SOLVER_ORDER = tuple(SOLVERS)
MISSING = "-"


def type_order() -> tuple[str, ...]:
    """The method types in table order, then ``kernel`` (read when called: plugins register at run time)."""
    return (*TYPES, "kernel")


def kernel_partners() -> tuple[str, ...]:
    """The method types whose runs a kernel is compared with: those that train (``MethodType.trains``)."""
    return tuple(name for name, kind in TYPES.items() if kind.trains)


def method_label(row: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """Display name of a run's method: the config name (``kernel {formula}/{prompt}/{solver}`` for
    kernels), or its entry in ``labels``."""
    if row["stage"] == "kernel":
        name = f"kernel {row['formula']}/{row['prompt']}/{row['solver']}"
    else:
        name = str(row["method"])
    return (labels or {}).get(name, name)


def method_order(row: Mapping[str, Any]) -> tuple:
    order = type_order()
    if row["stage"] == "kernel":
        return (rank("kernel", order), rank(row["formula"], FORMULA_ORDER),
                rank(row["prompt"], PROMPT_ORDER), rank(row["solver"], SOLVER_ORDER))
    kind = row.get("type")
    return (rank(kind if isinstance(kind, str) else "", order), (0, str(row["method"])))


def rank(value: str, order: Sequence[str]) -> tuple:
    return (order.index(value), "") if value in order else (len(order), value)


def task_rank(task: str, task_order: Sequence[str]) -> tuple:
    return rank(task, list(task_order))


def summarize(runs: pd.DataFrame, labels: Mapping[str, str] | None = None,
              task_order: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and population std over seeds of the test metric of the finetune and kernel runs.

    Returns columns ``model task k method type metric n mean std se`` (metric in [0, 1], not x100),
    one row per (model, task, k, method), sorted by model, k, method family and name, task; ``se``
    is :func:`single_seed_se` (NaN but for one seed).
    """
    part = selected(runs, ("finetune", "kernel"))
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
        g = groups.setdefault(key, {"values": [], "n_test": [], "order": method_order(r), "metric": r["metric"],
                                    "type": "kernel" if r["stage"] == "kernel" else as_text(r.get("type"))})
        g["values"].append(float(r["test_metric"]))
        g["n_test"].append(r.get("n_test"))
    rows = []
    for (model, task, k, label), g in groups.items():
        v = np.asarray(g["values"])
        rows.append({"model": model, "task": task, "k": k, "method": label, "type": g["type"], "metric": g["metric"],
                     "n": len(v), "mean": float(v.mean()), "std": float(v.std()),
                     "se": single_seed_se(g["values"], g["n_test"][0], g["metric"]), "_order": g["order"]})
    rows.sort(key=lambda r: (r["model"], r["k"], r["_order"], r["method"], task_rank(r["task"], task_order)))
    return pd.DataFrame(rows)[cols]


def as_text(v: Any) -> str:
    return "" if is_missing(v) else str(v)


def single_seed_se(values: Sequence[float], n_test: Any, metric: str) -> float:
    """Binomial standard error sqrt(p (1 - p) / n_test) of one seed's accuracy p: the test sampling
    noise of a cell that has no spread over seeds. NaN for several seeds, another metric than
    accuracy, or an unknown ``n_test``."""
    if len(values) != 1 or metric != "acc" or is_missing(n_test) or n_test <= 0:
        return math.nan
    p = float(values[0])
    return math.sqrt(p * (1 - p) / float(n_test))


def spread_text(mean: float, std: float, n: int, se: float, scale: float = 100.0, digits: int = 1) -> str:
    """A cell over ``n`` seeds x ``scale``: ``mean (std)``; for one seed ``mean ±se`` (``se`` from
    :func:`single_seed_se`), or the bare mean where no standard error is known."""
    m = fixed(scale * mean, digits)
    if n > 1:
        return f"{m} ({fixed(scale * std, digits)})"
    return m if math.isnan(se) else f"{m} ±{fixed(scale * se, digits)}"


def fixed(x: float, digits: int) -> str:
    s = f"{x:.{digits}f}"
    return s[1:] if re.fullmatch(r"-0\.?0*", s) else s  # no "-0.0"


def majority_baselines(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, k): the test set's majority-class share (x100) and size as the scored runs
    (finetune and kernel) report them in ``test_majority`` and ``n_test``.

    Returns text columns ``model task k majority n_test``: the distinct values joined by ``/``
    (runs with other test caps differ), ``-`` where no run reports one (runs made before
    ``test_majority`` existed).
    """
    part = selected(runs, ("finetune", "kernel"))
    cols = ["model", "task", "k", "majority", "n_test"]
    if part.empty:
        return pd.DataFrame(columns=cols)
    fields = {"majority": ("test_majority", lambda x: fixed(100 * x, 1)), "n_test": ("n_test", lambda x: str(int(x)))}
    rows = []
    for (model, task, k), g in part.groupby(["model", "task", "k"], sort=True):
        row = {"model": model, "task": task, "k": int(k)}
        for name, (col, fmt) in fields.items():
            found = sorted({float(x) for x in g.get(col, pd.Series(dtype=float)) if not is_missing(x)})
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
    kern = selected(runs, ("kernel",))
    ft = selected(runs, ("finetune",))
    if kern.empty or ft.empty or "type" not in ft.columns or "head" not in ft.columns:
        return pd.DataFrame(columns=cols)
    ft = ft[ft["type"].isin(kernel_partners()) & ft["head"].notna()]
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
                         "_order": (method_order(kr), method_order(fr))})
    rows.sort(key=lambda r: (r["model"], r["task"], r["k"], r["_order"], r["kernel"], r["ft"], r["seed"]))
    return pd.DataFrame(rows, columns=cols + ["_order"])[cols]


def load_curves(runs: pd.DataFrame, curve_paths: Sequence[PathLike]) -> pd.DataFrame:
    """The interpolation curves (``curve.parquet`` beside each interpolate metrics.json), tagged
    with model, task and pair: columns ``model task pair alpha split loss metric``."""
    interp = selected(runs, ("interpolate",))
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


ZO_CURVE_COLUMNS = ["model", "task", "k", "mode", "head", "method", "type", "seed", "split", "step", "passes",
                    "train_s", "metric"]


def zo_curves(runs: pd.DataFrame, curve_paths: Sequence[PathLike],
              labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The dev and test rows of the zeroth-order runs' curves (``curve.parquet`` beside each selected
    run of a :data:`lmft.aggregate.topics.ZO_TYPES` type), columns :data:`ZO_CURVE_COLUMNS`; ``method`` is the
    label. Curves written before runs counted their passes (no ``passes`` column) are left out."""
    part = selected(runs, ("finetune",))
    part = part[part["type"].isin(ZO_TYPES)] if "type" in part.columns else part.iloc[:0]
    by_dir = {str(Path(p).parent): r for p, r in zip(part["path"], part.to_dict("records"))}
    parts = []
    for p in sorted(str(p) for p in curve_paths):
        run = by_dir.get(str(Path(p).parent))
        if run is None:  # an unselected trial's curve, or a run the gathered metrics do not hold
            continue
        c = read_parquet(p)
        if "passes" not in c.columns:
            continue
        c = c[c["split"].isin(["dev", "test"])]
        parts.append(c.assign(model=run["model"], task=run["task"], k=int(run["k"]), mode=as_text(run.get("mode")),
                              head=as_text(run.get("head")), method=method_label(run, labels), type=run["type"],
                              seed=int(run["seed"])))
    if not parts:
        return pd.DataFrame(columns=ZO_CURVE_COLUMNS)
    out = pd.concat(parts, ignore_index=True)[ZO_CURVE_COLUMNS]
    return out.sort_values(["model", "task", "k", "mode", "method", "seed", "split", "step"],
                           kind="stable").reset_index(drop=True)


def ft_references(runs: pd.DataFrame, curves: pd.DataFrame, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Fine-tuning (type ``ft``) of the same parameters as the zeroth-order curves: per (model, task,
    k, mode, head) of ``curves`` and ft method, the mean test metric over the selected seeds and
    the run's forward+backward passes (``passes``; older runs: ``steps``, one pass a step).
    Columns ``model task k mode head method test passes n``."""
    cols = ["model", "task", "k", "mode", "head", "method", "test", "passes", "n"]
    part = selected(runs, ("finetune",))
    if curves.empty or part.empty or "type" not in part.columns:
        return pd.DataFrame(columns=cols)
    cells = set(zip(curves["model"], curves["task"], curves["k"], curves["mode"], curves["head"]))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in part[part["type"] == "ft"].to_dict("records"):
        key = (r["model"], r["task"], int(r["k"]), as_text(r.get("mode")), as_text(r.get("head")))
        if key in cells:
            groups.setdefault((*key, method_label(r, labels)), []).append(r)
    rows = []
    for key, rs in sorted(groups.items()):
        passes = [float(r["passes"] if not is_missing(r.get("passes")) else r["steps"]) for r in rs]
        rows.append([*key, float(np.mean([float(r["test_metric"]) for r in rs])), float(np.mean(passes)), len(rs)])
    return pd.DataFrame(rows, columns=cols)
