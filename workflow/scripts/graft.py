"""Snakemake adapter: a fine-tuning run and its graft reference -> results/graft/.../sparsity-{s}/{mask.safetensors,
metrics.json, predictions.parquet}."""

from pathlib import Path

from lmft.data.tasks import get_task
from lmft.graft.stage import run_graft
from lmft.paths import SPLITS
from lmft.runtime import run_script


def main(smk):
    w, p = smk.wildcards, smk.params
    ood = {name: (get_task(name, p.tasks), path) for name, path in zip(p.ood, smk.input.ood)}
    splits = {s: smk.input[s] for s in SPLITS}
    run_graft(smk.input.model_json, get_task(w.task, p.tasks), Path(smk.input.checkpoint).parent, splits,
              Path(smk.output.metrics).parent, smk.input.reference, model=w.model, k=int(w.k), seed=int(w.seed),
              method=w.method, sparsity=float(w.sparsity), options=p.options, ood=ood, eval_cap=p.eval_cap, device=p.device)


run_script(main, snakemake)  # noqa: F821
