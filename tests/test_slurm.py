"""The workflow through a real one-node SLURM (started on this machine), equal to a local run.

Needs root (it installs Debian's slurm/munge/mariadb packages if missing and starts the daemons
with tests/slurm/setup_slurm.sh). Skipped when not root or when the packages cannot be installed;
`LMFT_SKIP_SLURM=1` skips it on purpose.
"""

import os
import shutil
import subprocess

import pandas as pd
import pytest

from test_workflow_data import tiny_config, write_task
from tiny import save_tiny_hf_dir
from workflow_utils import ROOT, snakemake, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]


@pytest.fixture(scope="module")
def slurm():
    if os.environ.get("LMFT_SKIP_SLURM") == "1":
        pytest.skip("LMFT_SKIP_SLURM=1")
    if os.geteuid() != 0:
        pytest.skip("needs root to start a one-node SLURM (set LMFT_SKIP_SLURM=1 to silence)")
    if not (shutil.which("apt-get") or shutil.which("sbatch")):
        pytest.skip("neither apt-get nor sbatch: cannot start SLURM here")
    out = subprocess.run(["bash", str(ROOT / "tests/slurm/setup_slurm.sh")], capture_output=True, text=True,
                         timeout=900)
    if out.returncode in (2, 3):
        pytest.skip(f"SLURM unavailable: {out.stderr.strip()[-500:]}")
    assert out.returncode == 0, f"setup_slurm.sh failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def job_ids(workdir):
    """SLURM job ids Snakemake submitted, from its log of this run."""
    logs = sorted((workdir / ".snakemake/log").glob("*.snakemake.log"))
    text = logs[-1].read_text()
    return sorted({int(tok) for line in text.splitlines() if "SLURM jobid" in line or "SLURM run ID" in line
                   for tok in line.replace(",", " ").replace(")", " ").split() if tok.isdigit()})


def test_data_and_finetune_stages_through_slurm_equal_local(slurm, tmp_path):
    """download, kshot, prepare_model and a fine-tuning job (a GPU rule in the profile: the test
    cluster's stand-in GPUs schedule it, it runs on the CPU) through sbatch, equal to a local run."""
    model_dir = save_tiny_hf_dir(tmp_path / "model", "bert")
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    for workdir in (local, cluster):
        workdir.mkdir()
        write_task(workdir, "alpha")
        write_config(workdir, tiny_config(workdir, ["alpha"]) | {
            "models": {"tiny": {"source": str(model_dir)}}, "kshot": {"k": [4], "seeds": [13], "test_cap": 5},
            "finetune": {"device": "cpu", "methods": {"zeroshot": {"type": "zeroshot"}}}})
    snakemake(local)
    snakemake(cluster, "--profile", str(ROOT / "profiles/slurm"), "--jobs", "4", "--retries", "0", *FAST_STATUS)

    ids = job_ids(cluster)
    assert len(ids) >= 4, "expected download, kshot, prepare_model and finetune to go through sbatch"
    states = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", ",".join(map(str, ids))],
                            capture_output=True, text=True, check=True).stdout.split()
    assert states and set(states) == {"COMPLETED"}, states
    for split in ("train", "dev", "test"):
        rel = f"data/kshot/alpha/4-13/{split}.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(local / rel), pd.read_parquet(cluster / rel))
    rel = "results/finetune/tiny/alpha/4-13/zeroshot/predictions.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(local / rel), pd.read_parquet(cluster / rel))
