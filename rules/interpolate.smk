# Mode connectivity (Qin et al. 2022): loss and metric along the straight line between two
# checkpoints, per configured pair (per example in losses.parquet; distances in metrics.json). Runs only when the config has an `interpolate:` section
# (lmft/interpolate/plan.py plans it, lmft/interpolate/stage.py runs its jobs).
from lmft.paths import finetune_run, interpolate_dir, kshot_splits, model_manifest

INTERP = PLAN.interpolate
INTERP_RESOURCES = PLAN.resources("interpolate", INTERP.get("resources"))
INTERP_DIR = interpolate_dir(RESULTS, "{model}", "{task}", "{pair}")

wildcard_constraints:
    pair=r"[A-Za-z0-9_.\-]+",


def interp_job(w):
    path = interpolate_dir(RESULTS, w.model, w.task, w.pair)
    if path not in PLAN.interpolate_jobs:
        raise ValueError(f"{path}: not a pair of interpolate.pairs for this model and task")
    return PLAN.interpolate_jobs[path]


def interp_inputs(w):
    """The model, the evaluation task's k-shot files and both endpoints' run files."""
    job = interp_job(w)
    out = {"model_json": model_manifest(RESULTS, w.model), **kshot_splits(DATA, w.task, job["k"], job["seed"])}
    for end in ("a", "b"):
        e = job[end]
        run = finetune_run(RESULTS, w.model, e["task"], e["k"], e["seed"], e["method"])
        out[f"{end}_metrics"] = f"{run}/metrics.json"
        out[f"{end}_checkpoint"] = f"{run}/model.safetensors"
        if e["step"] is not None:
            out[f"{end}_steps"] = f"{run}/steps"
    return out


rule interpolate:
    input:
        unpack(interp_inputs),
    output:
        curve=f"{INTERP_DIR}/curve.parquet",
        losses=f"{INTERP_DIR}/losses.parquet",
        examples=f"{INTERP_DIR}/examples.parquet",
        plot=f"{INTERP_DIR}/plot.png",
        metrics=f"{INTERP_DIR}/metrics.json",
    params:
        job=interp_job,
        tasks=lambda w: PLAN.tasks_config(sorted({w.task, interp_job(w)["a"]["task"], interp_job(w)["b"]["task"]})),
        points=INTERP["points"],
        track_train=INTERP["track_train"],
        eval_batch_size=INTERP["eval_batch_size"],
        eval_cap=lambda w: PLAN.eval_cap(interp_job(w)["a"]["method"]),
        device=INTERP["device"],
    log:
        "logs/interpolate/{model}/{task}/{pair}.log",
    benchmark:
        "benchmarks/interpolate/{model}/{task}/{pair}.tsv"
    threads: INTERP["threads"]
    resources:
        **INTERP_RESOURCES,
    script:
        "../workflow/scripts/interpolate.py"
