"""The per-stage benchmark table, and the decoding benchmark's agreement check."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmft.aggregate.benchmarks import stage_table
from lmft.io import ArtifactError

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_stage_table(tmp_path):
    for rel, s, rss in [("kshot/a/16-13.tsv", 1.5, 100), ("kshot/b/16-13.tsv", 2.5, 300), ("aggregate.tsv", 4.0, 50)]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + f"{s}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t0\t1\n")
    table = stage_table(tmp_path).set_index("stage")
    assert table.loc["kshot", "jobs"] == 2 and table.loc["kshot", "total_s"] == 4.0
    assert table.loc["kshot", "peak_rss_mb"] == 300 and table.loc["aggregate", "longest_s"] == 4.0


def test_stage_table_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no benchmark files"):
        stage_table(tmp_path)
    (tmp_path / "x.tsv").write_text("garbage")
    with pytest.raises(ArtifactError, match="x.tsv: not a Snakemake benchmark file"):
        stage_table(tmp_path)


def test_decode_bench_agrees_with_generate_and_no_cache():
    """bench/decode.py on a one-layer model: the three decoders give the same tokens, and it prints the ratios."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "bench" / "decode.py"), "--layers", "1", "--batch", "2",
                           "--prompt", "8", "--new", "3", "--repeat", "1"], capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(root), "TQDM_DISABLE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert "same tokens: True" in lines[0]
    assert re.fullmatch(r"no-cache / lmft = \d+\.\d\dx; lmft / generate = \d+\.\d\dx", lines[-1])


def test_bench_stages_reads_a_run_folder_and_its_log(tmp_path):
    """``python bench/stages.py RUN``: the run folder's benchmarks/ (not its data's .tsv files) and its log."""
    run = tmp_path / "paper-proxy"
    for rel, text in [("benchmarks/kshot/a/4-13.tsv", HEADER + "2.0\t0:00:02\t100\t0\t0\t0\t0\t0\t0\t1.0\n"),
                      ("data/raw/CoLA/dev.tsv", "a\tb\n"), (".snakemake/log/x.snakemake.log", "Elapsed time: 0:01:02\n")]:
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "bench/stages.py"), str(run)], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)}, check=True).stdout
    assert "sum of job wall times: 2 s over 1 jobs" in out and "wall time of the last run (x.snakemake.log): 0:01:02" in out
