# Mode connectivity (Qin et al. 2022): loss and metric along the straight line between two
# checkpoints, per configured pair. Runs only when the config has an `interpolate:` section.
# Uses tasks_config and finetune_eval_cap from rules/graft.smk (include both).
from lmft.grid import check_pinned
from lmft.interpolate import endpoint_run_dir, interpolate_dir, interpolate_jobs

INTERP = config.get("interpolate") or {}
INTERP_JOBS = {interpolate_dir(RESULTS, job): job for job in (interpolate_jobs(config) if INTERP else [])}
check_pinned(config, [(f"interpolate.pairs.{job['pair']}.{end}", job[end]["method"])  # one run per endpoint
                      for job in INTERP_JOBS.values() for end in ("a", "b")])
INTERP_RESOURCES = INTERP.get("resources") or {}

wildcard_constraints:
    pair=r"[A-Za-z0-9_.\-]+",


def interp_job(w):
    path = interpolate_dir(RESULTS, dict(w.items()))
    if path not in INTERP_JOBS:
        raise ValueError(f"{path}: not a pair of interpolate.pairs for this model and task")
    return INTERP_JOBS[path]


def interp_inputs(w):
    """The model, the evaluation task's k-shot files and both endpoints' run files."""
    job = interp_job(w)
    kshot = f"{DATA}/kshot/{w.task}/{job['k']}-{job['seed']}"
    out = {"model_json": model_json(w.model), **{s: f"{kshot}/{s}.parquet" for s in ("train", "dev", "test")}}
    for end in ("a", "b"):
        run = endpoint_run_dir(RESULTS, w.model, job[end])
        out[f"{end}_metrics"] = f"{run}/metrics.json"
        out[f"{end}_checkpoint"] = f"{run}/model.safetensors"
        if job[end]["step"] is not None:
            out[f"{end}_steps"] = f"{run}/steps"
    return out


rule interpolate:
    input:
        unpack(interp_inputs),
    output:
        curve=f"{RESULTS}/interpolate/{{model}}/{{task}}/{{pair}}/curve.parquet",
        examples=f"{RESULTS}/interpolate/{{model}}/{{task}}/{{pair}}/examples.parquet",
        plot=f"{RESULTS}/interpolate/{{model}}/{{task}}/{{pair}}/plot.png",
        metrics=f"{RESULTS}/interpolate/{{model}}/{{task}}/{{pair}}/metrics.json",
    params:
        job=interp_job,
        tasks=lambda w: tasks_config(sorted({w.task, interp_job(w)["a"]["task"], interp_job(w)["b"]["task"]})),
        points=INTERP.get("points", 11),
        track_train=INTERP.get("track_train", True),
        eval_batch_size=INTERP.get("eval_batch_size", 32),
        eval_cap=lambda w: finetune_eval_cap(interp_job(w)["a"]["method"]),
        device=INTERP.get("device", "auto"),
    log:
        "logs/interpolate/{model}/{task}/{pair}.log",
    benchmark:
        "benchmarks/interpolate/{model}/{task}/{pair}.tsv"
    threads: INTERP.get("threads", 1)
    resources:
        mem_mb=INTERP_RESOURCES.get("mem_mb", 8000),
        runtime=INTERP_RESOURCES.get("runtime", 60),
        gpu=INTERP_RESOURCES.get("gpu", 0),
    script:
        "../workflow/scripts/interpolate.py"


INTERP_METRICS = [f"{path}/metrics.json" for path in INTERP_JOBS]
register_metrics("interpolate", INTERP_METRICS)
TARGETS.extend(INTERP_METRICS)
