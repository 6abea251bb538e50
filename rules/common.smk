# Shared helpers of the rules: config checks, task parameters, and the list of all targets.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))  # lmft importable even without `pip install -e .`

from lmft.config import check_config
from lmft.tasks import get_task

check_config(config)

DATA = config["data_dir"]
RESULTS = config["results_dir"]
TASKS = config["tasks"]
KS = config["kshot"]["k"]
SEEDS = config["kshot"]["seeds"]

wildcard_constraints:
    task=r"[A-Za-z0-9_.\-]+",
    k=r"\d+",
    seed=r"\d+",
    model=r"[A-Za-z0-9_.\-]+",
    method=r"[A-Za-z0-9_.:\-]+",


def task_config(task):
    """The part of the config that defines one task: its change reruns that task's jobs only."""
    entry = {"user_tasks": {}, "task_overrides": {}}
    if task in (config.get("user_tasks") or {}):
        entry["user_tasks"][task] = config["user_tasks"][task]
    if task in (config.get("task_overrides") or {}):
        entry["task_overrides"][task] = config["task_overrides"][task]
    if get_task(task, config).source.get("kind") == "snli":
        entry["snli_source"] = config.get("snli_source", "auto")
    return entry


# Each rules file appends its stage's targets, and only when its config section is present, so a
# config without e.g. `kernels:` runs no kernel jobs.
TARGETS = []

# stage -> the metrics.json files of its runs; rules/aggregate.smk (included last) gathers them all.
METRICS = {}


def register_metrics(stage, files):
    """Register a stage's metrics.json files (stage: finetune, kernel, graft or interpolate)."""
    METRICS.setdefault(stage, []).extend(files)


def all_targets():
    return TARGETS
