"""Snakemake adapter: two checkpoints -> results/interpolate/{model}/{task}/{pair}/: curves, plot, metrics."""

from pathlib import Path

from lmft.data.tasks import get_task
from lmft.interpolate.stage import Endpoint, run_interpolate
from lmft.paths import SPLITS
from lmft.runtime import run_script


def main(smk):
    w, p, job = smk.wildcards, smk.params, smk.params.job
    ends = [Endpoint(Path(smk.input[f"{e}_checkpoint"]).parent, get_task(job[e]["task"], p.tasks), job[e]["step"],
                     job[e]["pretrained"]) for e in ("a", "b")]
    splits = {s: smk.input[s] for s in SPLITS}
    run_interpolate(smk.input.model_json, get_task(w.task, p.tasks), *ends, splits, Path(smk.output.metrics).parent,
                    model=w.model, k=job["k"], seed=job["seed"], pair=w.pair, points=p.points,
                    track_train=p.track_train, eval_cap=p.eval_cap, eval_batch_size=p.eval_batch_size,
                    device=p.device)


run_script(main, snakemake)  # noqa: F821
