"""Interpolation curves between checkpoints (lmft.interpolate.stage) on a tiny prompt-BERT."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from tiny import make_tiny_model_dir, tiny_prompt_split, write_tiny_splits
from torch import nn
from torch.func import functional_call

from lmft.data.kshot import cap_rows
from lmft.data.tasks import get_task
from lmft.finetune.runs import build_for_run, load_run
from lmft.finetune.stage import run_finetune
from lmft.interpolate.connectivity import (
    alphas,
    barrier,
    curve_metrics,
    endpoint_distance,
    forgetting,
    interpolation_curve,
    lerp_state,
    lora_scaling,
    plot_curve,
    pretrained_endpoint,
    relative_distance,
    weight_distance,
)
from lmft.interpolate.plan import interpolate_jobs
from lmft.interpolate.stage import Endpoint, run_interpolate
from lmft.io import LmftError, read_json
from lmft.models.evaluate import evaluate, predict
from lmft.models.substitute import Substituted
from lmft.paths import finetune_run, interpolate_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny prompt classifier and two endpoint states of its encoder blocks: pre-trained and perturbed."""
    _, clf, split = tiny_prompt_split(tmp_path_factory.mktemp("interp"), "dev")
    gen = torch.Generator().manual_seed(0)
    a = {n: p.detach().clone() for n, p in clf.named_parameters() if ".encoder." in n}
    b = {n: t + 0.3 * torch.randn(t.shape, generator=gen) for n, t in a.items()}
    return {"clf": clf, "split": split, "a": a, "b": b}


def test_alpha_zero_and_one_reproduce_the_endpoints_exactly(tiny):
    clf, split, a, b = tiny["clf"], tiny["split"], tiny["a"], tiny["b"]
    at_a = predict(clf, split)
    with torch.no_grad():
        for n, p in clf.named_parameters():
            if n in b:
                p.copy_(b[n])
    at_b = predict(clf, split)
    with torch.no_grad():
        for n, p in clf.named_parameters():
            if n in a:
                p.copy_(a[n])
    assert not torch.equal(at_a, at_b)
    assert torch.equal(predict(Substituted(clf, lerp_state(a, b, 0.0)), split), at_a)
    assert torch.equal(predict(Substituted(clf, lerp_state(a, b, 1.0)), split), at_b)
    out = interpolation_curve(clf, a, b, {"dev": split}, "acc", points=3, track=split)
    ends = out.curve.set_index("alpha")
    assert ends.loc[0.0, "loss"] == evaluate(clf, split, "acc").loss
    assert list(out.curve.columns) == ["alpha", "split", "loss", "metric", "ece"] and len(out.curve) == 3
    assert len(out.examples) == 3 * len(split) and set(out.examples["alpha"]) == {0.0, 0.5, 1.0}
    assert torch.equal(predict(clf, split), at_a)  # the model itself is untouched
    # per example: the losses average to the curve's, the correct ones to its accuracy; rows numbered as given
    losses = out.losses
    assert list(losses.columns) == ["alpha", "split", "index", "loss", "correct"] and len(losses) == 3 * len(split)
    assert [str(losses[c].dtype) for c in ("alpha", "index", "loss", "correct")] == ["float64", "int64", "float64", "bool"]
    assert pd.api.types.is_string_dtype(losses["split"])
    by_alpha = losses.groupby("alpha").agg(loss=("loss", "mean"), metric=("correct", "mean"))
    pd.testing.assert_frame_equal(by_alpha, out.curve.set_index("alpha")[["loss", "metric"]], rtol=1e-6)
    at_a_loss = torch.nn.functional.cross_entropy(at_a.double(), torch.tensor(split.labels), reduction="none")
    assert losses[losses["alpha"] == 0.0]["loss"].to_numpy() == pytest.approx(at_a_loss.numpy(), rel=1e-12)
    numbered = interpolation_curve(clf, a, b, {"dev": split}, "acc", points=2, rows={"dev": range(10, 10 + len(split))})
    assert numbered.losses["index"].tolist() == list(range(10, 10 + len(split))) * 2
    with pytest.raises(LmftError, match="row indices for the"):
        interpolation_curve(clf, a, b, {"dev": split}, "acc", points=2, rows={"dev": [0]})


