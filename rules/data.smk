# Stage 1-2: raw data of each task, then LM-BFF k-shot splits (k per label) of classification tasks
# and k-example splits of generation tasks, in the same paths.

from lmft.data.raw import RAW_FORMAT
from lmft.paths import kshot_files, one_of


rule download_lmbff:
    output:
        directory(f"{DATA}/raw/_lmbff/original"),
    params:
        archive=f"{DATA}/raw/_downloads/datasets.tar",
    log:
        "logs/download/_lmbff.log",
    benchmark:
        "benchmarks/download/_lmbff.tsv"
    resources:
        mem_mb=2000,
    script:
        "../workflow/scripts/download_lmbff.py"


rule download:
    input:
        lambda w: PLAN.raw_inputs(w.task),
    output:
        train=f"{DATA}/raw/{{task}}/train.parquet",
        test=f"{DATA}/raw/{{task}}/test.parquet",
        source=f"{DATA}/raw/{{task}}/source.json",
    params:
        config=lambda w: PLAN.task_config(w.task),
        data_dir=DATA,
        raw_format=RAW_FORMAT,
    log:
        "logs/download/{task}.log",
    benchmark:
        "benchmarks/download/{task}.tsv"
    resources:
        mem_mb=4000,
    script:
        "../workflow/scripts/download.py"


rule kshot:
    input:
        train=rules.download.output.train,
        test=rules.download.output.test,
        source=rules.download.output.source,
    output:
        **kshot_files(DATA, "{task}", "{k}", "{seed}"),
    params:
        # test_cap, and test_balance as a per-task bool: a change reruns only the tasks it flips
        settings=lambda w: PLAN.kshot_settings(w.task),
    log:
        "logs/kshot/{task}/{k}-{seed}.log",
    benchmark:
        "benchmarks/kshot/{task}/{k}-{seed}.tsv"
    resources:
        mem_mb=2000,
    script:
        "../workflow/scripts/kshot.py"


# A rule of its own, so that the classification rule (its params and script) stays as it is: for a
# generation task both rules match, and the ruleorder picks this one.
rule kshot_examples:
    input:
        train=rules.download.output.train,
        test=rules.download.output.test,
    output:
        **kshot_files(DATA, "{task}", "{k}", "{seed}"),
    wildcard_constraints:
        task=one_of(PLAN.generation_tasks),
    params:
        test_cap=lambda w: PLAN.kshot_settings(w.task)["test_cap"],
    log:
        "logs/kshot/{task}/{k}-{seed}.log",
    benchmark:
        "benchmarks/kshot/{task}/{k}-{seed}.tsv"
    resources:
        mem_mb=2000,
    script:
        "../workflow/scripts/kshot_examples.py"


ruleorder: kshot_examples > kshot
