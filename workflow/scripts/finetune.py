"""Snakemake adapter: k-shot tables + a prepared model -> one fine-tuning run directory."""

from pathlib import Path

from lmft.data.tasks import get_task
from lmft.finetune.stage import run_finetune
from lmft.paths import SPLITS
from lmft.runtime import run_script


def main(smk):
    w = smk.wildcards
    task = get_task(w.task, smk.params.task)
    splits = {s: smk.input[s] for s in SPLITS}
    run_finetune(smk.input.model, task, splits, Path(smk.output.metrics).parent, model=w.model, k=int(w.k),
                 seed=int(w.seed), method=w.method, spec=smk.params.method, eval_cap=smk.params.eval_cap,
                 device=smk.params.device)


run_script(main, snakemake)  # noqa: F821
