"""A user generation task through Snakemake on a tiny causal LM: zero-shot, ICL and fine-tuning
runs, their generation table and plot, exact rerun plans after a change, and a generation task
under ``kernels:`` refused with the key named."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tiny import SENTENCES, save_tiny_hf_dir
from workflow_utils import planned_jobs, snakemake, write_config

pytestmark = pytest.mark.workflow

TASK = "toy-summary"
TARGET = "yes it was good"  # every target is this phrase (tiny-tokenizer words): a model that learnt it scores 1
K, SEED, TEST_CAP = 4, 13, 4
FT = {"type": "ft", "mode": "all", "lr": 1e-2, "optimizer": "adamw", "batch_size": 2, "steps": 30,
      "eval_every": 10}
METHODS = ("zeroshot", "icl", "ft")


def write_task(root: Path) -> None:
    """Train (the 12 tiny sentences) and test (6 more) CSVs: a ``doc`` column and a ``summary`` column
    that is always :data:`TARGET`."""
    train = [text for text, _ in SENTENCES]
    test = ["the movie was great", "a boring film", "bad acting", "fun actors", "so bad", "the film was okay"]
    for name, docs in (("train", train), ("test", test)):
        pd.DataFrame({"doc": docs, "summary": [TARGET] * len(docs)}).to_csv(root / f"{name}.csv", index=False)


def gen_config(data: Path, model_dir: Path, **ft_changes) -> dict:
    return {
        "models": {"tiny": {"source": str(model_dir)}},
        "tasks": [TASK],
        "user_tasks": {TASK: {"kind": "generation", "path": str(data / "train.csv"),
                              "test_path": str(data / "test.csv"), "text_columns": ["doc"],
                              "target_column": "summary", "prompt": "Article: {text_a}\nSummary:",
                              "max_length": 40, "max_new_tokens": 6}},
        "kshot": {"k": [K], "seeds": [SEED], "test_cap": TEST_CAP},
        "finetune": {"methods": {"zeroshot": {"type": "zeroshot"}, "icl": {"type": "icl", "demos": 1},
                                 "ft": FT | ft_changes}},
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    data = tmp_path_factory.mktemp("gen-inputs")
    write_task(data)
    return data, save_tiny_hf_dir(data / "model", "llama")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, inputs):
    work = tmp_path_factory.mktemp("gen-work")
    write_config(work, gen_config(*inputs))
    plan = planned_jobs(work)
    snakemake(work, "--cores", "1")
    return work, plan


def run_dir(work: Path, method: str) -> Path:
    return work / f"results/finetune/tiny/{TASK}/{K}-{SEED}/{method}"


def test_plan_runs_each_method_on_the_k_example_split(full_run):
    _, plan = full_run
    draw = f"task={TASK}, k={K}, seed={SEED}"
    assert plan == sorted([("aggregate", ""), ("download", f"task={TASK}"), ("kshot_examples", draw),
                           ("prepare_model", "model=tiny")]
                          + [("finetune", f"model=tiny, {draw}, method={m}") for m in METHODS])


def test_each_run_writes_generation_metrics_and_predictions(full_run):
    work, _ = full_run
    metrics = {}
    for method in METHODS:
        m = json.loads((run_dir(work, method) / "metrics.json").read_text())
        assert (m["stage"], m["metric"], m["method"], m["n_test"]) == ("generation", "rougeL", method, TEST_CAP)
        assert {"rouge1", "rouge2", "rougeL"} <= set(m["test_scores"])
        assert m["test_metric"] == m["test_scores"]["rougeL"]
        preds = pd.read_parquet(run_dir(work, method) / "predictions.parquet")
        assert list(preds.columns) == ["index", "target", "prediction", "score"]
        assert len(preds) == TEST_CAP and (preds["target"] == TARGET).all()
        assert preds["score"].mean() == pytest.approx(m["test_metric"])
        metrics[method] = m
    assert metrics["icl"]["demos"] == 1 and metrics["zeroshot"]["steps"] == metrics["icl"]["steps"] == 0
    # fine-tuning on one repeated phrase learns it: every test prediction is that phrase; the
    # untrained random model's greedy text shares (almost) nothing with it
    ft = metrics["ft"]
    assert ft["steps"] == 30 and ft["n_trainable"] > 0
    assert ft["test_metric"] == pytest.approx(1.0) and ft["dev_token_acc"] == pytest.approx(1.0)
    assert (pd.read_parquet(run_dir(work, "ft") / "predictions.parquet")["prediction"] == TARGET).all()
    assert metrics["zeroshot"]["test_metric"] < 0.5


def test_aggregate_writes_the_generation_table_and_plot_only(full_run):
    work, _ = full_run
    tables, plots = work / "results/tables", work / "results/plots"
    table = pd.read_csv(tables / "generation.csv", dtype=str)
    assert len(table) == len(METHODS) and set(table["method"]) == set(METHODS)
    assert {"rouge1", "rouge2", "rougeL", "test examples"} <= set(table.columns)
    assert (table["test examples"] == str(TEST_CAP)).all() and (table["task"] == TASK).all()
    rouge_l = table.set_index("method")["rougeL"]  # x100; one seed: mean ±se over the test examples
    assert rouge_l["ft"] == "100.0 ±0.0" and rouge_l["zeroshot"] != rouge_l["ft"]
    md = (tables / "generation.md").read_text()
    assert "rougeL" in md and all(m in md for m in METHODS)
    assert (plots / "generation_scores.png").stat().st_size > 1000
    runs = pd.read_parquet(tables / "runs.parquet")
    assert set(runs["stage"]) == {"generation"} and len(runs) == len(METHODS)
    # no classification run: no main table or accuracy plot (the topics: generation and findings)
    assert not list(tables.glob("main.*")) and not list(plots.glob("accuracy_vs_k.*"))
    assert (tables / "findings.md").exists()


def test_nothing_to_rerun_then_an_lr_change_reruns_only_that_method(full_run, inputs):
    work, _ = full_run
    assert planned_jobs(work) == []
    write_config(work, gen_config(*inputs, lr=2e-2))
    try:
        assert planned_jobs(work) == [("aggregate", ""),
                                      ("finetune", f"model=tiny, task={TASK}, k={K}, seed={SEED}, method=ft")]
    finally:
        write_config(work, gen_config(*inputs))
    assert planned_jobs(work) == []


@pytest.mark.parametrize("tasks, message", [
    (None, "config: kernels.tasks is unset, so it takes every task of the config, including the generation "
           f"task(s) ['{TASK}']"),
    ([TASK], f"config: kernels.tasks names the generation task(s) ['{TASK}']"),
])
def test_generation_task_under_kernels_is_refused_naming_the_key(tmp_path, inputs, tasks, message):
    kernels = {"formulas": ["sgd"], "solvers": ["lstsq"]} | ({} if tasks is None else {"tasks": tasks})
    write_config(tmp_path, gen_config(*inputs) | {"kernels": kernels})
    out = snakemake(tmp_path, "-n", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "LmftError" in text and message in text and "for classification tasks only" in text
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
