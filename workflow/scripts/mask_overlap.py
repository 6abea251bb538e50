"""Snakemake adapter: graft masks of several tasks (or seeds) -> an overlap table (parquet)."""

from lmft.graft.overlap import mask_overlap
from lmft.graft.stage import load_mask
from lmft.io import write_parquet
from lmft.runtime import run_script


def main(smk):
    masks = {label: load_mask(path) for label, path in zip(smk.params.labels, smk.input.masks)}
    write_parquet(mask_overlap(masks).assign(**smk.params.context), smk.output[0])


run_script(main, snakemake)  # noqa: F821
