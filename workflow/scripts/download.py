"""Snakemake adapter: raw data of one task -> data/raw/{task}/{train,test}.parquet + source.json."""

from pathlib import Path

from lmft.data.raw import load_raw
from lmft.data.tasks import get_task
from lmft.io import write_json, write_parquet
from lmft.runtime import run_script


def main(smk):
    task = get_task(smk.wildcards.task, smk.params.config)
    train, test, info = load_raw(task, Path(smk.params.data_dir), smk.params.config)
    write_parquet(train, smk.output.train)
    write_parquet(test, smk.output.test)
    write_json(info, smk.output.source)


run_script(main, snakemake)  # noqa: F821
