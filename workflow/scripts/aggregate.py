"""Snakemake adapter: every run's metrics.json -> results/tables/* and results/plots/*."""

from lmft.aggregate.stage import aggregate
from lmft.runtime import run_script


def main(smk):
    p = smk.params
    aggregate(list(smk.input.metrics), list(smk.input.curves), smk.output.runs, p.tables_dir, p.plots_dir,
              p.topics, labels=p.labels, task_order=p.task_order, pair_kinds=p.pair_kinds,
              zo_curves=list(smk.input.zo_curves))


run_script(main, snakemake)  # noqa: F821
