"""Snakemake adapter: raw task data -> data/kshot/{task}/{k}-{seed}/{train,dev,test}.parquet + info.json."""

from lmft.data.stage import run_kshot
from lmft.runtime import run_script


def main(smk):
    w = smk.wildcards
    run_kshot(w.task, int(w.k), int(w.seed), smk.input, smk.output, **smk.params.settings)


run_script(main, snakemake)  # noqa: F821
