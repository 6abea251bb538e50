"""Snakemake adapter: one kernel's train/dev/test files (and f0, the k-shot test table) -> the metrics.json and
predictions.parquet of each of the job's solvers."""

from lmft.data.tasks import get_task
from lmft.kernels.stage import SPLITS, solve
from lmft.runtime import run_script


def main(smk):
    w = smk.wildcards
    kernels = {s: smk.input[s] for s in SPLITS}
    f0 = {s: smk.input[f"f0_{s}"] for s in SPLITS} if "f0_train" in smk.input.keys() else None
    outs = dict(zip(smk.params.solvers, smk.output.metrics))  # the rule lists outputs in solver order
    solve(kernels, f0, outs, smk.params.solvers, task=get_task(w.task, smk.params.task), model=w.model, k=int(w.k),
          seed=int(w.seed), formula=smk.params.formula, prompt=w.prompt, kernel_info=smk.params.kernel,
          test_split=smk.input.get("test_split"))


run_script(main, snakemake)  # noqa: F821
