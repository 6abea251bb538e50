"""Snakemake adapter: a generation task's raw data -> data/kshot/{task}/{k}-{seed}/{train,dev,test}.parquet
+ info.json."""

import logging

from lmft.data.kshot import cap_test_examples, examples_info, kshot_examples
from lmft.data.raw import GENERATION_COLUMNS
from lmft.io import read_parquet, write_json, write_parquet
from lmft.runtime import run_script


def main(smk):
    train = read_parquet(smk.input.train, GENERATION_COLUMNS)
    test = read_parquet(smk.input.test, GENERATION_COLUMNS)
    k, seed = int(smk.wildcards.k), int(smk.wildcards.seed)
    tr, dev = kshot_examples(train, k, seed, task=smk.wildcards.task)
    capped = cap_test_examples(test, smk.params.test_cap)
    info = examples_info({"train": tr, "dev": dev, "test": capped}, smk.params.test_cap, len(test))
    logging.getLogger("lmft").info("%s %s-%s: %s; test %d of %d rows", smk.wildcards.task, k, seed,
                                   info["counts"], len(capped), len(test))
    write_parquet(tr, smk.output.train)
    write_parquet(dev, smk.output.dev)
    write_parquet(capped, smk.output.test)
    write_json(info, smk.output.info)


run_script(main, snakemake)  # noqa: F821
