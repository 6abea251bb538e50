"""Figures of the aggregate stage (matplotlib, Agg), saved as PNG and PDF without timestamps.

Each function takes a table made by :mod:`lmft.aggregate.summary` and returns a ``Figure``;
:func:`save` writes it. Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, no
display needed), colours follow the tables' method order, so reruns give identical files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lmft.aggregate.summary import method_label, method_order, task_rank
from lmft.io import PathLike, atomic_path

MARKERS = "os^Dv<>pP*Xh"
LINESTYLES = ("-", "--", ":", "-.")
# No software version or date in the files: the same figure gives the same bytes.
_PNG_META = {"Software": None}
_PDF_META = {"Creator": None, "Producer": None, "CreationDate": None}


def save(fig: Figure, stem: PathLike) -> list[Path]:
    """Write ``fig`` to ``stem.png`` (100 dpi) and ``stem.pdf`` atomically; returns the paths."""
    paths = []
    for fmt, meta in (("png", _PNG_META), ("pdf", _PDF_META)):
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=100, metadata=meta, bbox_inches="tight")
        paths.append(path)
    return paths


def _colour(i: int) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["tab10" if i < 10 else "tab20"](i % 20)


def _grid(n: int, ncols: int = 3, w: float = 4.0, h: float = 3.2) -> tuple[Figure, list]:
    """A figure with ``n`` panels on a grid of at most ``ncols`` columns (unused panels hidden)."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _empty(message: str) -> Figure:
    fig = Figure(figsize=(5, 2))
    fig.text(0.5, 0.5, message, ha="center", va="center")
    return fig


def _panels(df: pd.DataFrame, task_order: Sequence[str]) -> list[tuple[str, str]]:
    order = list(task_order)
    return sorted({(m, t) for m, t in zip(df["model"], df["task"])},
                  key=lambda mt: (mt[0], order.index(mt[1]) if mt[1] in order else len(order), mt[1]))


