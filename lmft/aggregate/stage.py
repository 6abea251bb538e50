"""Gather the runs' metrics.json files into one table, and the paper tables made from it.

Inputs, one ``metrics.json`` per run of the stages (:mod:`lmft.aggregate.gather` lists the keys each stage's
files must have), and the interpolation curves beside them. Outputs, as :func:`lmft.aggregate.topics.output_files`
names them: ``runs.parquet`` (:func:`lmft.aggregate.gather.load_runs`), each topic's table (:mod:`lmft.aggregate.tables`;
the ``findings`` topic checks each paper's claim against the runs, :mod:`lmft.aggregate.findings`) and plot
(:mod:`lmft.aggregate.plots`).

Every output is a deterministic function of the inputs: rows and columns are sorted, floats
have a fixed format, so the same metrics give byte-identical tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lmft.aggregate import plots
from lmft.aggregate.findings import findings_table
from lmft.aggregate.gather import load_runs, selected
from lmft.aggregate.summary import kernel_pairs, load_curves, majority_baselines, method_label, summarize
from lmft.aggregate.tables import generation_table, graft_table, interpolate_table, kernel_table, main_table, write_table
from lmft.aggregate.topics import TOPIC_FILES, TOPICS, table_formats
from lmft.io import LmftError, PathLike, write_parquet


def aggregate(metrics: Sequence[PathLike], curves: Sequence[PathLike], runs_path: PathLike,
              tables_dir: PathLike, plots_dir: PathLike, topics: Sequence[str],
              labels: Mapping[str, str] | None = None, task_order: Sequence[str] = (),
              pair_kinds: Mapping[str, str] | None = None) -> list[Path]:
    """Gather ``metrics`` into ``runs_path`` (parquet) and write each topic's table
    (``tables_dir/{stem}.{csv,md,tex,html}``) and plot (``plots_dir/{stem}.{png,pdf}``), as
    :func:`lmft.aggregate.topics.output_files` names them. ``pair_kinds`` (:func:`lmft.interpolate.plan.pair_kinds`) tells the
    findings which interpolate pairs are pre-trained -> fine-tuned and seed -> seed. Returns the
    paths written."""
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
        elif topic == "generation":
            table = generation_table(runs, labels, task_order)
            figure = plots.generation_scores(selected(runs, ("generation",)), labels, task_order)
        elif topic == "kernel":
            pairs = kernel_pairs(runs, labels)
            table = kernel_table(pairs, task_order)
            figure = plots.kernel_vs_ft(pairs)
        elif topic == "graft":
            table = graft_table(runs, labels, task_order)
            graft = selected(runs, ("graft",))
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
