"""The data stages through Snakemake: planning, a real run on a user task, incremental reruns,
generation tasks' k-example splits beside classification tasks' k-per-label ones."""

import json

import numpy as np
import pandas as pd
import pytest

from lmft.data.tasks import get_task
from workflow_utils import planned_jobs, snakemake, write_config

pytestmark = pytest.mark.workflow


def tiny_config(tmp_path, tasks):
    return {"models": {"none": {"source": "unused"}}, "tasks": tasks,
            "user_tasks": {name: {"path": str(tmp_path / f"{name}.csv"), "text_columns": ["text"],
                                  "label_column": "label", "label_words": {"neg": "terrible", "pos": "great"}}
                           for name in tasks},
            "kshot": {"k": [4], "seeds": [13, 21], "test_cap": 5}}


def write_task(tmp_path, name, n=40, salt=""):
    pd.DataFrame({"text": [f"{name} text {i}{salt}" for i in range(n)],
                  "label": ["neg", "pos"] * (n // 2)}).to_csv(tmp_path / f"{name}.csv", index=False)


def test_default_config_plans_data_jobs(tmp_path):
    cfg = __import__("yaml").safe_load(open("config.yaml"))
    write_config(tmp_path, cfg)
    jobs = planned_jobs(tmp_path)
    downloads = [w for r, w in jobs if r == "download"]
    tasks, ks, seeds = cfg["tasks"], cfg["kshot"]["k"], cfg["kshot"]["seeds"]
    assert sorted(downloads) == sorted(f"task={t}" for t in tasks)
    # classification tasks: k per label (rule kshot); generation tasks: k examples (rule kshot_examples),
    # for kshot's k and seeds and for those their methods name
    generation = {t for t in tasks if get_task(t, cfg).kind == "generation"}
    assert generation
    draws = {(t, k, s) for t in tasks for k in ks for s in seeds}
    draws |= {(t, k, s) for spec in cfg["finetune"]["methods"].values() for t in spec.get("tasks", [])
              for k in spec.get("k", ks) for s in spec.get("seeds", seeds)}
    for rule, gen in (("kshot", False), ("kshot_examples", True)):
        assert sorted(w for r, w in jobs if r == rule) == sorted(
            f"task={t}, k={k}, seed={s}" for t, k, s in draws if (t in generation) == gen)


def test_user_task_run_and_incremental_rerun(tmp_path):
    for name in ("alpha", "beta"):
        write_task(tmp_path, name)
    write_config(tmp_path, tiny_config(tmp_path, ["alpha", "beta"]))
    snakemake(tmp_path)
    for name in ("alpha", "beta"):
        for seed in (13, 21):
            train = pd.read_parquet(tmp_path / f"data/kshot/{name}/4-{seed}/train.parquet")
            assert train["label"].value_counts().to_dict() == {"neg": 4, "pos": 4}
        assert len(pd.read_parquet(tmp_path / f"data/kshot/{name}/4-13/test.parquet")) == 5
    assert (tmp_path / "logs/kshot/alpha/4-13.log").exists()
    assert planned_jobs(tmp_path) == []  # nothing changed: nothing to do

    write_task(tmp_path, "beta", salt=" changed")
    assert planned_jobs(tmp_path) == [("download", "task=beta"), ("kshot", "task=beta, k=4, seed=13"),
                                      ("kshot", "task=beta, k=4, seed=21")]


def test_balanced_test_sets_and_their_rerun(tmp_path):
    # alpha: 75% neg, balanced by name; beta: the same skew, kept as it is (user tasks are not balanced by default)
    for name in ("alpha", "beta"):
        pd.DataFrame({"text": [f"{name} text {i}" for i in range(80)],
                      "label": ["neg", "neg", "neg", "pos"] * 20}).to_csv(tmp_path / f"{name}.csv", index=False)
    cfg = tiny_config(tmp_path, ["alpha", "beta"])
    cfg["kshot"] |= {"test_cap": 6, "test_balance": ["alpha"]}
    write_config(tmp_path, cfg)
    snakemake(tmp_path)
    kshot = tmp_path / "data/kshot"
    tests = [pd.read_parquet(kshot / f"alpha/4-{seed}/test.parquet") for seed in (13, 21)]
    assert tests[0]["label"].value_counts().to_dict() == {"neg": 3, "pos": 3} and tests[0].equals(tests[1])
    info = json.loads((kshot / "alpha/4-13/info.json").read_text())
    assert info["test_style"] == "balanced" and info["label_counts"]["test"] == {"neg": 3, "pos": 3}
    assert info["label_counts"]["train"] == {"neg": 4, "pos": 4} and info["majority_baseline"] == 0.5
    beta = json.loads((kshot / "beta/4-13/info.json").read_text())
    assert beta["test_style"] == "glue" and sum(beta["label_counts"]["test"].values()) == 6

    cfg["kshot"]["test_balance"] = False  # flips alpha only
    write_config(tmp_path, cfg)
    assert planned_jobs(tmp_path) == [("kshot", "task=alpha, k=4, seed=13"), ("kshot", "task=alpha, k=4, seed=21")]


def test_bad_config_stops_before_any_job(tmp_path):
    cfg = tiny_config(tmp_path, ["alpha"])
    cfg["kshot"]["kk"] = 1
    write_config(tmp_path, cfg)
    out = snakemake(tmp_path, "-n", check=False)
    assert out.returncode != 0 and "kk" in out.stdout + out.stderr


def test_k_too_large_fails_with_counts(tmp_path):
    write_task(tmp_path, "alpha", n=10)
    cfg = tiny_config(tmp_path, ["alpha"])
    write_config(tmp_path, cfg)
    out = snakemake(tmp_path, check=False)
    assert out.returncode != 0
    log = (tmp_path / "logs/kshot/alpha/4-13.log").read_text()
    assert "k=4 needs 8" in log and "neg: 3, pos: 5" in log
    assert not (tmp_path / "data/kshot/alpha/4-13/train.parquet").exists()


def test_generation_tasks_kshot_beside_a_classification_task(tmp_path):
    write_task(tmp_path, "alpha")
    pd.DataFrame({"doc": [f"Document  {i}." for i in range(30)],
                  "summary": [f"Summary {i}." for i in range(30)]}).to_csv(tmp_path / "summ.csv", index=False)
    cfg = tiny_config(tmp_path, ["alpha"])
    cfg["tasks"] = ["alpha", "summ", "bbc-summary"]
    cfg["user_tasks"]["summ"] = {"kind": "generation", "path": str(tmp_path / "summ.csv"), "text_columns": ["doc"],
                                 "target_column": "summary", "prompt": "{text_a}\nSummary:"}
    write_config(tmp_path, cfg)
    draws = [f"k=4, seed={s}" for s in (13, 21)]
    assert planned_jobs(tmp_path) == sorted(
        [("download", f"task={t}") for t in cfg["tasks"]] + [("kshot", f"task=alpha, {d}") for d in draws]
        + [("kshot_examples", f"task={t}, {d}") for t in ("summ", "bbc-summary") for d in draws])
    snakemake(tmp_path)
    for task in ("summ", "bbc-summary"):
        raw = pd.read_parquet(tmp_path / f"data/raw/{task}/train.parquet")
        kshot = tmp_path / f"data/kshot/{task}"
        for seed in (13, 21):
            train, dev = (pd.read_parquet(kshot / f"4-{seed}/{s}.parquet") for s in ("train", "dev"))
            order = np.random.RandomState(seed).permutation(len(raw)).tolist()
            assert train["idx"].tolist() == order[:4] and dev["idx"].tolist() == order[4:8]
            assert train[["text_a", "target"]].equals(raw.loc[order[:4], ["text_a", "target"]].reset_index(drop=True))
        test = pd.read_parquet(kshot / "4-13/test.parquet")
        assert test.equals(pd.read_parquet(kshot / "4-21/test.parquet")) and test["idx"].is_monotonic_increasing
        assert {"idx", "text_a", "text_b", "target"} <= set(test.columns) and len(test) == 5
        info = json.loads((kshot / "4-13/info.json").read_text())
        assert info["counts"] == {"train": 4, "dev": 4, "test": 5} and info["test_cap"] == 5
    assert json.loads((tmp_path / "data/raw/summ/source.json").read_text())["task_kind"] == "generation"
    summ = pd.read_parquet(tmp_path / "data/kshot/summ/4-13/train.parquet")
    assert summ["text_a"].str.match(r"Document \d+\.$").all()  # whitespace normalised
    assert "label_counts" in json.loads((tmp_path / "data/kshot/alpha/4-13/info.json").read_text())
    assert planned_jobs(tmp_path) == []
