"""lmft.finetune.stage: every method type end to end on tiny models, reloading, kill and resume, bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmft.data.kshot import cap_rows
from lmft.data.tasks import get_task
from lmft.finetune.methods import TYPES, job_spec, resolve_spec
from lmft.finetune.runs import load_finetuned, load_run
from lmft.finetune.stage import run_finetune
from lmft.io import ArtifactError, LmftError, load_tensors, read_json
from lmft.models.encode import encode_split
from lmft.models.evaluate import predict
from lmft.models.heads import build_classifier
from lmft.plan import finetune_targets
from tiny import make_tiny_model_dir, write_tiny_splits

SST2 = get_task("sst-2")
SHARED_KEYS = {"stage", "task", "k", "seed", "model", "method", "metric", "dev_metric", "test_metric", "test_ece",
               "wall_time_s", "peak_mem_mb"}
STAGE_KEYS = {"type", "mode", "head", "test_loss", "n_trainable", "steps", "notes", "best_step"}
TRAIN = {"steps": 6, "eval_every": 2, "batch_size": 4}
VOLATILE = {"wall_time_s", "peak_mem_mb", "resumed_from", "train_s"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"bert": make_tiny_model_dir(root, "bert"), "llama": make_tiny_model_dir(root, "llama")}


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_splits(tmp_path_factory.mktemp("kshot"))


def _run(models, splits, out: Path, spec: dict, model: str = "bert", **kw) -> dict:
    return run_finetune(models[model], SST2, splits, out, model=model, k=6, seed=13, method=out.name, spec=spec, **kw)


METHODS = {
    "ft": {"type": "ft", "lr": 1e-3, "save_steps": [2, 4], **TRAIN},
    "ft-cls": {"type": "ft", "head": "cls", "lr": 1e-3, **TRAIN},
    "lora": {"type": "ft", "mode": "lora:2", "lr": 1e-3, "model_seed": 5, **TRAIN},
    "mezo": {"type": "mezo", "lr": 1e-3, "eps": 1e-3, "n_perturbations": 2, **TRAIN},
    "fzoo": {"type": "fzoo", "lr": 1e-3, "eps": 1e-3, "n_directions": 3, "eval_test": True, **TRAIN},
    "mezo-svrg": {"type": "mezo-svrg", "lr": 1e-3, "eps": 1e-3, "anchor_every": 3, **TRAIN},
    "probe": {"type": "linear-probe", "C_grid": [0.1, 1.0]},
    "probe-last": {"type": "linear-probe", "head": "cls", "pooling": "last", "C_grid": [0.1, 1.0]},
    "ft-lm": {"type": "ft", "loss": "lm", "lr": 1e-3, **TRAIN},
    "zeroshot": {"type": "zeroshot"},
    "icl": {"type": "icl"},
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_writes_the_run_directory(models, splits, tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    metrics = _run(models, splits, out, METHODS[method])
    assert read_json(out / "metrics.json") == json.loads(json.dumps(metrics))
    assert SHARED_KEYS | STAGE_KEYS <= set(metrics)
    assert metrics["stage"] == "finetune" and metrics["type"] == METHODS[method]["type"]
    assert metrics["metric"] == "acc" and 0 <= metrics["test_metric"] <= 1 and metrics["n_test"] == 10
    assert metrics["peak_mem_mb"] > 0 and metrics["notes"]
    curve = pd.read_parquet(out / "curve.parquet")
    assert list(curve.columns) == ["step", "split", "loss", "metric", "passes", "train_s"]
    test_rows = curve[curve.split == "test"]
    test_row = test_rows[test_rows.step == metrics["best_step"]].iloc[0]
    assert len(test_rows[test_rows.step == metrics["best_step"]]) == 1
    assert test_row.metric == metrics["test_metric"]
    preds = pd.read_parquet(out / "predictions.parquet")
    assert list(preds.columns) == ["index", "label", "pred", "probs"] and len(preds) == 10
    assert (preds.pred == preds.label).mean() == pytest.approx(metrics["test_metric"])
    assert all(abs(sum(p) - 1) < 1e-6 for p in preds.probs)
    assert (out / "steps").is_dir() and not (out / "resume.pt").exists()
    tensors = load_tensors(out / "model.safetensors")
    assert sum(t.numel() for t in tensors.values()) == metrics["n_trainable"]
    if metrics["type"] in ("ft", "mezo", "fzoo", "mezo-svrg"):
        assert metrics["steps"] == 6 and 2 <= metrics["best_step"] <= 6
        train = curve[curve.split == "train"]
        assert len(train) == 6 and train.passes.is_monotonic_increasing and train.train_s.is_monotonic_increasing
        # passes over a batch of 4 (the full set of 12: 3 batches); ft: one forward+backward a step
        per_run = {"ft": 6, "mezo": 6 * 2 * 2, "fzoo": 6 * (3 + 1), "mezo-svrg": 2 * 2 * 3 + 4 * 4}
        assert metrics["passes"] == train.passes.iloc[-1] == per_run[metrics["type"]]
        assert metrics["pass_unit"] == ("forward+backward" if metrics["type"] == "ft" else "forward")
        dev = curve[curve.split == "dev"].set_index("step")
        assert metrics["best_passes"] == dev.passes[metrics["best_step"]]
        # test at the kept step only, unless eval_test (off by default) scores it at every evaluation
        want = list(dev.index) if METHODS[method].get("eval_test") else [metrics["best_step"]]
        assert list(test_rows.step) == want and list(test_rows.passes) == list(dev.passes[want])


@pytest.mark.parametrize("method", ["ft", "ft-cls", "lora", "probe", "probe-last", "zeroshot"])
def test_run_dir_reloads_to_identical_logits(models, splits, tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    _run(models, splits, out, METHODS[method])
    run = load_run(models["bert"], SST2, out)
    test = run.split(pd.read_parquet(splits["test"]), SST2, "test")
    logits = predict(run.clf, test)
    again = predict(load_finetuned(models["bert"], SST2, out), test)
    assert torch.equal(logits, again)
    preds = pd.read_parquet(out / "predictions.parquet")
    torch.testing.assert_close(logits.softmax(-1).double(), torch.from_numpy(np.stack(preds.probs)), atol=1e-6, rtol=0)


def test_step_checkpoints_load(models, splits, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    _run(models, splits, out, METHODS["ft"])
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["step-2.safetensors", "step-4.safetensors"]
    two, four = (load_finetuned(models["bert"], SST2, out, step=s) for s in (2, 4))
    p2 = dict(two.named_parameters())
    assert any(not torch.equal(p, p2[n]) for n, p in four.named_parameters())
    with pytest.raises(ArtifactError, match="step-3.safetensors: file not found"):
        load_finetuned(models["bert"], SST2, out, step=3)
    with pytest.raises(LmftError, match="checkpoint of task 'sst-2', not 'mr'"):
        load_finetuned(models["bert"], get_task("mr"), out)


class Kill(Exception):
    pass


def _kill_at(step: int):
    def on_step(s: int) -> None:
        if s == step:
            raise Kill(f"simulated kill after step {s}")
    return on_step


@pytest.mark.parametrize("method,model,kill", [("ft", "bert", 4), ("ft", "llama", 5), ("mezo", "bert", 5),
                                               ("fzoo", "bert", 5), ("mezo-svrg", "bert", 5)])
def test_killed_run_resumes_to_identical_results(models, splits, tmp_path: Path, method, model, kill) -> None:
    spec = {**METHODS[method], "save_every": 2, "save_steps": [2, 4]}
    whole = _run(models, splits, tmp_path / "whole" / method, spec, model=model)
    out = tmp_path / "killed" / method
    with pytest.raises(Kill):
        _run(models, splits, out, spec, model=model, on_step=_kill_at(kill))
    assert (out / "resume.pt").exists() and not (out / "metrics.json").exists()
    resumed = _run(models, splits, out, spec, model=model)
    assert resumed["resumed_from"] == 4 and not (out / "resume.pt").exists()
    assert {k: v for k, v in resumed.items() if k not in VOLATILE} == \
        {k: v for k, v in whole.items() if k not in VOLATILE}
    a, b = load_tensors(tmp_path / "whole" / method / "model.safetensors"), load_tensors(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    for name in ("curve.parquet", "predictions.parquet"):  # but the seconds of the steps
        pd.testing.assert_frame_equal(*(pd.read_parquet(d / name).drop(columns=["train_s"], errors="ignore")
                                        for d in (tmp_path / "whole" / method, out)))
    for s in (2, 4):
        sa = load_tensors(tmp_path / "whole" / method / "steps" / f"step-{s}.safetensors")
        sb = load_tensors(out / "steps" / f"step-{s}.safetensors")
        assert all(torch.equal(sa[n], sb[n]) for n in sa)


def test_resume_state_of_other_settings_is_ignored(models, splits, tmp_path: Path) -> None:
    spec = {**METHODS["ft"], "save_every": 2}
    out = tmp_path / "ft"
    with pytest.raises(Kill):
        _run(models, splits, out, spec, on_step=_kill_at(4))
    metrics = _run(models, splits, out, {**spec, "lr": 2e-3})
    assert metrics["resumed_from"] == 0
    fresh = _run(models, splits, tmp_path / "fresh" / "ft", {**spec, "lr": 2e-3})
    assert metrics["test_loss"] == fresh["test_loss"]
    for s in (2, 4):  # the killed run's step files (other settings) were not taken
        a = load_tensors(out / "steps" / f"step-{s}.safetensors")
        b = load_tensors(tmp_path / "fresh" / "ft" / "steps" / f"step-{s}.safetensors")
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert not (out / ".pending-steps").exists()


def test_model_seed_is_separate_from_the_data_seed(models, splits, tmp_path: Path) -> None:
    spec = {"type": "ft", "head": "cls", "lr": 1e-3, "steps": 2, "eval_every": 1, "batch_size": 4}
    a = _run(models, splits, tmp_path / "a", {**spec, "model_seed": 1})
    b = _run(models, splits, tmp_path / "b", {**spec, "model_seed": 2})
    c = _run(models, splits, tmp_path / "c", {**spec, "model_seed": 1})
    assert a["test_loss"] != b["test_loss"] and a["test_loss"] == c["test_loss"]
    # with nothing to initialise (prompt head, all parameters) the training seed still orders the batches
    prompt = {"type": "ft", "lr": 1e-3, "steps": 2, "eval_every": 1, "batch_size": 4}
    d = _run(models, splits, tmp_path / "d", {**prompt, "model_seed": 1})
    e = _run(models, splits, tmp_path / "e", {**prompt, "model_seed": 2})
    assert d["test_loss"] != e["test_loss"] and d["seed"] == e["seed"] == 13


def test_eval_cap_takes_a_fixed_subset(models, splits, tmp_path: Path) -> None:
    metrics = _run(models, splits, tmp_path / "zs", METHODS["zeroshot"], eval_cap=4)
    preds = pd.read_parquet(tmp_path / "zs" / "predictions.parquet")
    assert metrics["n_test"] == 4 and preds["index"].tolist() == cap_rows(10, 4)
    assert cap_rows(10, 4) == sorted(set(cap_rows(10, 4))) and cap_rows(3, 4) == [0, 1, 2]


def test_llama_icl_and_causal_head(models, splits, tmp_path: Path) -> None:
    metrics = _run(models, splits, tmp_path / "icl", {"type": "icl", "demos_per_label": 2}, model="llama")
    assert metrics["head"] == "causal" and metrics["demos_mean"] == 4.0 and metrics["demos_dropped"] == 0
    short = _run(models, splits, tmp_path / "icl-short", {"type": "icl", "demos_per_label": 2, "max_length": 30},
                 model="llama")
    assert short["demos_mean"] < 4 and short["demos_dropped"] > 0


@pytest.mark.parametrize("spec,message", [
    ({"type": "sft"}, "type must be one of"),
    ({"type": "ft", "learning_rate": 1e-3}, r"unknown key\(s\) \['learning_rate'\]"),
    ({"type": "zeroshot", "head": "cls"}, "zeroshot needs the prompt or causal head"),
    ({"type": "ft", "steps": 5, "epochs": 2}, "set steps or epochs, not both"),
    ({"type": "ft", "mode": "last:9", "steps": 2}, "has only 2 transformer blocks"),
    ({"type": "ft", "optimizer": "adam", "steps": 2}, "unknown optimizer"),
    ({"type": "icl", "head": "causal"}, "the causal head needs a causal LM"),
    ({"type": "ft", "pooling": "mean", "steps": 2}, "pooling 'mean' is a setting of the cls head"),
    ({"type": "mezo", "head": "cls", "loss": "lm", "steps": 2}, r"the full-vocabulary \(lm\) loss needs"),
    ({"type": "ft", "loss": "mse", "steps": 2}, "unknown loss 'mse'"),
    ({"type": "linear-probe", "loss": "lm"}, r"unknown key\(s\) \['loss'\]"),
])
def test_bad_method_settings_are_named(models, splits, tmp_path: Path, spec, message) -> None:
    with pytest.raises(LmftError, match=message):
        _run(models, splits, tmp_path / "bad", spec)


def test_pooling_and_loss_are_recorded(models, splits, tmp_path: Path) -> None:
    mezo = resolve_spec({"type": "mezo"})
    assert (mezo["pooling"], mezo["loss"]) == (None, "label-words")
    probe = _run(models, splits, tmp_path / "probe-last", METHODS["probe-last"])
    assert "cls head: last pooling (the model was trained with cls pooling)" in probe["notes"]
    assert any(n.startswith("linear probe on the last token's hidden state") for n in probe["notes"])
    assert load_run(models["bert"], SST2, tmp_path / "probe-last").info["pooling"] == "last"
    default = _run(models, splits, tmp_path / "ft-cls", METHODS["ft-cls"], model="llama")
    assert "cls head: last pooling (as the model was trained)" in default["notes"]
    assert load_run(models["llama"], SST2, tmp_path / "ft-cls").info["pooling"] == "last"  # resolved, not null


def test_epochs_set_the_number_of_steps(models, splits, tmp_path: Path) -> None:
    assert resolve_spec({"type": "ft", "epochs": 2})["steps"] is None
    metrics = _run(models, splits, tmp_path / "ep", {"type": "ft", "epochs": 2, "batch_size": 5, "eval_every": 0})
    assert metrics["steps"] == 6  # 12 training examples in batches of 5: 3 per epoch


def test_cls_head_on_an_encoder_reads_plain_input_unless_asked(models) -> None:
    clf, tok = build_classifier(models["bert"], get_task("snli"), "cls")
    df = pd.DataFrame({"text_a": ["a good film."], "text_b": ["it was fun"], "label": ["entailment"]})
    plain = encode_split(df, get_task("snli"), tok, clf).items[0]
    assert tok.convert_ids_to_tokens(plain.input_ids) == ["[CLS]", "a", "good", "film", ".", "[SEP]", "it", "was",
                                                          "fun", "[SEP]"]
    assert plain.token_type_ids == [0] * 6 + [1] * 4 and plain.mask_pos == 0
    prompted = encode_split(df, get_task("snli"), tok, clf, prompt=True).items[0]
    assert "[MASK]" in tok.convert_ids_to_tokens(prompted.input_ids)


def test_finetune_targets() -> None:
    config = {"models": {"a": {}, "b": {}}, "tasks": ["t1", "t2"], "kshot": {"k": [16], "seeds": [1, 2]},
              "results_dir": "res",
              "finetune": {"methods": {"ft": {"type": "ft"}, "icl": {"type": "icl", "models": ["b"]}}}}
    targets = finetune_targets(config)
    assert len(targets) == 2 * 2 * 2 + 1 * 2 * 2
    config["finetune"]["methods"]["icl"] |= {"tasks": ["t2"], "seeds": [2]}
    assert [t for t in finetune_targets(config) if "/icl/" in t] == ["res/finetune/b/t2/16-2/icl/metrics.json"]
    assert "seeds" not in job_spec(config["finetune"]["methods"]["icl"])  # which runs, not how: no rerun
    assert "res/finetune/b/t2/16-2/icl/metrics.json" in targets
    assert not any("/a/" in t and t.endswith("/icl/metrics.json") for t in targets)
    assert finetune_targets({**config, "finetune": {}}) == []
    assert set(TYPES) == {"ft", "mezo", "fzoo", "mezo-svrg", "linear-probe", "zeroshot", "icl"}
