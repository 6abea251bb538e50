# Grafting (Panigrahi et al. 2023): a sparse mask per fine-tuning run and sparsity, and how the
# masks of several tasks (or seeds) overlap. Runs only when the config has a `graft:` section
# (lmft/graft/plan.py plans it, lmft/graft/stage.py runs its jobs). The scores of the pre-trained and
# fine-tuned ends are made once per run (graft_reference) and read by every sparsity's job.
from lmft.paths import (EVAL_SPLITS, finetune_run, graft_dir, graft_reference, kshot_split, kshot_splits,
                        model_manifest, overlap_seeds, overlap_tasks)

GRAFT = PLAN.graft
GRAFT_RESOURCES = PLAN.resources("graft", GRAFT.get("resources"))
GRAFT_RUN = graft_dir(RESULTS, "{model}", "{task}", "{k}", "{seed}", "{method}", "{sparsity}")
GRAFT_REFERENCE = graft_reference(RESULTS, "{model}", "{task}", "{k}", "{seed}", "{method}")
GRAFTED = finetune_run(RESULTS, "{model}", "{task}", "{k}", "{seed}", "{method}")  # the run a graft reads
GRAFT_INPUTS = {  # what the reference and the grafts both read
    "model_json": model_manifest(RESULTS, "{model}"),
    "run_metrics": f"{GRAFTED}/metrics.json",
    "checkpoint": f"{GRAFTED}/model.safetensors",
    "ood": lambda w: [kshot_split(DATA, t, w.k, w.seed, "test") for t in PLAN.graft_ood(w.task)],
}
GRAFT_PARAMS = {
    "ood": lambda w: PLAN.graft_ood(w.task),
    "tasks": lambda w: PLAN.tasks_config([w.task, *PLAN.graft_ood(w.task)]),
    "eval_cap": lambda w: PLAN.eval_cap(w.method),
    "device": GRAFT["device"],
}

wildcard_constraints:
    sparsity=r"[0-9.eE+\-]+",


rule graft_reference:
    input:
        **GRAFT_INPUTS,
        **{s: kshot_split(DATA, "{task}", "{k}", "{seed}", s) for s in EVAL_SPLITS},
    output:
        metrics=f"{GRAFT_REFERENCE}/metrics.json",
        predictions=f"{GRAFT_REFERENCE}/predictions.parquet",
    params:
        options=lambda w: PLAN.graft_reference_options(w.method),
        **GRAFT_PARAMS,
    log:
        "logs/graft/{model}/{task}/{k}-{seed}/{method}/reference.log",
    benchmark:
        "benchmarks/graft/{model}/{task}/{k}-{seed}/{method}/reference.tsv"
    threads: GRAFT["threads"]
    resources:
        **GRAFT_RESOURCES,
    script:
        "../workflow/scripts/graft_reference.py"


rule graft:
    input:
        **GRAFT_INPUTS,
        **kshot_splits(DATA, "{task}", "{k}", "{seed}"),
        reference=f"{GRAFT_REFERENCE}/metrics.json",
    output:
        mask=f"{GRAFT_RUN}/mask.safetensors",
        metrics=f"{GRAFT_RUN}/metrics.json",
        predictions=f"{GRAFT_RUN}/predictions.parquet",
    params:
        options=lambda w: PLAN.graft_options(w.method),
        **GRAFT_PARAMS,
    log:
        "logs/graft/{model}/{task}/{k}-{seed}/{method}/sparsity-{sparsity}.log",
    benchmark:
        "benchmarks/graft/{model}/{task}/{k}-{seed}/{method}/sparsity-{sparsity}.tsv"
    threads: GRAFT["threads"]
    resources:
        **GRAFT_RESOURCES,
    script:
        "../workflow/scripts/graft.py"


def overlap_group(table, w):
    """The group of masks behind an overlap table (one of the configured graft jobs' groups)."""
    path = table.format(**dict(w.items()))
    if path not in PLAN.overlap_groups:
        raise ValueError(f"{path}: not an overlap table of the configured graft jobs")
    group = PLAN.overlap_groups[path]
    return {"masks": [graft_dir(RESULTS, **m) + "/mask.safetensors" for m in group["members"]],
            "labels": [str(m[group["by"][:-1]]) for m in group["members"]],  # each member's task or seed
            "context": {key: value for key, value in group.items() if key != "members"}}


# One rule per way of grouping the masks: those of every task (one seed), those of every seed (one task).
OVERLAP_TABLES = {"tasks": overlap_tasks(RESULTS, "{model}", "{k}", "{seed}", "{method}", "{sparsity}"),
                  "seeds": overlap_seeds(RESULTS, "{model}", "{task}", "{k}", "{method}", "{sparsity}")}

for by, table in OVERLAP_TABLES.items():
    stem = table.removeprefix(f"{RESULTS}/").removesuffix(".parquet")  # logs/{stem}.log: logs/graft/{model}/overlap-...

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
