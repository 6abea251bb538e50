"""Snakemake adapter: LM-BFF's packed original data -> data/raw/_lmbff/original/."""

from pathlib import Path

from lmft.data.download import LMBFF_URL, extract_tar, fetch_or_reuse
from lmft.runtime import run_script


def main(smk):
    archive = Path(smk.params.archive)
    fetch_or_reuse(LMBFF_URL, archive, "lm-bff tasks")
    extract_tar(archive, Path(smk.output[0]).parent / "_extract")
    (Path(smk.output[0]).parent / "_extract" / "original").rename(smk.output[0])
    (Path(smk.output[0]).parent / "_extract").rmdir()


run_script(main, snakemake)  # noqa: F821
