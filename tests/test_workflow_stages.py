"""Every stage through Snakemake on a tiny model: fine-tuning, grafting, interpolation, kernels and
the tables; exact rerun plans after a change; kill -9 and rerun; corrupt artifacts; byte-identical
tables from two runs from scratch."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from tiny import SENTENCES, save_tiny_hf_dir
from workflow_utils import ENV, planned_jobs, snakemake, snakemake_command, write_config

pytestmark = pytest.mark.workflow

TASKS = ("alpha", "beta")
SEEDS = (13, 21)
SPARSITIES = (1e-4, 0.1)  # the paper's ~0.01% keeps at least one entry of a tiny model
TRAIN = {"steps": 4, "eval_every": 2, "batch_size": 4}
VOLATILE = {"wall_time_s", "peak_mem_mb", "resumed_from", "train_s"}


def write_task(root: Path, name: str, salt: str = "") -> None:
    """A two-class CSV of the tiny tokenizer's words (20 rows per label)."""
    rows = [(f"{text}{salt}", "pos" if label == "1" else "neg") for text, label in SENTENCES] * 4
    if name == "beta":
        rows = [(f"it was {text}", label) for text, label in rows]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(root / f"{name}.csv", index=False)


def stage_config(data: Path, model_dir: Path) -> dict:
    return {
        "models": {"tiny": {"source": str(model_dir)}},
        "tasks": list(TASKS),
        "user_tasks": {t: {"path": str(data / f"{t}.csv"), "text_columns": ["text"], "label_column": "label",
                           "label_words": {"neg": "terrible", "pos": "great"}} for t in TASKS},
        "kshot": {"k": [4], "seeds": list(SEEDS), "test_cap": 8},
        "finetune": {"methods": {
            "zeroshot": {"type": "zeroshot"},
            "ft": {"type": "ft", "lr": 1e-3, "save_steps": [2], **TRAIN},
            "ft-s2": {"type": "ft", "lr": 1e-3, "model_seed": 1, **TRAIN},
            "mezo": {"type": "mezo", "lr": 1e-3, "eps": 1e-3, "save_every": 2, **TRAIN},
        }},
        "graft": {"methods": {"ft": {}}, "sparsities": list(SPARSITIES), "epochs": 2,
                  "ood": {"alpha": ["beta"], "beta": ["alpha"]}},
        "interpolate": {"points": 3, "pairs": {
            "pretrained-ft": {"a": {"method": "ft", "pretrained": True}, "b": {"method": "ft"}},
            "seed-seed": {"a": {"method": "ft"}, "b": {"method": "ft-s2"}},
            "step2-best": {"a": {"method": "ft", "step": 2}, "b": {"method": "ft"}},
            "alpha-beta": {"a": {"method": "ft", "task": "alpha"}, "b": {"method": "ft", "task": "beta"},
                           "tasks": ["alpha", "beta"]},
        }},
        "kernels": {"formulas": ["sgd"], "prompt": ["prompt"], "binary": True, "mode": "bias", "row_batch": 4,
                    "col_batch": 4, "solvers": ["lstsq"]},
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tasks' CSVs and the tiny model, shared by every work directory of this module."""
    data = tmp_path_factory.mktemp("inputs")
    for name in TASKS:
        write_task(data, name)
    return data, save_tiny_hf_dir(data / "model", "bert")


def new_workdir(tmp_path_factory, inputs, name: str, **changes) -> Path:
    work = tmp_path_factory.mktemp(name)
    write_config(work, stage_config(*inputs) | changes)
    return work


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, inputs):
    work = new_workdir(tmp_path_factory, inputs, "stages")
    plan = planned_jobs(work)
    snakemake(work)
    return work, plan


