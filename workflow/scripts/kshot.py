"""Snakemake adapter: raw task data -> data/kshot/{task}/{k}-{seed}/{train,dev,test}.parquet."""

from lmft.io import read_json, read_parquet, write_parquet
from lmft.kshot import cap_test, kshot_split
from lmft.runtime import run_script


def main(smk):
    cols = ["text_a", "text_b", "label"]
    train = read_parquet(smk.input.train, cols)
    test = read_parquet(smk.input.test, cols)
    style = read_json(smk.input.source)["test_cap_style"]
    k, seed = int(smk.wildcards.k), int(smk.wildcards.seed)
    tr, dev = kshot_split(train, k, seed, task=smk.wildcards.task)
    write_parquet(tr, smk.output.train)
    write_parquet(dev, smk.output.dev)
    write_parquet(cap_test(test, smk.params.test_cap, style), smk.output.test)


run_script(main, snakemake)  # noqa: F821
