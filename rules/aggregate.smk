# Last stage: every registered run's metrics.json -> runs.parquet, paper tables, the findings (each
# paper's claims against this run) and plots (HTML tables and PNG plots go into `snakemake --report`).
# Include this file after every stage's rules file: it reads what they registered in METRICS (rules/common.smk).
from lmft.interpolate_plan import pair_kinds
from lmft.paths import plots_dir, tables_dir
from lmft.topics import TOPIC_FILES, output_files, topics_for

AGG_TOPICS = topics_for(s for s, files in METRICS.items() if files)
AGG_TABLES = tables_dir(RESULTS)
AGG_PLOTS = plots_dir(RESULTS)
# category of each topic in the report, and its caption (workflow/report/{topic}.rst)
AGG_CATEGORY = {"main": "Main results", "kernel": "Kernel vs fine-tuning", "graft": "Grafting",
                "interpolate": "Mode connectivity", "findings": "Findings"}
AGG_FILES = {"runs": f"{AGG_TABLES}/runs.parquet", **output_files(AGG_TABLES, AGG_PLOTS, AGG_TOPICS)}


def aggregate_outputs():
    """AGG_FILES with each topic's HTML table and PNG plot marked for the report."""
    out = {}
    for name, path in AGG_FILES.items():
        if name.endswith(("_html", "_png")):
            topic = name.split("_")[0]
            kind = "Plot" if "_plot_" in name else "Table"
            path = report(path, caption=f"../workflow/report/{topic}.rst", category=AGG_CATEGORY[topic],
                          subcategory=kind, labels={"result": TOPIC_FILES[topic][2], "kind": kind.lower()})
        out[name] = path
    return out


def aggregate_curves():
    """The interpolation curves, which the interpolate stage writes beside each metrics.json."""
    return [str(Path(p).with_name("curve.parquet")) for p in METRICS.get("interpolate", [])]


rule aggregate:
    input:
        metrics=sorted({f for files in METRICS.values() for f in files}),
        curves=aggregate_curves(),
    output:
        **aggregate_outputs(),
    params:
        topics=AGG_TOPICS,
        tables_dir=AGG_TABLES,
        plots_dir=AGG_PLOTS,
        labels=(config.get("aggregate") or {}).get("labels", {}),
        task_order=TASKS,
        # which interpolate pairs are pre-trained -> fine-tuned and seed -> seed: their metrics do not say
        pair_kinds=pair_kinds(config),
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/aggregate.tsv"
    resources:
        mem_mb=2000,
    script:
        "../workflow/scripts/aggregate.py"


if AGG_TOPICS:
    TARGETS.extend(AGG_FILES.values())