def accuracy_vs_k(summary: pd.DataFrame, task_order: Sequence[str] = ()) -> Figure:
    """Test metric x100 per method, one panel per (model, task), from :func:`lmft.aggregate.summary.summarize`.

    With several k: one line per method over k (log scale), error bars = std over seeds; with a
    single k: one bar per method.
    """
    if summary.empty:
        return _empty("no fine-tuning or kernel runs")
    methods = list(dict.fromkeys(summary["method"]))  # summarize's order
    colour = {m: _colour(i) for i, m in enumerate(methods)}
    ks = sorted(summary["k"].unique())
    panels = _panels(summary, task_order)
    fig, axes = _grid(len(panels))
    for ax, (model, task) in zip(axes, panels):
        part = summary[(summary["model"] == model) & (summary["task"] == task)]
        metric = part["metric"].iloc[0]
        if len(ks) > 1:
            for m in methods:
                s = part[part["method"] == m].sort_values("k")
                if not s.empty:
                    ax.errorbar(s["k"], 100 * s["mean"], yerr=100 * s["std"], color=colour[m], marker="o",
                                capsize=3, label=m)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xlabel("k (examples per class)")
        else:
            s = part.set_index("method").reindex([m for m in methods if m in set(part["method"])])
            x = np.arange(len(s))
            ax.bar(x, 100 * s["mean"], yerr=100 * s["std"], color=[colour[m] for m in s.index], capsize=3)
            ax.set_xticks(x, list(s.index), rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{model} / {task} (k={ks[0]})" if len(ks) == 1 else f"{model} / {task}", fontsize=10)
        ax.set_ylabel(f"test {metric} x100")
        ax.grid(axis="y", alpha=0.3)
    if len(ks) > 1:
        handles = [Line2D([], [], color=colour[m], marker="o", label=m) for m in methods]
        fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    return fig


def generation_scores(runs: pd.DataFrame, labels: Mapping[str, str] | None = None,
                      task_order: Sequence[str] = ()) -> Figure:
    """Test scores x100 of the generation runs (:func:`lmft.aggregate.gather.selected` of stage ``generation``),
    one panel per (model, task, k): a group of bars per score (ROUGE-1/2/L, or EM and F1), one bar
    per method; error bars: the std over seeds, or the standard error over the test examples of
    one seed's primary score."""
    if runs.empty:
        return _empty("no generation runs")
    scores = [c for c in runs.columns if c.startswith("test_scores.") and runs[c].notna().any()]
    runs = runs.assign(label=[method_label(r, labels) for r in runs.to_dict("records")])
    panels = sorted({(m, t, int(k)) for m, t, k in zip(runs["model"], runs["task"], runs["k"])},
                    key=lambda p: (p[0], task_rank(p[1], task_order), p[2]))
    fig, axes = _grid(len(panels), ncols=2, w=5.0)
    for ax, (model, task, k) in zip(axes, panels):
        part = runs[(runs["model"] == model) & (runs["task"] == task) & (runs["k"] == k)]
        methods = sorted(dict.fromkeys(part["label"]), key=lambda m: method_order(part[part["label"] == m].iloc[0]))
        names = [c for c in scores if part[c].notna().any()]
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            g = part[part["label"] == m]
            means = [100 * g[c].mean() for c in names]
            errs = [100 * (g[c].std(ddof=0) if len(g) > 1 else
                           (g["test_se"].iloc[0] if c == f"test_scores.{g['metric'].iloc[0]}" else 0.0))
                    for c in names]
            ax.bar(np.arange(len(names)) + (i - (len(methods) - 1) / 2) * width, means, width, yerr=errs,
                   color=_colour(i), label=m, capsize=2)
        ax.set_xticks(np.arange(len(names)), [c.removeprefix("test_scores.") for c in names])
        ax.set_title(f"{model} / {task} / k={k}", fontsize=10)
        ax.set_ylabel("test x100")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def kernel_vs_ft(pairs: pd.DataFrame) -> Figure:
    """Kernel vs fine-tuning test metric x100, one point per (task, seed), one panel per kernel,
    from :func:`lmft.aggregate.summary.kernel_pairs`; colour = fine-tuning method, marker = task."""
    if pairs.empty:
        return _empty("no kernel run has a fine-tuning run with a matching head")
    kernels = list(dict.fromkeys(pairs["kernel"]))
    fts = list(dict.fromkeys(pairs["ft"]))
    tasks = sorted(pairs["task"].unique())
    colour = {m: _colour(i) for i, m in enumerate(fts)}
    marker = {t: MARKERS[i % len(MARKERS)] for i, t in enumerate(tasks)}
    values = 100 * np.concatenate([pairs["kernel_metric"].to_numpy(float), pairs["ft_metric"].to_numpy(float)])
    lo, hi = float(values.min()), float(values.max())
    pad = max(1.0, 0.05 * (hi - lo))
    lim = (lo - pad, hi + pad)
    fig, axes = _grid(len(kernels))
    for ax, kern in zip(axes, kernels):
        part = pairs[pairs["kernel"] == kern]
        for (ft, task), g in part.groupby(["ft", "task"], sort=True):
            ax.scatter(100 * g["ft_metric"], 100 * g["kernel_metric"], color=colour[ft], marker=marker[task], s=25)
        ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_aspect("equal")
        ax.set_title(kern, fontsize=10)
        ax.set_xlabel("fine-tuning test x100")
        ax.set_ylabel("kernel test x100")
    handles = [Line2D([], [], ls="", marker="o", color=colour[m], label=m) for m in fts]
    handles += [Line2D([], [], ls="", marker=marker[t], color="black", label=t) for t in tasks]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    return fig


def graft_curves(graft: pd.DataFrame, task_order: Sequence[str] = ()) -> Figure:
    """Graft test metric (top row) and test ECE (bottom row, where present) x100 vs sparsity,
    mean +- std over seeds, one line per ``label`` (method), one column per (model, task); the
    fine-tuned model's value (``ft_test_metric``/``ft_test_ece``) as a dashed line."""
    if graft.empty:
        return _empty("no graft runs")
    rows = [("test_metric", "ft_test_metric", "test metric x100")]
    if "test_ece" in graft.columns and graft["test_ece"].notna().any():
        rows.append(("test_ece", "ft_test_ece", "test ECE x100"))
    panels = _panels(graft, task_order)
    methods = list(dict.fromkeys(graft["label"]))
    colour = {m: _colour(i) for i, m in enumerate(methods)}
    fig = Figure(figsize=(4.0 * len(panels), 3.0 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(panels), squeeze=False)
    logx = bool((graft["sparsity"] > 0).all())
    for j, (model, task) in enumerate(panels):
        part = graft[(graft["model"] == model) & (graft["task"] == task)]
        for i, (col, ref, ylabel) in enumerate(rows):
            ax = axes[i][j]
            for m in methods:
                g = part[part["label"] == m]
                if g.empty:
                    continue
                s = g.groupby("sparsity")[col].agg(mean="mean", std=lambda v: float(np.std(v))).sort_index()
                ax.errorbar(s.index, 100 * s["mean"], yerr=100 * s["std"], color=colour[m], marker="o",
                            capsize=3, label=m)
                if ref in g.columns and g[ref].notna().any():
                    ax.axhline(100 * g[ref].mean(), color=colour[m], ls="--", lw=0.8)
            if logx:
                ax.set_xscale("log")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"{model} / {task}", fontsize=10)
            if i == len(rows) - 1:
                ax.set_xlabel("sparsity (fraction of parameters grafted)")
    handles = [Line2D([], [], color=colour[m], marker="o", label=m) for m in methods]
    handles.append(Line2D([], [], color="grey", ls="--", label="fine-tuned"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    return fig


def interpolation_curves(curves: pd.DataFrame, task_order: Sequence[str] = ()) -> Figure:
    """Metric x100 (left) and loss (right) along alpha, one row per (model, task), one colour per
    pair, one line style per split, from :func:`lmft.aggregate.summary.load_curves`."""
    if curves.empty:
        return _empty("no interpolation curves")
    panels = _panels(curves, task_order)
    pairs = list(dict.fromkeys(curves["pair"]))
    splits = sorted(curves["split"].unique())
    colour = {p: _colour(i) for i, p in enumerate(pairs)}
    style = {s: LINESTYLES[i % len(LINESTYLES)] for i, s in enumerate(splits)}
    fig = Figure(figsize=(8.0, 3.0 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for (ax_m, ax_l), (model, task) in zip(axes, panels):
        part = curves[(curves["model"] == model) & (curves["task"] == task)]
        for (pair, split), g in part.groupby(["pair", "split"], sort=False):
            g = g.sort_values("alpha")
            ax_m.plot(g["alpha"], 100 * g["metric"], color=colour[pair], ls=style[split], marker=".")
            ax_l.plot(g["alpha"], g["loss"], color=colour[pair], ls=style[split], marker=".")
        ax_m.set_title(f"{model} / {task}: metric", fontsize=10)
        ax_l.set_title(f"{model} / {task}: loss", fontsize=10)
        ax_m.set_ylabel("metric x100")
        ax_l.set_ylabel("cross-entropy")
        for ax in (ax_m, ax_l):
            ax.set_xlabel("alpha")
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[p], label=p) for p in pairs]
    handles += [Line2D([], [], color="black", ls=style[s], label=s) for s in splits]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    return fig


def zo_forward_passes(curves: pd.DataFrame, references: pd.DataFrame, task_order: Sequence[str] = ()) -> Figure:
    """Accuracy x100 against forward passes, one panel per (model, task, k, mode), from
    :func:`lmft.aggregate.summary.zo_curves`: per zeroth-order method its test (solid) and dev (dashed)
    metric at each evaluation, the mean over seeds; fine-tuning of the same parameters
    (:func:`lmft.aggregate.summary.ft_references`) as a grey horizontal line at its test metric, with a
    marker at its forward+backward passes."""
    if curves.empty:
        return _empty("no zeroth-order runs with counted passes")
    panels = sorted({(m, t, int(k), md) for m, t, k, md in zip(curves["model"], curves["task"], curves["k"],
                                                                 curves["mode"])},
                    key=lambda p: (p[0], task_rank(p[1], task_order), p[2], p[3]))
    methods = list(dict.fromkeys(curves["method"]))
    colour = {m: _colour(i) for i, m in enumerate(methods)}
    fig, axes = _grid(len(panels), ncols=2, w=5.5, h=3.6)
    for ax, (model, task, k, mode) in zip(axes, panels):
        part = curves[(curves["model"] == model) & (curves["task"] == task) & (curves["k"] == k) &
                      (curves["mode"] == mode)]
        for (method, split), g in part.groupby(["method", "split"], sort=False):
            s = g.groupby("step")[["passes", "metric"]].mean().sort_index()
            ax.plot(s["passes"], 100 * s["metric"], color=colour[method], ls="-" if split == "test" else "--",
                    marker="." if split == "test" else None)
        refs = references[(references["model"] == model) & (references["task"] == task) &
                          (references["k"] == k) & (references["mode"] == mode)]
        for i, r in enumerate(refs.to_dict("records")):
            ls = LINESTYLES[i % len(LINESTYLES)]
            ax.axhline(100 * r["test"], color="grey", lw=1.0, ls=ls)
            ax.plot([r["passes"]], [100 * r["test"]], color="grey", marker="D", ls="")
            ax.annotate(f"FT {r['method']}: {100 * r['test']:.1f} at {r['passes']:g} fwd+bwd", (r["passes"], 100 * r["test"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7, color="dimgrey")
        ax.set_title(f"{model} / {task} / k={k} / {mode}", fontsize=10)
        ax.set_xlabel("forward passes (one per training batch; FT: forward+backward)")
        ax.set_ylabel("accuracy x100")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[m], label=m) for m in methods]
    handles += [Line2D([], [], color="black", ls="-", marker=".", label="test"),
                Line2D([], [], color="black", ls="--", label="dev"),
                Line2D([], [], color="grey", marker="D", label="FT, same parameters (test)")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    return fig
