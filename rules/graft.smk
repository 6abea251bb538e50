# Grafting (Panigrahi et al. 2023): a sparse mask per fine-tuning run and sparsity, and how the
# masks of several tasks (or seeds) overlap. Runs only when the config has a `graft:` section.
# Reads the runs at FT_RUN of rules/finetune.smk (include it first).
from lmft.graft_plan import graft_jobs, graft_options, overlap_groups, overlap_path
from lmft.grid import check_pinned
from lmft.paths import graft_dir, kshot_split, kshot_splits, overlap_seeds, overlap_tasks

GRAFT = config.get("graft") or {}
GRAFT_JOBS = graft_jobs(config) if GRAFT else []
# A graft reads one fine-tuning run per seed, so no grid (an unset graft.methods takes grids too).
GRAFT_KEY = "graft.methods" if GRAFT.get("methods") is not None else "graft.methods (unset: every ft and mezo method)"
check_pinned(config, [(GRAFT_KEY, job["method"]) for job in GRAFT_JOBS])
GRAFT_RESOURCES = GRAFT.get("resources") or {}
GRAFT_RUN = graft_dir(RESULTS, "{model}", "{task}", "{k}", "{seed}", "{method}", "{sparsity}")

wildcard_constraints:
    sparsity=r"[0-9.eE+\-]+",


def tasks_config(names):
    """The config entries that define ``names`` (see task_config in common.smk), merged."""
    out = {"user_tasks": {}, "task_overrides": {}}
    for name in names:
        for key, value in task_config(name).items():
            out[key] = {**out[key], **value} if isinstance(value, dict) else value
    return out


def graft_ood(task):
    return list((GRAFT.get("ood") or {}).get(task, []))


def finetune_eval_cap(method):
    """The test cap the fine-tuning runs of ``method`` used, so the scores compare with theirs."""
    section = config.get("finetune") or {}
    return ((section.get("methods") or {}).get(method) or {}).get("eval_cap", section.get("eval_cap"))


rule graft:
    input:
        model_json=lambda w: model_json(w.model),
        run_metrics=f"{FT_RUN}/metrics.json",
        checkpoint=f"{FT_RUN}/model.safetensors",
        **kshot_splits(DATA, "{task}", "{k}", "{seed}"),
        ood=lambda w: [kshot_split(DATA, t, w.k, w.seed, "test") for t in graft_ood(w.task)],
    output:
        mask=f"{GRAFT_RUN}/mask.safetensors",
        metrics=f"{GRAFT_RUN}/metrics.json",
    params:
        options=lambda w: graft_options(config, w.method),
        ood=lambda w: graft_ood(w.task),
        tasks=lambda w: tasks_config([w.task, *graft_ood(w.task)]),
        eval_cap=lambda w: finetune_eval_cap(w.method),
        device=GRAFT.get("device", "auto"),
    log:
        "logs/graft/{model}/{task}/{k}-{seed}/{method}/sparsity-{sparsity}.log",
    benchmark:
        "benchmarks/graft/{model}/{task}/{k}-{seed}/{method}/sparsity-{sparsity}.tsv"
    threads: GRAFT.get("threads", 1)
    resources:
        mem_mb=GRAFT_RESOURCES.get("mem_mb", 8000),
        runtime=GRAFT_RESOURCES.get("runtime", 60),
        gpu=GRAFT_RESOURCES.get("gpu", 0),
    script:
        "../workflow/scripts/graft.py"


OVERLAP_GROUPS = {overlap_path(RESULTS, g): g for g in overlap_groups(GRAFT_JOBS)} if GRAFT.get("overlap", True) else {}


def overlap_group(table, w):
    """The group of masks behind an overlap table (one of the configured graft jobs' groups)."""
    path = table.format(**dict(w.items()))
    if path not in OVERLAP_GROUPS:
        raise ValueError(f"{path}: not an overlap table of the configured graft jobs")
    group = OVERLAP_GROUPS[path]
    return {"masks": [graft_dir(RESULTS, **m) + "/mask.safetensors" for m in group["members"]],
            "labels": [str(m[group["by"][:-1]]) for m in group["members"]],  # each member's task or seed
            "context": {key: value for key, value in group.items() if key != "members"}}


# One rule per way of grouping the masks: those of every task (one seed), those of every seed (one task).
OVERLAP_TABLES = {"tasks": overlap_tasks(RESULTS, "{model}", "{k}", "{seed}", "{method}", "{sparsity}"),
                  "seeds": overlap_seeds(RESULTS, "{model}", "{task}", "{k}", "{method}", "{sparsity}")}

for by, table in OVERLAP_TABLES.items():
    stem = table.removeprefix(f"{RESULTS}/").removesuffix(".parquet")  # its log and benchmark: graft/{model}/overlap-...

    rule:
        name:
            f"mask_overlap_{by}"
        input:
            masks=lambda w, table=table: overlap_group(table, w)["masks"],
        output:
            table,
        params:
            labels=lambda w, table=table: overlap_group(table, w)["labels"],
            context=lambda w, table=table: overlap_group(table, w)["context"],
        log:
            f"logs/{stem}.log",
        benchmark:
            f"benchmarks/{stem}.tsv"
        resources:
            mem_mb=2000,
        script:
            "../workflow/scripts/mask_overlap.py"


GRAFT_METRICS = [graft_dir(RESULTS, **job) + "/metrics.json" for job in GRAFT_JOBS]
register_metrics("graft", GRAFT_METRICS)
TARGETS.extend(GRAFT_METRICS)
TARGETS.extend(OVERLAP_GROUPS)
