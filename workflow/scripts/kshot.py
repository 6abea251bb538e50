"""Snakemake adapter: raw task data -> data/kshot/{task}/{k}-{seed}/{train,dev,test}.parquet + info.json."""

import logging

from lmft.data.kshot import cap_test, kshot_split, split_info
from lmft.io import read_json, read_parquet, write_json, write_parquet
from lmft.runtime import run_script


def main(smk):
    cols = ["text_a", "text_b", "label"]
    train = read_parquet(smk.input.train, cols)
    test = read_parquet(smk.input.test, cols)
    style = "balanced" if smk.params.test_balance else read_json(smk.input.source)["test_cap_style"]
    labels = sorted(set(train["label"]) | set(test["label"]))
    k, seed = int(smk.wildcards.k), int(smk.wildcards.seed)
    tr, dev = kshot_split(train, k, seed, task=smk.wildcards.task)
    capped = cap_test(test, smk.params.test_cap, style, labels)
    info = split_info({"train": tr, "dev": dev, "test": capped}, labels, style, smk.params.test_cap, len(test))
    logging.getLogger("lmft").info("%s %s-%s: test %s of %d rows, per label %s (majority baseline %.3f)",
                                   smk.wildcards.task, k, seed, style, len(test), info["label_counts"]["test"],
                                   info["majority_baseline"])
    write_parquet(tr, smk.output.train)
    write_parquet(dev, smk.output.dev)
    write_parquet(capped, smk.output.test)
    write_json(info, smk.output.info)


run_script(main, snakemake)  # noqa: F821