def test_identical_endpoints_have_no_barrier(tiny):
    out = interpolation_curve(tiny["clf"], tiny["a"], tiny["a"], {"dev": tiny["split"]}, "acc", points=4)
    assert out.curve["loss"].nunique() == 1 and out.examples is None
    m = curve_metrics(out.curve)
    assert m["dev_loss_barrier"] == 0 and m["dev_metric_barrier"] == 0
    d = endpoint_distance(tiny["a"], tiny["a"])
    assert d["l2"] == 0 and d["cosine"] == pytest.approx(1.0)


def test_barrier_of_a_hand_made_curve():
    assert barrier([0, 0.5, 1], [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert barrier([0, 0.25, 1], [0.8, 0.5, 0.9], higher_is_better=True) == pytest.approx(0.825 - 0.5)
    assert barrier([0, 0.5, 1], [1.0, 0.0, 2.0]) == pytest.approx(-1.5)  # below the chord: no barrier, by 1.5
    assert barrier([0, 0.5, 1], [0.9, 1.0, 0.7], higher_is_better=True) == pytest.approx(-0.2)
    with pytest.raises(LmftError, match="must increase"):
        barrier([0, 1, 0.5], [1, 2, 3])
    with pytest.raises(LmftError, match=">= 3 matching alphas and values \\(an interior point\\)"):
        barrier([0, 1], [1, 2])


def test_curve_metrics_and_forgetting_on_hand_made_tables(tmp_path):
    curve = pd.DataFrame({"alpha": [0.0, 0.5, 1.0] * 2, "split": ["dev"] * 3 + ["test"] * 3,
                          "loss": [1.0, 2.0, 1.0, 0.5, 0.5, 0.5], "metric": [0.9, 0.6, 0.8, 0.7, 0.7, 0.7]})
    m = curve_metrics(curve)
    assert m["dev_loss_barrier"] == pytest.approx(1.0) and m["dev_metric_barrier"] == pytest.approx(0.25)
    assert m["test_loss_barrier"] == 0 and m["dev_metric_a"] == 0.9 and m["dev_metric_b"] == 0.8
    assert m["dev_metric_mid"] == 0.6
    examples = pd.DataFrame({"alpha": [0.0, 0.5, 1.0] * 3, "example": [0] * 3 + [1] * 3 + [2] * 3,
                             "correct": [True, False, True, True, True, True, False, False, True]})
    assert forgetting(examples) == {"train_right_both_ends": 2, "train_forgotten": 1}
    plot_curve(curve, tmp_path / "plot.png", "tiny: a -> b", "acc")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_endpoint_distance():
    d = endpoint_distance({"x": torch.tensor([3.0, 0.0])}, {"x": torch.tensor([0.0, 4.0])})
    assert d == {"l2": pytest.approx(5.0), "cosine": 0.0, "norm_a": 3.0, "norm_b": 4.0}
    two = endpoint_distance({"x": torch.tensor([1.0]), "y": torch.tensor([1.0])},
                            {"x": torch.tensor([2.0]), "y": torch.tensor([2.0])})
    assert two["cosine"] == pytest.approx(1.0) and two["l2"] == pytest.approx(2**0.5)


def test_weight_distance_counts_lora_by_its_update_and_relative_distance():
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    net = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=6, target_modules=["0"]),
                                  nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)))
    assert lora_scaling(net) == {"0": 3.0}
    names = ["0.lora_A.default.weight", "0.lora_B.default.weight", "2.bias"]
    x = {n: torch.randn(p.shape, dtype=torch.float64) for n, p in net.named_parameters() if n in names}
    y = {n: torch.randn(t.shape, dtype=torch.float64) for n, t in x.items()}
    a_x, b_x, a_y, b_y = x[names[0]], x[names[1]], y[names[0]], y[names[1]]
    update = 3.0 * (b_x @ a_x - b_y @ a_y)  # the [5, 6] weights the adapters add
    expected = (update.double().square().sum() + (x["2.bias"] - y["2.bias"]).double().square().sum()).sqrt()
    assert weight_distance(x, y, lora_scaling(net)) == pytest.approx(float(expected), rel=1e-12)
    start = pretrained_endpoint({"2.bias": torch.zeros(3, dtype=torch.float64)}, x)  # B = 0: no update, whatever A is
    d0 = torch.cat([(3.0 * b_x @ a_x).flatten(), x["2.bias"]]).double().norm()
    assert weight_distance(x, start, lora_scaling(net)) == pytest.approx(float(d0), rel=1e-12)
    plain = {"w": torch.tensor([3.0, 0.0])}, {"w": torch.tensor([0.0, 4.0])}
    assert weight_distance(*plain, {}) == pytest.approx(endpoint_distance(*plain)["l2"])
    with pytest.raises(LmftError, match="no LoRA scaling"):
        weight_distance(x, y, {})

    assert relative_distance(1.0, 4.0, 2.0) == {"distance_a0": 4.0, "distance_b0": 2.0, "distance_ab": 1.0,
                                                "relative_distance": 0.25, "relative_to": "a"}
    assert relative_distance(2.0, 0.0, 2.0)["relative_distance"] == 1.0  # a is theta0: relative to b
    assert relative_distance(2.0, 0.0, 2.0)["relative_to"] == "b"
    assert relative_distance(0.0, 0.0, 0.0)["relative_distance"] is None


