"""Snakemake adapter: LM-BFF's packed original data -> data/raw/_lmbff/original/."""

from lmft.data.stage import run_download_lmbff
from lmft.runtime import run_script


def main(smk):
    run_download_lmbff(smk.params.archive, smk.output[0])


run_script(main, snakemake)  # noqa: F821
