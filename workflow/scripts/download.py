"""Snakemake adapter: raw data of one task -> data/raw/{task}/{train,test}.parquet + source.json."""

from lmft.data.stage import run_download
from lmft.runtime import run_script


def main(smk):
    run_download(smk.wildcards.task, smk.params.config, smk.params.data_dir, smk.output)


run_script(main, snakemake)  # noqa: F821