def test_every_stage_writes_its_outputs(full_run):
    work, plan = full_run
    rules = {r for r, _ in plan}
    assert {"finetune", "graft_reference", "graft", "mask_overlap_tasks", "mask_overlap_seeds", "interpolate",
            "kernel_shard", "kernel_solve", "aggregate"} <= rules
    assert len([w for r, w in plan if r == "finetune"]) == 4 * len(TASKS) * len(SEEDS)
    assert len([w for r, w in plan if r == "graft"]) == len(TASKS) * len(SEEDS) * len(SPARSITIES)
    assert len([w for r, w in plan if r == "graft_reference"]) == len(TASKS) * len(SEEDS)  # one per run
    assert len([w for r, w in plan if r == "interpolate"]) == 8  # 3 pairs x 2 tasks + alpha-beta on 2 tasks
    res = work / "results"
    for task in TASKS:
        m = json.loads((res / f"finetune/tiny/{task}/4-13/ft/metrics.json").read_text())
        assert (m["steps"], m["n_test"]) == (4, 8) and 0 <= m["test_metric"] <= 1
        assert (res / f"finetune/tiny/{task}/4-13/ft/steps/step-2.safetensors").exists()
        g = json.loads((res / f"graft/tiny/{task}/4-21/ft/sparsity-0.1/metrics.json").read_text())
        other = "beta" if task == "alpha" else "alpha"
        assert g["count"] == round(0.1 * g["n_graftable"]) and set(g["ood"]) == {other}
        small = json.loads((res / f"graft/tiny/{task}/4-21/ft/sparsity-0.0001/metrics.json").read_text())
        assert small["count"] >= 1 and small["relax_epochs"] == 2
        ref = json.loads((res / f"graft/tiny/{task}/4-21/ft/reference/metrics.json").read_text())
        assert (g["pre_test_metric"], g["ft_test_metric"]) == (ref["pre_test_metric"], ref["ft_test_metric"])
        assert g["ood"][other]["ft"] == ref["ood"][other]["ft"] and 0 <= g["mask_moved"] <= 1
        for folder, models in (("reference", {"pre", "ft"}), ("sparsity-0.1", {"graft"})):
            preds = pd.read_parquet(res / f"graft/tiny/{task}/4-21/ft/{folder}/predictions.parquet")
            assert set(preds["model"]) == models and set(preds["split"]) == {"test", f"ood:{other}"}
        curve = pd.read_parquet(res / f"interpolate/tiny/{task}/seed-seed/curve.parquet")
        assert sorted(curve["alpha"].unique()) == [0.0, 0.5, 1.0]
        assert (res / f"interpolate/tiny/{task}/alpha-beta/plot.png").stat().st_size > 1000
        losses = pd.read_parquet(res / f"interpolate/tiny/{task}/seed-seed/losses.parquet")
        assert list(losses.columns) == ["alpha", "split", "index", "loss", "correct"]
        assert set(losses["split"]) == {"dev", "test"} and len(losses) == 3 * (8 + 8)
        i = json.loads((res / f"interpolate/tiny/{task}/seed-seed/metrics.json").read_text())
        assert i["relative_to"] == "a" and i["relative_distance"] == pytest.approx(i["distance_ab"] / i["distance_a0"])
    runs = pd.read_parquet(res / "tables/runs.parquet")
    assert set(runs["stage"]) == {"finetune", "graft", "interpolate", "kernel"}
    for name in ("main.csv", "main.md", "main.tex", "graft.csv", "interpolate.csv", "kernel_vs_ft.csv",
                 "zo_forward_passes.csv"):
        assert (res / "tables" / name).stat().st_size > 0, name
    assert (res / "plots/zo_forward_passes.png").stat().st_size > 5000  # the mezo method's curves
    zo = pd.read_csv(res / "tables/zo_forward_passes.csv", dtype=str).query("task == 'alpha'").set_index("method")
    assert zo.loc["mezo", "passes"] == "8 (0)" and zo.loc["mezo", "pass"] == "forward"  # 4 steps x 2 passes
    assert planned_jobs(work) == []  # nothing changed: nothing to do


def affected(plan, *, tasks=(), methods=()):
    """The jobs of ``plan`` whose wildcards name one of the tasks or methods, plus the aggregate."""
    def hit(wildcards: str) -> bool:
        w = dict(part.split("=", 1) for part in wildcards.split(", ") if "=" in part)
        return w.get("task") in tasks or w.get("method") in methods
    return sorted({(r, w) for r, w in plan if hit(w)} | {("aggregate", "")})


def test_changing_one_method_reruns_only_its_jobs(full_run, inputs):
    work, plan = full_run
    cfg = stage_config(*inputs)
    cfg["finetune"]["methods"]["mezo"]["lr"] = 2e-3
    write_config(work, cfg)
    try:
        assert planned_jobs(work) == affected(plan, methods={"mezo"})
    finally:
        write_config(work, stage_config(*inputs))
    assert planned_jobs(work) == []


