# Last stage: every planned run's metrics.json -> runs.parquet, paper tables, the findings (each
# paper's claims against this run) and plots (HTML tables and PNG plots go into `snakemake --report`).
from lmft.aggregate.topics import TOPICS
from lmft.paths import plots_dir, tables_dir


def aggregate_outputs():
    """The aggregate's files with each topic's HTML table and PNG plot marked for the report."""
    out = {}
    for name, path in PLAN.aggregate_files.items():
        if name.endswith(("_html", "_png")):
            topic = name.split("_")[0]
            kind = "Plot" if "_plot_" in name else "Table"
            path = report(path, caption=f"../workflow/report/{topic}.rst", category=TOPICS[topic].category,
                          subcategory=kind, labels={"result": TOPICS[topic].title, "kind": kind.lower()})
        out[name] = path
    return out


rule aggregate:
    input:
        metrics=sorted({f for files in PLAN.metrics.values() for f in files}),
        curves=PLAN.curves,
        zo_curves=PLAN.zo_curves,  # the zeroth-order runs' curves: accuracy against forward passes
        evidence=PLAN.evidence,  # per-example predictions and losses: the findings' paired intervals
    output:
        **aggregate_outputs(),
    params:
        topics=PLAN.topics,
        tables_dir=tables_dir(RESULTS),
        plots_dir=plots_dir(RESULTS),
        labels=PLAN.aggregate_settings["labels"],
        task_order=PLAN.aggregate_settings["task_order"],
        # which interpolate pairs are pre-trained -> fine-tuned and seed -> seed: their metrics do not say
        pair_kinds=PLAN.pair_kinds,
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/aggregate.tsv"
    resources:
        mem_mb=2000,
    script:
        "../workflow/scripts/aggregate.py"
