"""The paper grid at proxy scale (``make paper-proxy``, issue 18): config/paper.yaml with config/paper-proxy.yaml
runs offline end to end, executes every job shape of the grid and writes the grid's tables, plots and findings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from workflow_utils import ENV

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parent.parent


def test_every_job_shape_of_the_paper_grid_runs_offline(tmp_path):
    work = tmp_path / "paper-proxy"
    cmd = [sys.executable, "-m", "lmft.aggregate.proxy", "run", str(work), "--cores", "2", "--quiet", "rules"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    m = re.search(r"^paper job shapes executed: (\d+) of (\d+)$", proc.stdout, re.M)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) > 150, out[-3000:]
    tables = work / "results/tables"
    assert (tables / "findings.md").read_text().strip()
    for name in ("main", "generation", "kernel_vs_ft", "graft", "interpolate"):
        assert (tables / f"{name}.csv").is_file(), name
    runs = pd.read_parquet(tables / "runs.parquet")
    assert {"finetune", "kernel", "graft", "interpolate"} <= set(runs["stage"])
    assert set(runs["task"]) >= {"sst-2", "sst-5", "mrpc", "mnli", "amazon-5", "xsum", "babi"}
