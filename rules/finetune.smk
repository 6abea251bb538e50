# Fine-tuning (LM-BFF, MeZO, parameter modes, probes, zero-shot, ICL): one job per model, task, k,
# seed and method of `finetune.methods`. Runs only when the config has that section.
#
# Params are the job's own method entry (without `models`, `resources`, `threads`, `eval_cap`,
# which are passed or used separately) and its task's definition: changing one method's
# hyper-parameter reruns that method's jobs only, changing a task's template that task's only.
# A method with lists (a grid, lmft/finetune/grid.py) runs one job per trial, in the run directory
# `{method}~{key}-{value}...`; the `method` wildcard is that run name and the params hold the
# trial's single values, so changing one value of a list reruns that value's trials only.
#
# Resuming: an `ft` or `mezo` method with `save_every` writes {run}/resume.pt while it trains. It is
# not a declared output, so Snakemake leaves it in place when the job fails or is killed (it
# deletes declared outputs only), and the rerun continues from it bit for bit. No `shadow:`: a
# shadow directory is thrown away with the resume file in it.
from lmft.finetune.methods import job_spec
from lmft.paths import finetune_run, kshot_split, kshot_splits, memory_metrics, model_manifest, one_of

FT_RUNS = PLAN.finetune_runs  # run name -> settings (a grid's trials apart)
FT_RUN = finetune_run(RESULTS, "{model}", "{task}", "{k}", "{seed}", "{method}")


rule finetune:
    input:
        **kshot_splits(DATA, "{task}", "{k}", "{seed}"),
        model=model_manifest(RESULTS, "{model}"),
    output:
        metrics=f"{FT_RUN}/metrics.json",
        model=f"{FT_RUN}/model.safetensors",
        curve=f"{FT_RUN}/curve.parquet",
        predictions=f"{FT_RUN}/predictions.parquet",
        steps=directory(f"{FT_RUN}/steps"),
    wildcard_constraints:
        method=one_of(FT_RUNS),  # only configured methods and trials
    params:
        method=lambda w: job_spec(FT_RUNS[w.method]),
        task=lambda w: PLAN.task_config(w.task),
        eval_cap=lambda w: PLAN.run_setting(w.method, "eval_cap"),
        device=PLAN.finetune["device"],
    log:
        "logs/finetune/{model}/{task}/{k}-{seed}/{method}.log",
    benchmark:
        "benchmarks/finetune/{model}/{task}/{k}-{seed}/{method}.tsv"
    threads: lambda w: PLAN.run_setting(w.method, "threads")
    resources:
        mem_mb=lambda w: PLAN.run_resources(w.method)["mem_mb"],
        runtime=lambda w: PLAN.run_resources(w.method)["runtime"],
        gpu=lambda w: PLAN.run_resources(w.method)["gpu"],
    script:
        "../workflow/scripts/finetune.py"


# Memory of training steps (MeZO's claim: the memory of inference, far below back-propagation): one job
# per model, task, k and seed of the `memory:` section, on the run's first training batch, every mode
# and method in one process (lmft/finetune/memory.py). Its metrics.json goes to the aggregate.
rule memory:
    input:
        train=kshot_split(DATA, "{task}", "{k}", "{seed}", "train"),
        model=model_manifest(RESULTS, "{model}"),
    output:
        metrics=memory_metrics(RESULTS, "{model}", "{task}", "{k}", "{seed}"),
    params:
        settings=PLAN.memory_settings,
        task=lambda w: PLAN.task_config(w.task),
        device=PLAN.memory["device"],
    log:
        "logs/memory/{model}/{task}/{k}-{seed}.log",
    benchmark:
        "benchmarks/memory/{model}/{task}/{k}-{seed}.tsv"
    threads: PLAN.memory["threads"]
    resources:
        **PLAN.memory_resources,
    script:
        "../workflow/scripts/memory.py"
