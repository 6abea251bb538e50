"""Snakemake adapter: k-shot tables + a prepared model -> one shard of every configured kernel formula."""

from lmft.data.tasks import get_task
from lmft.kernels.stage import run_shard, settings
from lmft.runtime import run_script


def main(smk):
    w = smk.wildcards
    # what the numbers depend on comes from params (rerun triggers); batch sizes and device from the config
    cfg = settings(smk.config) | smk.params.kernel | smk.params.shards | {"test_cap": smk.params.test_cap}
    out = dict(zip(cfg["formulas"], smk.output.shards))
    run_shard(smk.input.model, get_task(w.task, smk.params.task), smk.input.train, smk.input.split, out, smk.output.f0,
              split=w.split, prompt=w.prompt, seed=int(w.seed), row=int(w.row), col=int(w.col), cfg=cfg)


run_script(main, snakemake)  # noqa: F821
