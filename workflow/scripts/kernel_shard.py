"""Snakemake adapter: k-shot tables + a prepared model -> one shard of every configured kernel formula."""

from lmft.data.tasks import get_task
from lmft.kernels.stage import run_shard
from lmft.runtime import run_script


def main(smk):
    w, cfg = smk.wildcards, smk.params.settings  # everything the shard computes with, as the plan resolved it
    run_shard(smk.input.model, get_task(w.task, smk.params.task), smk.input.train, smk.input.split,
              dict(zip(cfg["formulas"], smk.output.shards)), smk.output.f0, split=w.split, prompt=w.prompt,
              seed=int(w.seed), row=int(w.row), col=int(w.col), cfg=cfg)


run_script(main, snakemake)  # noqa: F821
