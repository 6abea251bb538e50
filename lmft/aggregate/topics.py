"""The aggregate's topics: which tables and plots it writes, under which names and titles, from which stages.

A topic is a table (``tables/{stem}.{csv,md,tex,html}``; the findings without LaTeX) and, for most,
a plot (``plots/{stem}.{png,pdf}``). :func:`topics_for` says which topics the stages that have
runs can fill; :func:`output_files` names the files, as the aggregate rule declares them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lmft.io import LmftError, PathLike

# The stages whose metrics.json files the aggregate gathers (``generation``: the fine-tuning stage's
# runs of generation tasks, which have a table of their own; ``memory``: measurements the findings read).
STAGES = ("finetune", "generation", "kernel", "graft", "interpolate", "memory")

TOPICS = ("main", "generation", "kernel", "graft", "interpolate", "findings")
TABLE_FORMATS = ("csv", "md", "tex", "html")
# the findings are sentences, not a paper table: no LaTeX
TOPIC_TABLE_FORMATS: dict[str, tuple[str, ...]] = {"findings": ("csv", "md", "html")}
PLOT_FORMATS = ("png", "pdf")
# topic -> (stem of its table, stem of its plot or None, title)
TOPIC_FILES: dict[str, tuple[str, str | None, str]] = {
    "main": ("main", "accuracy_vs_k", "Test metric (mean (std) over seeds, x100)"),
    "generation": ("generation", "generation_scores", "Generation: test ROUGE or exact match / token F1 (x100)"),
    "kernel": ("kernel_vs_ft", "kernel_vs_ft", "Kernel solutions vs fine-tuning (test metric x100)"),
    "graft": ("graft", "graft_sparsity", "Grafting: test metric, ECE and kept fraction vs sparsity (x100)"),
    "interpolate": ("interpolate", "interpolate_curves", "Linear interpolation: barriers and distances"),
    "findings": ("findings", None, "Findings: each paper's claim against this run"),
}
# topic -> its category in ``snakemake --report`` (rules/aggregate.smk; the caption is workflow/report/{topic}.rst)
REPORT_CATEGORY: dict[str, str] = {"main": "Main results", "generation": "Generation",
                                   "kernel": "Kernel vs fine-tuning", "graft": "Grafting",
                                   "interpolate": "Mode connectivity", "findings": "Findings"}


def topics_for(stages: Iterable[str]) -> list[str]:
    """The topics (tables + plots) that the registered ``stages`` can fill, in :data:`TOPICS` order."""
    s = set(stages)
    unknown = s - set(STAGES)
    if unknown:
        raise LmftError(f"aggregate: unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    have = {"main": bool(s & {"finetune", "kernel"}), "generation": "generation" in s,
            "kernel": {"finetune", "kernel"} <= s,
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
