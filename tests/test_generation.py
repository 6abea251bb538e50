"""Generation jobs through the fine-tuning stage: zero-shot, ICL and fine-tuning on a tiny causal LM."""

import pandas as pd
import pytest

from lmft.data.tasks import GenerationTask
from lmft.finetune.grid import SEP
from lmft.finetune.stage import run_finetune
from lmft.io import LmftError, read_json, read_parquet, write_parquet
from tiny import make_tiny_model_dir

TASK = GenerationTask(name="toy-summary", prompt="Article: {text_a}\nSummary:", source={}, max_length=40,
                      max_new_tokens=6)
TARGET = "yes it was good"  # every target is the same: a model that learnt it scores ROUGE-L 1


def splits(root):
    texts = ["the movie was great", "a boring film", "the story is good", "bad acting", "fun actors",
             "the plot was not good", "a very good film", "so bad", "really fun", "the film was okay"]
    frames = {"train": texts[:4], "dev": texts[4:6], "test": texts[6:]}
    out = {}
    for name, rows in frames.items():
        out[name] = root / f"{name}.parquet"
        write_parquet(pd.DataFrame({"text_a": rows, "text_b": [None] * len(rows), "target": [TARGET] * len(rows)}),
                      out[name])
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return make_tiny_model_dir(root, "llama"), splits(root), root


def run(setup, method, spec, **kw):
    model_json, files, root = setup
    out = root / method
    return run_finetune(model_json, TASK, files, out, model="tiny", k=4, seed=13, method=method, spec=spec, **kw), out


def test_finetuning_learns_the_targets(setup):
    zs, _ = run(setup, "zs", {"type": "zeroshot"})
    ft, out = run(setup, "ft", {"type": "ft", "mode": "all", "lr": 1e-2, "optimizer": "adamw", "batch_size": 2,
                                "steps": 30, "eval_every": 10})
    assert ft["test_metric"] == pytest.approx(1.0) and ft["test_scores"]["rouge2"] == pytest.approx(1.0)
    assert zs["test_metric"] < 0.5
    assert ft["metric"] == "rougeL" and ft["stage"] == "generation" and ft["n_test"] == 4
    assert ft["dev_token_acc"] == pytest.approx(1.0) and ft["best_step"] in (10, 20, 30)
    preds = read_parquet(out / "predictions.parquet")
    assert list(preds.columns) == ["index", "target", "prediction", "score"]
    assert (preds["prediction"] == TARGET).all() and (preds["score"] == 1.0).all()
    curve = read_parquet(out / "curve.parquet")
    dev = curve[curve["split"] == "dev"]
    assert dev["loss"].iloc[-1] < dev["loss"].iloc[0] / 2  # the target loss fell
    assert read_json(out / "metrics.json")["test_scores"] == ft["test_scores"]
    assert (out / "model.safetensors").stat().st_size > 0 and (out / "steps").is_dir()


def test_same_seed_same_text(setup):
    a, _ = run(setup, "lora-a", {"type": "ft", "mode": "lora:2", "lr": 5e-3, "batch_size": 2, "steps": 4,
                                 "eval_every": 2})
    b, out = run(setup, "lora-b", {"type": "ft", "mode": "lora:2", "lr": 5e-3, "batch_size": 2, "steps": 4,
                                   "eval_every": 2})
    assert a["dev_loss"] == b["dev_loss"] and a["test_scores"] == b["test_scores"]


def test_icl_and_test_cap(setup):
    icl, out = run(setup, "icl", {"type": "icl", "demos": 2}, eval_cap=3)
    assert icl["demos"] == 2 and icl["n_test"] == 3 and icl["steps"] == 0
    assert read_parquet(out / "predictions.parquet")["index"].tolist() == sorted(
        read_parquet(out / "predictions.parquet")["index"].tolist())


def test_methods_that_cannot_generate(setup):
    with pytest.raises(LmftError, match="linear-probe does not apply to the generation task"):
        run(setup, "probe", {"type": "linear-probe"})
    with pytest.raises(LmftError, match="cannot decode text"):
        run(setup, "prefix", {"type": "ft", "mode": "prefix:2", "steps": 2})
    with pytest.raises(LmftError, match="save_every and save_steps .* are not there for generation tasks"):
        run(setup, "resumable", {"type": "ft", "steps": 2, "save_every": 1})


def test_eval_dev_false_skips_dev_only_where_nothing_is_chosen_on_it(setup):
    full, _ = run(setup, "icl-dev", {"type": "icl", "demos": 2})
    lean, out = run(setup, "icl-nodev", {"type": "icl", "demos": 2, "eval_dev": False})
    assert lean["test_scores"] == full["test_scores"]  # test is the same; dev is not decoded nor teacher-forced
    assert all(v != v for v in lean["dev_scores"].values()) and lean["dev_loss"] != lean["dev_loss"]
    assert full["dev_loss"] == full["dev_loss"]
    spec = {"type": "ft", "mode": "lora:2", "lr": 5e-3, "batch_size": 2, "steps": 4, "eval_every": 2}
    ft, _ = run(setup, "lora-dev", spec)
    ft_lean, _ = run(setup, "lora-nodev", spec | {"eval_dev": False})  # dev still keeps the checkpoint
    assert (ft_lean["dev_loss"], ft_lean["best_step"], ft_lean["test_scores"]) == (
        ft["dev_loss"], ft["best_step"], ft["test_scores"])
    assert all(v != v for v in ft_lean["dev_scores"].values())
    with pytest.raises(LmftError, match="eval_dev false, but dev's scores choose among its grid trials"):
        run(setup, f"zs{SEP}lr0.1", {"type": "zeroshot", "eval_dev": False})
