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


ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """The command line of :func:`snakemake`: the repo's Snakefile on ``workdir``, 2 cores, then ``args``
    (targets may come first: ``--cores`` ends the list of ``--rerun-triggers``)."""
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), "--rerun-triggers", "mtime", "params", "input", "code",
            "--cores", "2", *args]


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run ``snakemake`` on the repo's Snakefile with ``workdir/config.yaml``."""
    proc = subprocess.run(snakemake_command(workdir, *args), capture_output=True, text=True, env=ENV, timeout=timeout)
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
