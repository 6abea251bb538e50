"""The aggregate stage: the paper tables, plots and findings made from the runs table, topic by topic.

Inputs, one ``metrics.json`` per run of the stages (:mod:`lmft.aggregate.gather` lists the keys each stage's
files must have), the interpolation curves beside them, and the zeroth-order runs' curves (accuracy
against forward passes). Outputs, as :func:`lmft.aggregate.topics.output_files`
names them: ``runs.parquet`` (:func:`lmft.aggregate.gather.load_runs`), each topic's table (:mod:`lmft.aggregate.tables`;
the ``findings`` topic checks each paper's claim against the runs, :mod:`lmft.aggregate.findings`) and plot
(:mod:`lmft.aggregate.plots`).

Every output is a deterministic function of the inputs: rows and columns are sorted, floats
have a fixed format, so the same metrics give byte-identical tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lmft.aggregate import plots
from lmft.aggregate.findings import findings_table
from lmft.aggregate.gather import load_runs, selected
from lmft.aggregate.summary import (ft_references, kernel_pairs, load_curves, majority_baselines, method_label,
                                    summarize, zo_curves)
from lmft.aggregate.tables import (Table, generation_table, graft_table, interpolate_table, kernel_table, main_table,
                                   write_table, zo_table)
from lmft.aggregate.topics import TOPICS
from lmft.io import LmftError, PathLike, write_parquet


@dataclass(frozen=True)
class Inputs:
    """What every topic's table and plot are made from: the runs table, the interpolation curves, display
    names, the order of the tasks, the kinds of the interpolate pairs and the zeroth-order runs' curves."""

    runs: pd.DataFrame
    curves: Sequence[PathLike]
    labels: Mapping[str, str] | None
    task_order: Sequence[str]
    pair_kinds: Mapping[str, str] | None
    zo_curves: Sequence[PathLike] = ()


def _main(i: Inputs) -> tuple[Table, Figure]:
    summary = summarize(i.runs, i.labels, i.task_order)
    return main_table(summary, i.task_order, majority_baselines(i.runs)), plots.accuracy_vs_k(summary, i.task_order)


def _generation(i: Inputs) -> tuple[Table, Figure]:
    return (generation_table(i.runs, i.labels, i.task_order),
            plots.generation_scores(selected(i.runs, ("generation",)), i.labels, i.task_order))


def _kernel(i: Inputs) -> tuple[Table, Figure]:
    pairs = kernel_pairs(i.runs, i.labels)
    return kernel_table(pairs, i.task_order), plots.kernel_vs_ft(pairs)


def _graft(i: Inputs) -> tuple[Table, Figure]:
    graft = selected(i.runs, ("graft",))
    labelled = graft.assign(label=[method_label(r, i.labels) for r in graft.to_dict("records")])
    return graft_table(i.runs, i.labels, i.task_order), plots.graft_curves(labelled, i.task_order)


def _interpolate(i: Inputs) -> tuple[Table, Figure]:
    return (interpolate_table(i.runs, i.task_order),
            plots.interpolation_curves(load_curves(i.runs, i.curves), i.task_order))


def _zo(i: Inputs) -> tuple[Table, Figure]:
    curves = zo_curves(i.runs, i.zo_curves, i.labels)
    return (zo_table(i.runs, i.labels, i.task_order),
            plots.zo_forward_passes(curves, ft_references(i.runs, curves, i.labels), i.task_order))


def _findings(i: Inputs) -> tuple[Table, None]:
    return findings_table(i.runs, i.pair_kinds, i.labels, i.task_order), None


# topic (:data:`lmft.aggregate.topics.TOPICS`) -> its table and plot (None where the topic has no plot)
BUILD: dict[str, Callable[[Inputs], tuple[Table, Figure | None]]] = {
    "main": _main, "generation": _generation, "kernel": _kernel, "graft": _graft, "interpolate": _interpolate,
    "zo": _zo, "findings": _findings}


def aggregate(metrics: Sequence[PathLike], curves: Sequence[PathLike], runs_path: PathLike,
              tables_dir: PathLike, plots_dir: PathLike, topics: Sequence[str],
              labels: Mapping[str, str] | None = None, task_order: Sequence[str] = (),
              pair_kinds: Mapping[str, str] | None = None, zo_curves: Sequence[PathLike] = ()) -> list[Path]:
    """Gather ``metrics`` into ``runs_path`` (parquet) and write each topic's table
    (``tables_dir/{stem}.{csv,md,tex,html}``) and plot (``plots_dir/{stem}.{png,pdf}``), as
    :func:`lmft.aggregate.topics.output_files` names them. ``pair_kinds`` (:func:`lmft.interpolate.plan.pair_kinds`) tells the
    findings which interpolate pairs are pre-trained -> fine-tuned and seed -> seed; ``zo_curves``
    are the zeroth-order runs' ``curve.parquet`` files (the ``zo`` topic). Returns the paths written."""
    unknown = [t for t in topics if t not in BUILD]
    if unknown:
        raise LmftError(f"aggregate: unknown topic(s) {unknown}; topics are {list(TOPICS)}")
    runs = load_runs(metrics)
    write_parquet(runs, runs_path)
    written = [Path(runs_path)]
    inputs = Inputs(runs, curves, labels, task_order, pair_kinds, zo_curves)
    for name in topics:
        topic = TOPICS[name]
        table, figure = BUILD[name](inputs)
        written += write_table(table, Path(tables_dir) / topic.table, topic.formats)
        if topic.plot is not None:
            written += plots.save(figure, Path(plots_dir) / topic.plot)
    return written
