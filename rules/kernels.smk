# The kernel view of fine-tuning (Malladi et al. 2023): eNTK kernels in shards, merged, then solved.
# Runs only when the config has a `kernels:` section (lmft/kernels/plan.py plans it, lmft/kernels/stage.py
# runs its jobs).
#
#   kernel_shard  (model, task, k, seed, prompt, split, row, col) -> one shard of every formula + f0 slice
#   kernel_merge  (model, task, k, seed, prompt)                  -> {formula}-{prompt}/{split}.pt, f0-{prompt}/{split}.pt
#   kernel_solve  (model, task, k, seed, formula, prompt)         -> kernel_solve/.../{formula}-{prompt}/{solver}/
#                 metrics.json and predictions.parquet (per test example; index = row of the k-shot test.parquet)
#                 for every configured solver but the stacked ones (asym), which read both parts of a
#                 stacked kernel: each has a rule of its own on the stacked formula's kernels alone,
#                 kernel_solve_{solver} (lmft.kernels.plan.solve_rules)
#
# Sharding uses wildcards per block: shard (row, col) of a `row_shards` x `col_shards` grid is its
# own job (`resources: gpu`), so on SLURM the shards of one kernel run on as many GPUs at once.
# One shard job computes every configured formula: the Jacobians of its rows and columns, the
# expensive part, do not depend on the formula (sgd, signgd and asymmetric-signgd only contract
# them differently), so one pass of Jacobians serves all formulas instead of one pass per formula.
# The formulas, prompt settings and solvers are those of their registries (lmft/kernels/formulas.py,
# lmft/kernels/solvers.py): the wildcards below come from them.
#
# With `published_dir` the solve jobs read kernels (and f0, for solvers with f0_scaling) from that
# directory, in the same layout as results/kernels; no shard or merge job is planned.
from lmft.kernels.formulas import FORMULAS, PROMPTS
from lmft.kernels.plan import col_shards, kernel_info, solve_rules
from lmft.paths import (SPLITS, kernel_dir, kernel_file, kernel_shard, kernel_solve_dir, kernel_solve_metrics,
                        kernel_solve_predictions, kshot_split, model_manifest, one_of)

KCFG = PLAN.kernels
KDIR = kernel_dir(RESULTS, "{model}", "{task}", "{k}", "{seed}")
KSRC = kernel_dir(RESULTS, "{model}", "{task}", "{k}", "{seed}", KCFG["published_dir"])  # what the solves read
KSHARD = kernel_shard(KDIR, "{prompt}", "{split}", "{row}", "{col}")
KFORMULAS = KCFG["formulas"]

# per rule, not global: other stages may use {split} or {prompt} for other things
KWILDCARDS = {"prompt": one_of(PROMPTS), "split": one_of(SPLITS), "formula": one_of(FORMULAS),
              "row": r"\d+", "col": r"\d+"}


def kernel_shard_files(w, formula, split):
    """Every shard file of one formula of a (model, task, k, seed, prompt) kernel of ``split``, row by row."""
    return [KSHARD.format(**dict(w.items()), split=split, row=r, col=c) + f"/{formula}.pt"
            for r in range(KCFG["row_shards"]) for c in range(col_shards(KCFG, split))]


def kernel_mem_mb(w, input):
    return PLAN.kernel_shard_mem_mb(w.task, input.model)


if not KCFG["published_dir"]:

    rule kernel_shard:
        input:
            train=kshot_split(DATA, "{task}", "{k}", "{seed}", "train"),
            split=kshot_split(DATA, "{task}", "{k}", "{seed}", "{split}"),
            model=model_manifest(RESULTS, "{model}"),
        output:
            shards=[f"{KSHARD}/{f}.pt" for f in KFORMULAS],
            f0=f"{KSHARD}/f0.pt",
        wildcard_constraints:
            **KWILDCARDS,
        params:
            settings=lambda w: PLAN.kernel_shard_settings(w.task, w.split),
            task=lambda w: PLAN.task_config(w.task),
        log:
            "logs/kernel_shard/{model}/{task}/{k}-{seed}/{prompt}/{split}/{row}-{col}.log",
        benchmark:
            "benchmarks/kernel_shard/{model}/{task}/{k}-{seed}/{prompt}/{split}/{row}-{col}.tsv"
        threads: KCFG["threads"]
        resources:
            mem_mb=kernel_mem_mb,
            gpu=KCFG["gpu"],
            runtime=KCFG["runtime"],
        script:
            "../workflow/scripts/kernel_shard.py"

    rule kernel_merge:
        input:
            shards=lambda w: [p for s in SPLITS for f in KFORMULAS for p in kernel_shard_files(w, f, s)],
            f0=lambda w: [KSHARD.format(**dict(w.items()), split=s, row=0, col=c) + "/f0.pt"
                          for s in SPLITS for c in range(col_shards(KCFG, s))],
        output:
            kernels=[kernel_file(KDIR, f, "{prompt}", s) for s in SPLITS for f in KFORMULAS],
            f0=[kernel_file(KDIR, "f0", "{prompt}", s) for s in SPLITS],
        wildcard_constraints:
            **KWILDCARDS,
        params:
            formulas=KFORMULAS,
            grid={s: [KCFG["row_shards"], col_shards(KCFG, s)] for s in SPLITS},
        log:
            "logs/kernel_merge/{model}/{task}/{k}-{seed}/{prompt}.log",
        benchmark:
            "benchmarks/kernel_merge/{model}/{task}/{k}-{seed}/{prompt}.tsv"
        resources:
            mem_mb=2000,
        script:
            "../workflow/scripts/kernel_merge.py"


KSOLVE = kernel_solve_dir(RESULTS, "{model}", "{task}", "{k}", "{seed}")


def kernel_solve_input(w, solve):
    """The kernel files of every split (and f0 when one of the rule's solvers adjusts for it) of ``w``'s kernel,
    and for a computed kernel the k-shot test table whose rows its test columns are."""
    fill = dict(w.items())
    files = {s: kernel_file(KSRC, solve.formula, "{prompt}", s).format(**fill) for s in SPLITS}
    if not KCFG["published_dir"]:
        files["test_split"] = kshot_split(DATA, w.task, w.k, w.seed, "test")
    if any(KCFG["solvers"][s]["f0_scaling"] is not None for s in solve.solvers):
        files |= {f"f0_{s}": kernel_file(KSRC, "f0", "{prompt}", s).format(**fill) for s in SPLITS}
    return files


for solve in solve_rules(KCFG):

    rule:
        name:
            solve.name
        input:
            unpack(lambda w, solve=solve: kernel_solve_input(w, solve)),
        output:
            metrics=[kernel_solve_metrics(KSOLVE, solve.formula, "{prompt}", s) for s in solve.solvers],
            predictions=[kernel_solve_predictions(KSOLVE, solve.formula, "{prompt}", s) for s in solve.solvers],
        wildcard_constraints:
            **KWILDCARDS,
        params:
            formula=lambda w, solve=solve: solve.formula.format(**dict(w.items())),
            solvers={s: KCFG["solvers"][s] for s in solve.solvers},
            kernel=lambda w: kernel_info(KCFG, w.prompt),
            task=lambda w: PLAN.task_config(w.task),
        log:
            f"logs/kernel_solve/{{model}}/{{task}}/{{k}}-{{seed}}/{solve.run}.log",
        benchmark:
            f"benchmarks/kernel_solve/{{model}}/{{task}}/{{k}}-{{seed}}/{solve.run}.tsv"
        resources:
            mem_mb=2000,
        script:
            "../workflow/scripts/kernel_solve.py"