def test_grid_runs_each_trial_and_keeps_the_best_dev_trial_per_seed(tmp_path_factory, inputs):
    """A method with a list of lr: one run directory per trial, the tables' pick, a one-value change, and
    grafting refusing the grid at planning time."""
    def config(lrs, **sections):
        base = {k: v for k, v in stage_config(*inputs).items() if k not in ("graft", "interpolate", "kernels")}
        grid = {"type": "ft", "lr": lrs, **TRAIN}
        return base | {"finetune": {"methods": {"zeroshot": {"type": "zeroshot"}, "ft": grid}}} | sections

    work = tmp_path_factory.mktemp("grid")
    write_config(work, config([1e-3, 1e-2]))
    snakemake(work)
    res = work / "results"
    for task in TASKS:
        for seed in SEEDS:
            assert (res / f"finetune/tiny/{task}/4-{seed}/zeroshot/metrics.json").exists()  # plain path
            for lr in (1e-3, 1e-2):
                m = json.loads((res / f"finetune/tiny/{task}/4-{seed}/ft~lr-{lr}/metrics.json").read_text())
                assert (m["method"], m["trial"], m["hparams"]["lr"]) == ("ft", f"ft~lr-{lr}", lr)
    runs = pd.read_parquet(res / "tables/runs.parquet")
    ft = runs[runs["method"] == "ft"]
    assert len(ft) == 2 * len(TASKS) * len(SEEDS)
    for _, trials in ft.groupby(["task", "seed"]):
        assert trials["selected"].sum() == 1
        assert trials.loc[trials["selected"], "dev_metric"].iloc[0] == trials["dev_metric"].max()

    write_config(work, config([1e-3, 3e-2]))  # one value changed: only its trials run, then the tables
    jobs = planned_jobs(work)
    assert sorted({r for r, _ in jobs}) == ["aggregate", "finetune"]
    assert sorted(w.split("method=")[1] for r, w in jobs if r == "finetune") == ["ft~lr-0.03"] * 4

    write_config(work, config([1e-3, 1e-2], graft={"methods": {"ft": {}}, "sparsities": [0.1]}))
    proc = snakemake(work, "-n", check=False)
    assert proc.returncode != 0
    assert "graft.methods reads finetune method 'ft', a grid over lr" in proc.stdout + proc.stderr


@pytest.mark.parametrize("change", ["data", "config"])
def test_changing_one_task_reruns_its_jobs_and_those_reading_it(full_run, inputs, change):
    work, plan = full_run
    data, _ = inputs
    csv = data / "beta.csv"
    saved, mtime = csv.read_bytes(), csv.stat().st_mtime_ns
    cfg = stage_config(*inputs)
    if change == "data":
        write_task(data, "beta", salt=" indeed")
    else:
        cfg["user_tasks"]["beta"]["label_words"] = {"neg": "bad", "pos": "good"}
    write_config(work, cfg)
    try:
        jobs = planned_jobs(work)
    finally:
        csv.write_bytes(saved)
        os.utime(csv, ns=(mtime, mtime))
        write_config(work, stage_config(*inputs))
    # beta's own jobs, alpha's grafts and their reference (scored out of distribution on beta), so every mask overlap,
    # and alpha's alpha-beta curve (its b end is a beta run); alpha's fine-tuning, kernels and data stay
    expected = affected(plan, tasks={"beta"})
    expected += [(r, w) for r, w in plan if r in ("graft", "graft_reference") and "task=alpha" in w]
    expected += [(r, w) for r, w in plan if r.startswith("mask_overlap")]
    expected += [(r, w) for r, w in plan if r == "interpolate" and w == "model=tiny, task=alpha, pair=alpha-beta"]
    assert jobs == sorted(set(expected))
    assert ("download", "task=alpha") not in jobs and ("download", "task=beta") in jobs
    assert planned_jobs(work) == []


def test_same_config_from_scratch_gives_byte_identical_tables(full_run, tmp_path_factory, inputs):
    work, _ = full_run
    again = new_workdir(tmp_path_factory, inputs, "again")
    snakemake(again)
    tables = sorted(p.name for p in (work / "results/tables").iterdir()
                    if p.suffix in (".csv", ".md", ".tex", ".html") and p.stem != "findings")
    assert len(tables) >= 12
    match, mismatch, errors = filecmp.cmpfiles(work / "results/tables", again / "results/tables", tables, shallow=False)
    assert mismatch == [] and errors == [], mismatch + errors
    # the findings quote peak memory (a measurement, like wall time): equal but for those numbers
    a, b = (pd.read_csv(w / "results/tables/findings.csv") for w in (work, again))
    memory = a["claim"].str.contains("memory")
    assert memory.any() and (a["claim"] == b["claim"]).all()
    pd.testing.assert_frame_equal(a[~memory], b[~memory])
    assert a.loc[memory, "verdict"].tolist() == b.loc[memory, "verdict"].tolist()


