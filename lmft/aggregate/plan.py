"""The aggregate stage's part of the plan (:mod:`lmft.plan`): what it reads from the stages' runs, which
topics it writes, and its settings.

Every key of ``aggregate:`` and its default is in the config schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmft.aggregate.topics import output_files
from lmft.paths import evidence_files, plots_dir, runs_table, tables_dir


def curves(metrics: Mapping[str, list[str]]) -> list[str]:
    """The interpolation curves, which the interpolate jobs write beside their metrics.json (``metrics``:
    stage -> the metrics.json files of its runs)."""
    return [str(Path(p).with_name("curve.parquet")) for p in metrics.get("interpolate", [])]


def evidence(metrics: Mapping[str, list[str]]) -> list[str]:
    """The per-example files beside the runs' metrics that the findings compare pairwise."""
    return sorted({f for stage, files in metrics.items() for m in files for f in evidence_files(m, stage)})


def aggregate_files(results: str, topics: list[str]) -> dict[str, str]:
    """The aggregate's outputs by name: ``runs`` (the table of every run), each topic's tables and plots."""
    return {"runs": runs_table(results), **output_files(tables_dir(results), plots_dir(results), topics)}


def aggregate_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the tables depend on besides the runs (the aggregate rule's params): display names and the
    order of the tasks."""
    return {"labels": dict(config["aggregate"]["labels"]), "task_order": list(config["tasks"])}
