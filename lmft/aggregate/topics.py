"""The aggregate's topics: which tables and plots it writes, under which names and titles, from which stages.

A topic is a table (``tables/{stem}.{csv,md,tex,html}``; the findings without LaTeX) and, for most,
a plot (``plots/{stem}.{png,pdf}``). :data:`TOPICS` is the one registry of them: :func:`topics_for`
says which topics the stages that have runs can fill; :func:`output_files` names the files, as the
aggregate rule declares them; :mod:`lmft.aggregate.stage` builds each topic's table and plot by its name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from lmft.io import LmftError, PathLike

# The stages whose metrics.json files the aggregate gathers (``generation``: the fine-tuning stage's
# runs of generation tasks, which have a table of their own; ``memory``: measurements the findings read).
STAGES = ("finetune", "generation", "kernel", "graft", "interpolate", "memory")
# The finetune types whose curves the ``zo`` topic draws against forward passes (zeroth-order methods).
ZO_TYPES = ("mezo", "fzoo", "mezo-svrg")
# Not a stage: what :func:`topics_for` adds to the stages where the fine-tuning runs have a ZO_TYPES type.
ZO_RUNS = "zeroth-order runs"
TABLE_FORMATS = ("csv", "md", "tex", "html")
PLOT_FORMATS = ("png", "pdf")


@dataclass(frozen=True)
class Topic:
    """One topic: its table's file stem and title, its plot's stem (None: no plot), its category in
    ``snakemake --report`` (rules/aggregate.smk; the caption is ``workflow/report/{name}.rst``), the
    formats of its table, and whether the stages that have runs (a set of :data:`STAGES`) can fill it."""

    name: str
    table: str
    plot: str | None
    title: str
    category: str
    needs: Callable[[set[str]], bool]
    formats: tuple[str, ...] = TABLE_FORMATS


TOPICS: dict[str, Topic] = {t.name: t for t in (
    Topic("main", "main", "accuracy_vs_k", "Test metric (mean (std) over seeds, x100)", "Main results",
          lambda s: bool(s & {"finetune", "kernel"})),
    Topic("generation", "generation", "generation_scores", "Generation: test ROUGE or exact match / token F1 (x100)",
          "Generation", lambda s: "generation" in s),
    Topic("kernel", "kernel_vs_ft", "kernel_vs_ft", "Kernel solutions vs fine-tuning (test metric x100)",
          "Kernel vs fine-tuning", lambda s: {"finetune", "kernel"} <= s),
    Topic("graft", "graft", "graft_sparsity", "Grafting: test metric, ECE and kept fraction vs sparsity (x100)",
          "Grafting", lambda s: "graft" in s),
    Topic("interpolate", "interpolate", "interpolate_curves", "Linear interpolation: barriers and distances",
          "Mode connectivity", lambda s: "interpolate" in s),
    Topic("zo", "zo_forward_passes", "zo_forward_passes",
          "Zeroth-order methods: accuracy (x100) against forward passes", "Zeroth-order",
          lambda s: {"finetune", ZO_RUNS} <= s),
    # the findings are sentences, not a paper table: no LaTeX
    Topic("findings", "findings", None, "Findings: each paper's claim against this run", "Findings", bool,
          ("csv", "md", "html")),
)}


def topics_for(stages: Iterable[str], zo: bool = False) -> list[str]:
    """The topics (tables + plots) that the registered ``stages`` can fill, in :data:`TOPICS` order;
    ``zo``: the fine-tuning stage has runs of a :data:`ZO_TYPES` type (their curves)."""
    s = set(stages)
    unknown = s - set(STAGES)
    if unknown:
        raise LmftError(f"aggregate: unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    if zo:
        s.add(ZO_RUNS)
    return [name for name, topic in TOPICS.items() if topic.needs(s)]


def output_files(tables_dir: PathLike, plots_dir: PathLike, topics: Sequence[str]) -> dict[str, str]:
    """Named output files of the aggregate: ``{topic}_{fmt}`` for tables, ``{topic}_plot_{fmt}`` for plots."""
    out: dict[str, str] = {}
    for name in topics:
        topic = TOPICS[name]
        out.update({f"{name}_{fmt}": f"{tables_dir}/{topic.table}.{fmt}" for fmt in topic.formats})
        if topic.plot is not None:
            out.update({f"{name}_plot_{fmt}": f"{plots_dir}/{topic.plot}.{fmt}" for fmt in PLOT_FORMATS})
    return out
