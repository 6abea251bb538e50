# Fine-tuning (LM-BFF, MeZO, parameter modes, probes, zero-shot, ICL): one job per model, task, k,
# seed and method of `finetune.methods`. Runs only when the config has that section.
#
# Params are the job's own method entry (without `models`, `resources`, `threads`, `eval_cap`,
# which are passed or used separately) and its task's definition: changing one method's
# hyper-parameter reruns that method's jobs only, changing a task's template that task's only.
# A method with lists (a grid, lmft/grid.py) runs one job per trial, in the run directory
# `{method}~{key}-{value}...`; the `method` wildcard is that run name and the params hold the
# trial's single values, so changing one value of a list reruns that value's trials only.
#
# Resuming: an `ft` or `mezo` method with `save_every` writes {run}/resume.pt while it trains. It is
# not a declared output, so Snakemake leaves it in place when the job fails or is killed (it
# deletes declared outputs only), and the rerun continues from it bit for bit. No `shadow:`: a
# shadow directory is thrown away with the resume file in it.
import re

from lmft.finetune import finetune_targets
from lmft.grid import expand_methods
from lmft.methods import job_spec
from lmft.paths import finetune_run, kshot_splits

FINETUNE = config.get("finetune") or {}
FT_RUNS = expand_methods(FINETUNE.get("methods") or {})  # run name -> settings (a grid's trials apart)


def ft_setting(w, key, default):
    """A run's own value of ``key`` (its method's), else the finetune section's, else ``default``."""
    return FT_RUNS[w.method].get(key, FINETUNE.get(key, default))


def ft_resource(w, key, default):
    own = FT_RUNS[w.method].get("resources") or {}
    return own.get(key, (FINETUNE.get("resources") or {}).get(key, default))


FT_RUN = finetune_run(RESULTS, "{model}", "{task}", "{k}", "{seed}", "{method}")


rule finetune:
    input:
        **kshot_splits(DATA, "{task}", "{k}", "{seed}"),
        model=model_json("{model}"),
    output:
        metrics=f"{FT_RUN}/metrics.json",
        model=f"{FT_RUN}/model.safetensors",
        curve=f"{FT_RUN}/curve.parquet",
        predictions=f"{FT_RUN}/predictions.parquet",
        steps=directory(f"{FT_RUN}/steps"),
    wildcard_constraints:
        method="|".join(re.escape(m) for m in FT_RUNS) or "(?!)",  # only configured methods and trials
    params:
        method=lambda w: job_spec(FT_RUNS[w.method]),
        task=lambda w: task_config(w.task),
        eval_cap=lambda w: ft_setting(w, "eval_cap", None),
        device=FINETUNE.get("device", "auto"),
    log:
        "logs/finetune/{model}/{task}/{k}-{seed}/{method}.log",
    benchmark:
        "benchmarks/finetune/{model}/{task}/{k}-{seed}/{method}.tsv"
    threads: lambda w: ft_setting(w, "threads", 1)
    resources:
        mem_mb=lambda w: ft_resource(w, "mem_mb", 4000),
        runtime=lambda w: ft_resource(w, "runtime", 60),
        gpu=lambda w: ft_resource(w, "gpu", 0),
    script:
        "../workflow/scripts/finetune.py"


FINETUNE_METRICS = finetune_targets(config)
register_metrics("finetune", FINETUNE_METRICS)
TARGETS.extend(FINETUNE_METRICS)