def test_lora_pretrained_endpoint_is_the_pretrained_model():
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        pre_out = net(x)
    net = inject_adapter_in_model(LoraConfig(r=2, target_modules=["0", "2"]), net)
    ft = {n: p.detach() + 0.5 if "lora_B" in n else p.detach() for n, p in net.named_parameters() if "lora_" in n}
    start = pretrained_endpoint({}, ft)
    assert all(torch.equal(start[n], ft[n]) for n in ft if "lora_A" in n)
    with torch.no_grad():
        assert torch.equal(functional_call(net, start, (x,)), pre_out)
        assert not torch.equal(functional_call(net, ft, (x,)), pre_out)
        # the merged weight moves linearly: the first layer's output is affine in alpha
        layer = {t: {k.removeprefix("0."): v for k, v in lerp_state(start, ft, t).items() if k.startswith("0.")}
                 for t in (0.0, 0.5, 1.0)}
        h = {t: functional_call(net[0], state, (x,)) for t, state in layer.items()}
    assert torch.allclose(h[0.5], (h[0.0] + h[1.0]) / 2, atol=1e-6)


def test_bad_endpoints_raise_clear_errors(tiny):
    with pytest.raises(LmftError, match="different tensors"):
        interpolation_curve(tiny["clf"], tiny["a"], {"x": torch.zeros(1)}, {}, "acc")
    with pytest.raises(LmftError, match="points must be"):
        alphas(1)
    with pytest.raises(LmftError, match="not parameters of the model"):
        interpolation_curve(tiny["clf"], {"x": torch.zeros(1)}, {"x": torch.ones(1)}, {}, "acc")
    with pytest.raises(LmftError, match="no pre-trained value"):
        pretrained_endpoint({}, {"w": torch.zeros(1)})
    with pytest.raises(LmftError, match="is \\(2,\\) in a"):
        endpoint_distance({"w": torch.zeros(2)}, {"w": torch.zeros(3)})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny k-shot files and fine-tuning runs: two full ones (one with step checkpoints), LoRA, zero-shot."""
    root = tmp_path_factory.mktemp("interp-runs")
    model_json = make_tiny_model_dir(root, "bert")
    splits = write_tiny_splits(root)
    train = {"steps": 4, "eval_every": 2, "batch_size": 4}
    specs = {"a": {"type": "ft", "lr": 1e-3, "save_steps": [2, 4], **train}, "b": {"type": "ft", "lr": 3e-3, **train},
             "lora": {"type": "ft", "mode": "lora:2", "lr": 1e-3, **train}, "zs": {"type": "zeroshot"}}
    dirs = {}
    for method, spec in specs.items():
        dirs[method] = root / "runs" / method
        run_finetune(model_json, get_task("sst-2"), splits, dirs[method], model="tiny", k=6, seed=13, method=method,
                     spec=spec)
    return {"model_json": model_json, "splits": splits, "dirs": dirs}


def _interpolate(runs, out, a, b, pair, **kw):
    return run_interpolate(runs["model_json"], get_task("sst-2"), a, b, runs["splits"], out, model="tiny", k=6,
                           seed=13, pair=pair, **{"points": 3, **kw})


def test_run_interpolate_pairs_end_to_end(runs, tmp_path):
    sst2, d = get_task("sst-2"), runs["dirs"]
    ft, zs = read_json(d["a"] / "metrics.json"), read_json(d["zs"] / "metrics.json")
    pairs = {"pre-ft": (Endpoint(d["a"], sst2, pretrained=True), Endpoint(d["a"], sst2)),
             "runs": (Endpoint(d["a"], sst2), Endpoint(d["b"], sst2)),
             "steps": (Endpoint(d["a"], sst2, step=2), Endpoint(d["a"], sst2, step=4)),
             "lora-pre-ft": (Endpoint(d["lora"], sst2, pretrained=True), Endpoint(d["lora"], sst2))}
    for pair, (a, b) in pairs.items():
        out = tmp_path / pair
        m = _interpolate(runs, out, a, b, pair)
        assert read_json(out / "metrics.json") == json.loads(json.dumps(m))
        curve = pd.read_parquet(out / "curve.parquet")
        assert list(curve.columns) == ["alpha", "split", "loss", "metric", "ece"] and len(curve) == 6
        losses = pd.read_parquet(out / "losses.parquet")  # 3 alphas x (8 dev + 10 test rows)
        assert list(losses.columns) == ["alpha", "split", "index", "loss", "correct"] and len(losses) == 3 * 18
        assert losses[losses["split"] == "dev"]["index"].tolist() == list(range(8)) * 3
        test_b = losses[(losses["split"] == "test") & (losses["alpha"] == 1.0)]
        assert test_b["correct"].mean() == pytest.approx(m["test_metric_b"])
        assert len(pd.read_parquet(out / "examples.parquet")) == 3 * 12
        assert (out / "plot.png").stat().st_size > 0
        assert m["stage"] == "interpolate" and m["pair"] == m["method"] == pair and m["l2"] > 0
        assert math.isfinite(m["dev_loss_barrier"]) and 0 <= m["train_forgotten"] <= m["train_right_both_ends"] <= 12
    pre_ft = read_json(tmp_path / "pre-ft" / "metrics.json")
    assert pre_ft["test_metric_b"] == ft["test_metric"] and pre_ft["test_metric_a"] == zs["test_metric"]
    lora = read_json(tmp_path / "lora-pre-ft" / "metrics.json")
    assert lora["test_metric_a"] == zs["test_metric"]
    assert lora["test_metric_b"] == read_json(d["lora"] / "metrics.json")["test_metric"]
    # with eval_cap the test examples are the fine-tuning stage's fixed subset, numbered by their rows
    _interpolate(runs, tmp_path / "capped", *pairs["runs"], "capped", eval_cap=6)
    capped = pd.read_parquet(tmp_path / "capped" / "losses.parquet")
    assert capped[capped["split"] == "test"]["index"].tolist() == cap_rows(10, 6) * 3 != list(range(6)) * 3

    # distances from theta0, by hand: the runs' tuned tensors as built before training
    theta0 = {n: p.detach() for n, p in build_for_run(runs["model_json"], sst2, load_run(
        runs["model_json"], sst2, d["a"]).info)[0].named_parameters()}
    tuned = {r: {n: p.detach() for n, p in load_run(runs["model_json"], sst2, d[r]).clf.named_parameters()
                 if p.requires_grad} for r in ("a", "b")}

    def norm(x, y):
        return float(torch.cat([(x[n] - y[n]).double().flatten() for n in x]).norm())

    a0, b0 = norm(tuned["a"], theta0), norm(tuned["b"], theta0)
    assert pre_ft["distance_a0"] == 0 and pre_ft["distance_b0"] == pytest.approx(a0, rel=1e-9)
    assert (pre_ft["relative_to"], pre_ft["relative_distance"]) == ("b", pytest.approx(1.0))
    assert pre_ft["distance_ab"] == pytest.approx(pre_ft["l2"], rel=1e-9)
    runs_m = read_json(tmp_path / "runs" / "metrics.json")
    assert (runs_m["distance_a0"], runs_m["distance_b0"]) == (pytest.approx(a0, rel=1e-9), pytest.approx(b0, rel=1e-9))
    assert runs_m["relative_distance"] == pytest.approx(norm(tuned["a"], tuned["b"]) / a0, rel=1e-9)
    assert runs_m["relative_to"] == "a" and runs_m["distance_ab"] == pytest.approx(runs_m["l2"], rel=1e-9)
    # LoRA: the adapters' update scaling * B A ([out, in] per layer), 0 at the start whatever A is
    lora_run = load_run(runs["model_json"], sst2, d["lora"]).clf
    params, scale = dict(lora_run.named_parameters()), lora_scaling(lora_run)
    update = [scale[n.removesuffix(".lora_A.default.weight")]
              * (params[n.replace("lora_A", "lora_B")] @ params[n]).detach().double().flatten()
              for n in params if n.endswith(".lora_A.default.weight")]
    assert len(update) > 0 and set(scale.values()) == {2.0}  # lora_alpha = 2 r
    assert lora["distance_a0"] == 0 and lora["distance_b0"] == pytest.approx(float(torch.cat(update).norm()), rel=1e-9)
    assert lora["relative_to"] == "b" and lora["relative_distance"] == pytest.approx(1.0)


def test_run_interpolate_rejects_incompatible_endpoints(runs, tmp_path):
    sst2, d = get_task("sst-2"), runs["dirs"]
    with pytest.raises(LmftError, match="differ in mode"):
        _interpolate(runs, tmp_path, Endpoint(d["a"], sst2), Endpoint(d["lora"], sst2), "bad")
    with pytest.raises(LmftError, match="tuned no parameters"):
        _interpolate(runs, tmp_path, Endpoint(d["zs"], sst2), Endpoint(d["a"], sst2), "bad")


def test_interpolate_jobs_from_the_config():
    config = {"models": {"m1": {}, "m2": {}}, "tasks": ["t1", "t2"], "kshot": {"k": [16], "seeds": [13, 21]},
              "finetune": {"methods": {"ft": {"type": "ft", "save_steps": [100]}, "ft2": {"type": "ft"},
                                       "lora": {"type": "ft", "models": ["m1"]}}},
              "interpolate": {"pairs": {
                  "pre-ft": {"a": {"method": "ft", "pretrained": True}, "b": {"method": "ft"}},
                  "steps": {"a": {"method": "ft", "step": 100}, "b": {"method": "ft"}, "seed": 21},
                  "tasks": {"a": {"method": "ft", "task": "t1"}, "b": {"method": "ft", "task": "t2"}},
                  "lora": {"a": {"method": "lora", "pretrained": True}, "b": {"method": "lora"}, "tasks": ["t2"]}}}}
    jobs = interpolate_jobs(config)
    got = {(j["model"], j["task"], j["pair"]) for j in jobs}
    assert got == {(m, t, p) for m in ("m1", "m2") for t in ("t1", "t2") for p in ("pre-ft", "steps", "tasks")} | {
        ("m1", "t2", "lora")}
    job = next(j for j in jobs if j["pair"] == "tasks" and j["task"] == "t1" and j["model"] == "m1")
    assert job["a"]["task"] == "t1" and job["b"]["task"] == "t2" and (job["k"], job["seed"]) == (16, 13)
    b = job["b"]
    assert finetune_run("results", "m1", b["task"], b["k"], b["seed"], b["method"]) == "results/finetune/m1/t2/16-13/ft"
    assert interpolate_dir("results", job["model"], job["task"], job["pair"]) == "results/interpolate/m1/t1/tasks"
    steps = next(j for j in jobs if j["pair"] == "steps")
    assert steps["a"]["step"] == 100 and steps["a"]["seed"] == 21 and steps["b"]["step"] is None
    bad = {"a": {"method": "ft", "step": 7}, "b": {"method": "ft"}}
    for pairs, message in (({"x": bad}, "not in finetune.methods.ft.save_steps"),
                           ({"x": {"a": {"method": "nope"}, "b": {"method": "ft"}}}, "not one of finetune.methods"),
                           ({"x": {"a": {"method": "ft"}}}, "needs endpoints a and b"),
                           ({"x": {"a": {"method": "ft", "epoch": 1}, "b": {"method": "ft"}}}, "unknown \\['epoch'\\]"),
                           ({"x": {"a": {"method": "ft"}, "b": {"method": "ft"}, "alpha": 2}}, "unknown key")):
        with pytest.raises(LmftError, match=message):
            interpolate_jobs({**config, "interpolate": {"pairs": pairs}})
    with pytest.raises(LmftError, match="not among models"):
        interpolate_jobs({**config, "interpolate": {"models": ["m3"], "pairs": {}}})
    narrowed = interpolate_jobs({**config, "interpolate": {**config["interpolate"], "models": ["m2"]}})
    assert {j["model"] for j in narrowed} == {"m2"} and "lora" not in {j["pair"] for j in narrowed}
