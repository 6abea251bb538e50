# Mode connectivity (Qin et al. 2022): loss and metric along the straight line between two
# checkpoints, per configured pair. Runs only when the config has an `interpolate:` section.
# Uses tasks_config and finetune_eval_cap from rules/graft.smk (include both).
from lmft.grid import check_pinned
from lmft.interpolate_plan import interpolate_jobs
from lmft.paths import finetune_run, interpolate_dir, kshot_splits

INTERP = config.get("interpolate") or {}
INTERP_JOBS = {interpolate_dir(RESULTS, job["model"], job["task"], job["pair"]): job
               for job in (interpolate_jobs(config) if INTERP else [])}
check_pinned(config, [(f"interpolate.pairs.{job['pair']}.{end}", job[end]["method"])  # one run per endpoint
                      for job in INTERP_JOBS.values() for end in ("a", "b")])
INTERP_RESOURCES = INTERP.get("resources") or {}
INTERP_DIR = interpolate_dir(RESULTS, "{model}", "{task}", "{pair}")

wildcard_constraints:
    pair=r"[A-Za-z0-9_.\-]+",


def interp_job(w):
    path = interpolate_dir(RESULTS, w.model, w.task, w.pair)
    if path not in INTERP_JOBS:
        raise ValueError(f"{path}: not a pair of interpolate.pairs for this model and task")
    return INTERP_JOBS[path]


def interp_inputs(w):
    """The model, the evaluation task's k-shot files and both endpoints' run files."""
    job = interp_job(w)
    out = {"model_json": model_json(w.model), **kshot_splits(DATA, w.task, job["k"], job["seed"])}
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
        examples=f"{INTERP_DIR}/examples.parquet",
        plot=f"{INTERP_DIR}/plot.png",
        metrics=f"{INTERP_DIR}/metrics.json",
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
