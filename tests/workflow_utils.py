"""Run the workflow from tests: Snakemake in a subprocess on a scratch directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run ``snakemake`` on the repo's Snakefile with ``workdir/config.yaml``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2",
           "--rerun-triggers", "mtime", "params", "input", "code", *args]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def planned_jobs(workdir: Path, *args: str) -> list[tuple[str, str]]:
    """The jobs a dry-run plans, as sorted (rule, wildcards) pairs; ``all`` is left out."""
    out = snakemake(workdir, "-n", *args)
    text = out.stdout + out.stderr
    jobs, rule = [], None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\S+):$", line.strip())
        if m:
            rule = m.group(1)
            if rule != "all":
                jobs.append([rule, ""])
            continue
        m = re.match(r"^wildcards: (.*)$", line.strip())
        if m and rule != "all" and jobs:
            jobs[-1][1] = m.group(1)
    return sorted((r, w) for r, w in jobs)
