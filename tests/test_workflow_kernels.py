"""The kernel stage through Snakemake: shard/merge/solve planning, a 2x2-shard run equal to a 1x1 run, published kernels."""

import json
import shutil

import pandas as pd
import pytest
import torch
from tiny import save_tiny_hf_dir
from workflow_utils import planned_jobs, snakemake, write_config

from lmft.data.kshot import cap_rows
from lmft.kernels.files import load_logits

pytestmark = pytest.mark.workflow

FORMULAS = ["sgd", "asymmetric-signgd"]
COMMON_KEYS = {"stage", "task", "k", "seed", "model", "method", "formula", "prompt", "solver", "metric", "dev_metric",
               "test_metric", "test_ece", "reg", "wall_time_s", "peak_mem_mb"}
WORDS = ["great", "good", "fun", "terrible", "bad", "boring"]
SOLVES = ["asymmetric-signgd-prompt/asym", "asymmetric-signgd-prompt/logistic-dev", "sgd-prompt/logistic-dev"]


def write_task(tmp_path, n=40):
    """A two-class CSV whose sentences the tiny BERT tokenizer knows word by word."""
    rows = [(f"the movie was {WORDS[i % 6]} and {WORDS[(i // 6) % 6]}", "pos" if i % 6 < 3 else "neg") for i in range(n)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "alpha.csv", index=False)


def config(tmp_path, model_dir, **kernels):
    return {"models": {"tiny": {"source": str(model_dir)}}, "tasks": ["alpha"],
            "user_tasks": {"alpha": {"path": str(tmp_path / "alpha.csv"), "text_columns": ["text"], "label_column": "label",
                                     "label_words": {"neg": "terrible", "pos": "great"}}},
            "kshot": {"k": [4], "seeds": [13], "test_cap": 8},
            "kernels": {"formulas": FORMULAS, "prompt": ["prompt"], "binary": True, "row_batch": 3, "col_batch": 2,
                        "row_shards": 2, "col_shards": {"train": 1, "dev": 1, "test": 2}, "test_cap": 6,
                        "solvers": [{"name": "logistic-dev", "f0_scaling": 1.0}, "asym"]} | kernels}


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """One real run of the whole kernel stage, test kernels in 2x2 shards, train and dev in 2x1 (shared below)."""
    tmp = tmp_path_factory.mktemp("kernels")
    write_task(tmp)
    model_dir = save_tiny_hf_dir(tmp / "model", "bert")
    write_config(tmp, config(tmp, model_dir))
    solves = [f"results/kernel_solve/tiny/alpha/4-13/{run}/metrics.json" for run in SOLVES]
    snakemake(tmp, *solves)  # the kernel stage only
    return tmp, model_dir


def test_dry_run_plans_shards_merges_and_solves(tmp_path):
    write_task(tmp_path)
    write_config(tmp_path, config(tmp_path, tmp_path / "unused", prompt=["prompt", "noprompt"], solvers=["lstsq",
                                  "logistic", "asym"], col_shards={"train": 1, "dev": 1, "test": 3}))
    jobs = planned_jobs(tmp_path)
    shards = [w for r, w in jobs if r == "kernel_shard"]
    # per prompt: train and dev 2 rows x 1 col, test 2 rows x 3 cols
    assert len(shards) == 2 * (2 + 2 + 6)
    assert "model=tiny, task=alpha, k=4, seed=13, prompt=noprompt, split=test, row=1, col=2" in shards
    assert sorted(w for r, w in jobs if r == "kernel_merge") == [
        f"model=tiny, task=alpha, k=4, seed=13, prompt={p}" for p in ("noprompt", "prompt")]
    # one job per kernel for lstsq and logistic; asym on the asymmetric-signgd kernels only
    assert sorted(w for r, w in jobs if r == "kernel_solve") == sorted(
        f"model=tiny, task=alpha, k=4, seed=13, formula={f}, prompt={p}" for f in FORMULAS for p in ("noprompt", "prompt"))
    assert sorted(w for r, w in jobs if r == "kernel_solve_asym") == [
        f"model=tiny, task=alpha, k=4, seed=13, prompt={p}" for p in ("noprompt", "prompt")]
    assert ("aggregate", "") in jobs


def test_no_kernels_section_plans_no_kernel_job(tmp_path):
    write_task(tmp_path)
    cfg = config(tmp_path, tmp_path / "unused")
    del cfg["kernels"]
    write_config(tmp_path, cfg)
    assert not [r for r, _ in planned_jobs(tmp_path) if r.startswith("kernel")]