def _kill_when(work: Path, target: str, ready, whole: bool) -> None:
    """Start Snakemake on ``target`` and kill -9, once ``ready()``, the job's process (as the OOM
    killer would; Snakemake sees the job fail and exits) or, ``whole``, Snakemake with it (as a
    power loss would), then wait for Snakemake to end."""
    import psutil

    with open(work / "killed-run.log", "w") as out:
        proc = subprocess.Popen(snakemake_command(work, target), env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the job ended or stalled before it could be killed:\n{(work / 'killed-run.log').read_text()[-3000:]}")
            time.sleep(0.05)
        if whole:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            jobs = [p for p in psutil.Process(proc.pid).children(recursive=True)
                    if any(".snakemake/scripts/" in part for part in p.cmdline())]
            assert jobs, "no job process to kill"
            for job in jobs:
                job.kill()
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_killed_finetune_job_resumes_to_the_same_numbers(tmp_path_factory, inputs):
    long = {"type": "mezo", "lr": 1e-3, "eps": 1e-3, "steps": 1000, "eval_every": 500, "batch_size": 4,
            "save_every": 50}
    work = new_workdir(tmp_path_factory, inputs, "kill-ft", finetune={"methods": {"long": long}},
                       graft={"methods": {}}, interpolate={"pairs": {}}, kernels={"solvers": ["lstsq"]})
    target = "results/finetune/tiny/alpha/4-13/long/metrics.json"
    run = (work / target).parent
    _kill_when(work, target, lambda: (run / "resume.pt").exists(), whole=False)
    assert not (run / "metrics.json").exists() and not (run / "model.safetensors").exists()
    snakemake(work, target)  # a plain rerun: nothing half-written stands in the way
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["resumed_from"] > 0 and not (run / "resume.pt").exists()

    snakemake(work, "fresh/finetune/tiny/alpha/4-13/long/metrics.json", "--config", "results_dir=fresh")
    fresh = json.loads((work / "fresh/finetune/tiny/alpha/4-13/long/metrics.json").read_text())
    assert fresh["resumed_from"] == 0
    assert {k: v for k, v in resumed.items() if k not in VOLATILE} == {k: v for k, v in fresh.items() if k not in VOLATILE}


def test_killed_kernel_shard_leaves_nothing_and_reruns(full_run, tmp_path_factory, inputs):
    work, _ = full_run
    killed = new_workdir(tmp_path_factory, inputs, "kill-kernel")
    kernel = "results/kernels/tiny/alpha/4-13/sgd-prompt/test.pt"
    log = killed / "logs/kernel_shard/tiny/alpha/4-13/prompt/test/0-0.log"
    _kill_when(killed, kernel, lambda: log.exists() and "row block" in log.read_text(), whole=True)
    import torch

    from lmft.io import torch_load

    for shard in (killed / "results/kernels").rglob("*.pt"):  # written atomically: whole or absent
        torch_load(shard)  # (a kill -9 mid-write leaves only a hidden .tmp file beside it)
    # Snakemake itself was killed: its lock stays until --unlock, and the outputs of the jobs it did
    # not see finish are marked incomplete (the profiles set rerun-incomplete)
    snakemake(killed, "--unlock")
    snakemake(killed, kernel, "--rerun-incomplete")

    a = torch.load(killed / kernel, weights_only=True)
    b = torch.load(work / kernel, weights_only=True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("artifact, target", [
    ("results/finetune/tiny/alpha/4-13/ft/model.safetensors", "results/graft/tiny/alpha/4-13/ft/sparsity-0.0001/metrics.json"),
    ("results/kernels/tiny/alpha/4-13/sgd-prompt/train.pt", "results/kernel_solve/tiny/alpha/4-13/sgd-prompt/lstsq/metrics.json"),
    ("data/kshot/alpha/4-13/dev.parquet", "results/finetune/tiny/alpha/4-13/zeroshot/metrics.json"),
])
def test_truncated_artifact_is_named_in_a_clear_error(full_run, tmp_path_factory, artifact, target):
    work = tmp_path_factory.mktemp("corrupt") / "work"
    shutil.copytree(full_run[0], work, symlinks=True)  # a copy: the failing job deletes its outputs
    path = work / artifact
    mtime = path.stat().st_mtime_ns
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a full disk
    os.utime(path, ns=(mtime, mtime))  # looks unchanged to Snakemake: only the forced job reads it
    out = snakemake(work, target, "--forcerun", target, check=False)
    assert out.returncode != 0
    logs = [p for p in (work / "logs").rglob("*.log") if "not a readable" in p.read_text()]
    assert len(logs) == 1, [str(p) for p in logs]
    text = logs[0].read_text()
    assert f"{artifact}: not a readable" in text and "Traceback" not in text
