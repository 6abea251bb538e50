"""Snakemake adapter: a generation task's raw data -> data/kshot/{task}/{k}-{seed}/{train,dev,test}.parquet
+ info.json."""

from lmft.data.stage import run_kshot_examples
from lmft.runtime import run_script


def main(smk):
    w = smk.wildcards
    run_kshot_examples(w.task, int(w.k), int(w.seed), smk.input, smk.output, test_cap=smk.params.test_cap)


run_script(main, snakemake)  # noqa: F821
