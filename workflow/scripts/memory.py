"""Snakemake adapter: a k-shot train split + a prepared model -> results/memory/.../metrics.json."""

from lmft.data.tasks import get_task
from lmft.finetune.memory import run_memory
from lmft.runtime import run_script


def main(smk):
    w, p = smk.wildcards, smk.params
    run_memory(smk.input.model, get_task(w.task, p.task), smk.input.train, smk.output.metrics, model=w.model,
               k=int(w.k), seed=int(w.seed), device=p.device, **p.settings)


run_script(main, snakemake)  # noqa: F821
