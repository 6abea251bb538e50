"""Per-stage wall time and peak memory from Snakemake's ``benchmark:`` files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from lmft.io import ArtifactError


def stage_table(root: str | Path = "benchmarks") -> pd.DataFrame:
    """One row per stage (the first folder under ``root``): jobs, summed and longest wall time, peak RSS.

    Snakemake writes one TSV per job with columns ``s`` (wall seconds) and ``max_rss`` (MB).
    """
    rows = []
    for path in sorted(Path(root).rglob("*.tsv")):
        try:
            df = pd.read_csv(path, sep="\t")
            s, rss = float(df["s"].iloc[0]), pd.to_numeric(df["max_rss"], errors="coerce").iloc[0]
        except Exception as e:
            raise ArtifactError(f"{path}: not a Snakemake benchmark file ({e})") from e
        rel = path.relative_to(root)
        stage = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        rows.append({"stage": stage, "s": s, "max_rss_mb": rss})
    if not rows:
        raise ArtifactError(f"{root}: no benchmark files; run the workflow first")
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("stage").agg(jobs=("s", "size"), total_s=("s", "sum"), longest_s=("s", "max"),
                                      peak_rss_mb=("max_rss_mb", "max")).reset_index()
    return table.sort_values("total_s", ascending=False).reset_index(drop=True)


def run_worker(cmd: list[str], what: str) -> dict[str, Any]:
    """Run a benchmark worker (``cmd``) in a process of its own; returns the JSON of its last stdout line.

    A fixed mmap threshold (glibc's default value, but no longer raised as big blocks are freed):
    large tensors are mapped and unmapped, so each worker's peak shows in its resident set.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {what} worker failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])
