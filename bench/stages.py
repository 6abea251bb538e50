"""Wall time and peak memory of each stage of the last run, from Snakemake's benchmark files.

    python bench/stages.py [benchmarks/ | a run folder, e.g. paper-proxy/]

Jobs run in parallel, so the summed job time exceeds the run's wall time (printed from the
Snakemake log when there is one).
"""

import re
import sys
from pathlib import Path

from lmft.aggregate.benchmarks import stage_table


def main(root: str = "benchmarks") -> None:
    folder = Path(root)
    if (folder / "benchmarks").is_dir():  # a run folder (Snakemake's --directory): its benchmarks/ and log
        folder = folder / "benchmarks"
    table = stage_table(folder)
    print(table.to_markdown(index=False, floatfmt=".1f"))
    print(f"\nsum of job wall times: {table['total_s'].sum():.0f} s over {table['jobs'].sum()} jobs")
    logs = sorted((folder.parent / ".snakemake/log").glob("*.snakemake.log"))
    if logs:
        m = re.search(r"Elapsed time: ([0-9:.]+)", logs[-1].read_text())  # printed by recent Snakemake
        if m:
            print(f"wall time of the last run ({logs[-1].name}): {m.group(1)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
