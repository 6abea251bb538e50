"""Snakemake adapter: a fine-tuning run -> results/graft/.../{method}/reference/{metrics.json, predictions.parquet}."""

from pathlib import Path

from lmft.data.tasks import get_task
from lmft.graft.stage import run_reference
from lmft.paths import EVAL_SPLITS
from lmft.runtime import run_script


def main(smk):
    w, p = smk.wildcards, smk.params
    ood = {name: (get_task(name, p.tasks), path) for name, path in zip(p.ood, smk.input.ood)}
    splits = {s: smk.input[s] for s in EVAL_SPLITS}
    run_reference(smk.input.model_json, get_task(w.task, p.tasks), Path(smk.input.checkpoint).parent, splits,
                  Path(smk.output.metrics).parent, model=w.model, k=int(w.k), seed=int(w.seed), method=w.method,
                  options=p.options, ood=ood, eval_cap=p.eval_cap, device=p.device)


run_script(main, snakemake)  # noqa: F821
