"""The plugin type of tests/majority.py: run by the fine-tuning runner, then through Snakemake with its
module named in ``finetune.plugins``, as a user names theirs (README, "Extending"). A type of your
own: copy this file and majority.py, and change the settings and the expected numbers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from tiny import make_tiny_model_dir, save_tiny_hf_dir, tiny_frame, write_tiny_splits
from workflow_utils import planned_jobs, snakemake, write_config

from lmft.data.tasks import get_task
from lmft.finetune.methods import TYPES, load_plugins, resolve_spec
from lmft.finetune.stage import run_finetune
from lmft.io import LmftError, write_parquet

PLUGIN = Path(__file__).with_name("majority.py")


@pytest.fixture
def majority():
    """The type, registered as a plugin for one test (TYPES holds the built-in types only outside it)."""
    load_plugins({"finetune": {"plugins": ["majority"]}})
    yield TYPES["majority"]
    del TYPES["majority"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("majority")
    splits = write_tiny_splits(root / "kshot")
    write_parquet(tiny_frame().iloc[:9], splits["train"])  # 6 positive, 3 negative
    return make_tiny_model_dir(root, "bert"), splits


def _run(inputs, out: Path, spec: dict) -> dict:
    model_json, splits = inputs
    return run_finetune(model_json, get_task("sst-2"), splits, out, model="tiny", k=6, seed=13, method=out.name,
                        spec=spec)


def test_predicts_the_train_majority_with_its_smoothed_frequency(majority, inputs, tmp_path: Path) -> None:
    out = tmp_path / "prior"
    metrics = _run(inputs, out, {"type": "majority"})
    assert (metrics["type"], metrics["mode"], metrics["majority_label"]) == ("majority", "none", "1")
    assert metrics["n_trainable"] == 0 and metrics["steps"] == 0
    preds = pd.read_parquet(out / "predictions.parquet")
    assert set(preds["pred"]) == {1} and all(p.tolist() == pytest.approx([4 / 11, 7 / 11]) for p in preds["probs"])
    test = tiny_frame(10)
    assert metrics["test_metric"] == (test["label"] == "1").mean() == 0.5
    expected_loss = -sum(math.log(7 / 11 if label == "1" else 4 / 11) for label in test["label"]) / len(test)
    assert metrics["test_loss"] == pytest.approx(expected_loss)
    raw = _run(inputs, tmp_path / "raw", {"type": "majority", "smoothing": 0})
    assert raw["test_loss"] == pytest.approx(-(math.log(6 / 9) + math.log(3 / 9)) / 2)


@pytest.mark.parametrize("spec, message", [
    ({"type": "majority", "smoothing": -1}, "config: finetune.methods.bad.smoothing: -1 is less than the minimum of 0"),
    ({"type": "majority", "lr": 1e-3}, r"finetune method 'bad' \(type majority\): unknown key\(s\) \['lr'\]"),
])
def test_bad_settings_are_named(majority, inputs, tmp_path: Path, spec, message) -> None:
    with pytest.raises(LmftError, match=message):
        _run(inputs, tmp_path / "bad", spec)


def test_defaults_come_from_the_schema(majority) -> None:
    assert resolve_spec({"type": "majority"})["smoothing"] == 1.0


@pytest.mark.workflow
def test_runs_through_the_workflow_as_a_plugin(tmp_path: Path) -> None:
    from test_workflow_stages import write_task

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_task(inputs, "alpha")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(PLUGIN, work)  # beside the config, where a user keeps it
    config = {"models": {"tiny": {"source": str(save_tiny_hf_dir(inputs / "model", "bert"))}},
              "tasks": ["alpha"],
              "user_tasks": {"alpha": {"path": str(inputs / "alpha.csv"), "text_columns": ["text"],
                                       "label_column": "label", "label_words": {"neg": "terrible", "pos": "great"}}},
              "kshot": {"k": [4], "seeds": [13], "test_cap": 8},
              "finetune": {"plugins": ["majority"], "methods": {"prior": {"type": "majority", "smoothing": 0.5},
                                                                "zeroshot": {"type": "zeroshot"}}}}
    write_config(work, config)
    snakemake(work)
    metrics = json.loads((work / "results/finetune/tiny/alpha/4-13/prior/metrics.json").read_text())
    kshot = work / "data/kshot/alpha/4-13"
    train, test = (pd.read_parquet(kshot / f"{s}.parquet") for s in ("train", "test"))
    labels = get_task("alpha", config).labels
    majority = max(labels, key=lambda label: (train["label"] == label).sum())  # ties: the first label
    assert (metrics["type"], metrics["majority_label"], metrics["n_test"]) == ("majority", majority, 8)
    assert metrics["test_metric"] == (test["label"] == majority).mean()
    assert metrics["dev_loss"] == pytest.approx(math.log(2))  # 4 examples per label: even odds
    runs = pd.read_parquet(work / "results/tables/runs.parquet")
    assert set(runs.loc[runs["stage"] == "finetune", "type"]) == {"majority", "zeroshot"}
    assert planned_jobs(work) == []

    write_config(work, config | {"finetune": {"methods": config["finetune"]["methods"]}})  # the plugin not named
    proc = snakemake(work, "-n", check=False)
    assert proc.returncode != 0
    assert "type must be one of zeroshot, icl, linear-probe, ft, mezo, fzoo, mezo-svrg, got 'majority'" in proc.stdout + proc.stderr