def test_sharded_run_writes_the_papers_format_equal_to_one_shard(sharded_run):
    tmp, model_dir = sharded_run
    run = tmp / "results/kernels/tiny/alpha/4-13"
    for split, n_cols in (("train", 8), ("dev", 8), ("test", 6)):
        for formula in FORMULAS:
            obj = torch.load(run / f"{formula}-prompt/{split}.pt", weights_only=True)
            assert isinstance(obj, tuple) and len(obj) == 2
            kernel, labels = obj
            lead = (2,) if formula == "asymmetric-signgd" else ()
            assert kernel.dtype == torch.float64 and kernel.shape == (*lead, 8, 1, n_cols, 1)  # binary: C = 1
            assert labels.dtype == torch.long and labels.shape == (n_cols,)
        f0, f0_labels = load_logits(run / f"f0-prompt/{split}.pt")
        assert f0.shape == (n_cols, 1) and torch.equal(f0_labels, labels)
    assert len(list((run / "shards-prompt/test").glob("*/asymmetric-signgd.pt"))) == 4

    # the same config with one shard per kernel, another results dir (same prepared model): bit-identical files
    cfg = config(tmp, model_dir, row_shards=1, col_shards=1) | {"results_dir": "one"}
    write_config(tmp, cfg)
    (tmp / "one/models/tiny").mkdir(parents=True)
    shutil.copy(tmp / "results/models/tiny/model.json", tmp / "one/models/tiny/model.json")
    targets = [f"one/kernels/tiny/alpha/4-13/{name}/{split}.pt" for split in ("train", "dev", "test")
               for name in ("sgd-prompt", "asymmetric-signgd-prompt", "f0-prompt")]
    snakemake(tmp, *targets)
    for target in targets:
        one = torch.load(tmp / target, weights_only=True)
        four = torch.load(tmp / target.replace("one/", "results/"), weights_only=True)
        assert all(torch.equal(a, b) for a, b in zip(one, four)), target
    assert len(list((tmp / "one/kernels/tiny/alpha/4-13/shards-prompt/test").iterdir())) == 1


def test_solve_metrics_have_the_common_keys(sharded_run):
    tmp, _ = sharded_run
    solve = tmp / "results/kernel_solve/tiny/alpha/4-13"
    assert sorted(p.relative_to(solve).parent.as_posix() for p in solve.glob("*/*/metrics.json")) == SOLVES
    m = json.loads((solve / "sgd-prompt/logistic-dev/metrics.json").read_text())
    assert COMMON_KEYS <= set(m)
    assert (m["stage"], m["method"], m["formula"], m["prompt"], m["solver"], m["metric"]) == \
        ("kernel", "kernel", "sgd", "prompt", "logistic-dev", "acc")
    assert (m["n_train"], m["n_dev"], m["n_test"], m["num_logits"], m["f0_scaling"]) == (8, 8, 6, 1, 1.0)
    assert 0.0 <= m["test_metric"] <= 1.0 and m["reg"] in m["grid"]
    assert m["kernel"]["source"] == "computed"
    # each solver's per-example test predictions: rows of the k-shot test.parquet (8) kept by the kernel's test_cap (6)
    test = pd.read_parquet(tmp / "data/kshot/alpha/4-13/test.parquet")
    for run in SOLVES:
        preds = pd.read_parquet(solve / run / "predictions.parquet")
        assert list(preds.columns) == ["index", "label", "pred", "probs"] and len(test) == 8
        assert preds["index"].tolist() == cap_rows(8, 6)
        assert preds["label"].tolist() == [int(lab == "pos") for lab in test["label"].iloc[cap_rows(8, 6)]]
        metrics = json.loads((solve / run / "metrics.json").read_text())
        assert (preds["pred"] == preds["label"]).mean() == pytest.approx(metrics["test_metric"])


def test_published_kernels_are_solved_without_shard_jobs(sharded_run):
    tmp, model_dir = sharded_run
    cfg = config(tmp, model_dir, published_dir=str(tmp / "results/kernels")) | {"results_dir": "pub"}
    write_config(tmp, cfg)
    jobs = planned_jobs(tmp)
    assert {r for r, _ in jobs} == {"kernel_solve", "kernel_solve_asym", "aggregate"}
    solve = "kernel_solve/tiny/alpha/4-13/asymmetric-signgd-prompt/logistic-dev/metrics.json"
    snakemake(tmp, f"pub/{solve}")
    pub = json.loads((tmp / "pub" / solve).read_text())
    computed = json.loads((tmp / "results" / solve).read_text())
    assert pub["kernel"]["source"] == "published"
    assert (pub["dev_scores"], pub["test_metric"], pub["test_ece"]) == \
        (computed["dev_scores"], computed["test_metric"], computed["test_ece"])
    pub_preds = pd.read_parquet((tmp / "pub" / solve).with_name("predictions.parquet"))
    assert pub_preds["index"].tolist() == list(range(6))  # a published kernel's columns


def test_bad_kernel_config_stops_before_any_job(tmp_path):
    write_task(tmp_path)
    write_config(tmp_path, config(tmp_path, tmp_path / "unused", solvers=[{"name": "asym", "f0_scaling": 2.0}]))
    out = snakemake(tmp_path, "-n", check=False)
    assert out.returncode != 0 and "asym" in out.stdout + out.stderr and "f0_scaling" in out.stdout + out.stderr
