"""Time to plan (dry-run) the paper grid, and its number of jobs, with no network.

    python bench/plan.py [config/paper.yaml]
"""

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(configfile: str = "config/paper.yaml") -> None:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(ROOT), "--configfile",
           configfile, "-n", "--quiet", "rules", "--cores", "1"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    elapsed = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"dry-run failed:\n{out.stderr[-3000:]}")
    text = out.stdout + out.stderr
    m = re.search(r"^total\s+(\d+)", text, re.M)
    print(text[text.find("Job stats"):].strip() if "Job stats" in text else text[-2000:])
    print(f"\nplanned {m.group(1) if m else '?'} jobs of {configfile} in {elapsed:.1f} s (dry-run, offline)")


if __name__ == "__main__":
    main(*sys.argv[1:])
