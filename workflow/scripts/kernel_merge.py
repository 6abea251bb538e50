"""Snakemake adapter: the shards of one (model, task, k, seed, prompt) -> each formula's kernel file and f0, per split."""

from lmft.kernels.stage import SPLITS, merge
from lmft.runtime import run_script


def main(smk):
    formulas, grid = smk.params.formulas, smk.params.grid
    # the rule lists inputs and outputs split by split, formula by formula, shards row by row
    shards, f0s = iter(smk.input.shards), iter(smk.input.f0)
    kernels, f0_out = iter(smk.output.kernels), iter(smk.output.f0)
    for split in SPLITS:
        rows, cols = grid[split]
        files = {f: [next(shards) for _ in range(rows * cols)] for f in formulas}
        merge(files, [next(f0s) for _ in range(cols)], {f: next(kernels) for f in formulas}, next(f0_out))


run_script(main, snakemake)  # noqa: F821
