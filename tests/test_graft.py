"""Grafting masks (lmft.graft.stage) and their overlap (lmft.graft.overlap) on a tiny prompt-BERT."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import make_tiny_model_dir, tiny_frame, tiny_prompt_split, write_tiny_splits

from lmft.config import load_config, validate_schema
from lmft.data.tasks import get_task
from lmft.finetune.methods import job_spec, resolve_spec
from lmft.finetune.runs import load_run
from lmft.finetune.stage import run_finetune
from lmft.graft.mask import (
    base_patch,
    graft,
    kept_fraction,
    mask_count,
    mask_moved,
    relax_mask,
    select_graftable,
    soft_graft,
    split_state,
)
from lmft.graft.overlap import mask_overlap
from lmft.graft.plan import OPTIONS, graft_jobs, graft_options, overlap_groups, overlap_path, reference_options
from lmft.graft.stage import REFERENCE_KEYS, load_mask, run_graft, run_reference, save_mask
from lmft.graft.topk import top_k_mask
from lmft.io import ArtifactError, LmftError, read_json, save_tensors, write_json, write_parquet
from lmft.models.checkpoint import apply_state
from lmft.models.evaluate import evaluate, predict
from lmft.models.heads import build_classifier
from lmft.models.substitute import Substituted, substitute
from lmft.paths import graft_dir, graft_reference
from lmft.schema import SCHEMA, section

EXCLUDE = section({}, "graft")["exclude"]  # the schema's default: embeddings and heads


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A pre-trained tiny prompt classifier, its fine-tuned state (every tensor tuned) and a split."""
    model_json, clf, split = tiny_prompt_split(tmp_path_factory.mktemp("graft"), "train")
    pre = {n: p.detach().clone() for n, p in clf.named_parameters()}
    torch.manual_seed(0)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    clf.train()
    for _ in range(15):
        batch = split.batch(list(range(len(split))))
        labels = batch.pop("labels")
        loss = torch.nn.functional.cross_entropy(clf(**batch), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    ft = {n: p.detach().clone() for n, p in clf.named_parameters()}
    return {"model_json": model_json, "task": get_task("sst-2"), "pre": pre, "ft": ft, "split": split,
            "ft_logits": predict(clf, split)}


def fresh(tiny, rest=None):
    """The pre-trained classifier, with the non-graftable tuned tensors ``rest`` loaded."""
    clf, _ = build_classifier(tiny["model_json"], tiny["task"], "prompt")
    apply_state(clf, rest or {})
    return clf


def theta0_of(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in names}


def test_pretrained_classifier_is_deterministic(tiny):
    assert all(torch.equal(p, tiny["pre"][n]) for n, p in fresh(tiny).named_parameters())
    assert any(not torch.equal(tiny["pre"][n], tiny["ft"][n]) for n in tiny["ft"])


def test_sparsity_one_and_zero_reproduce_finetuned_and_pretrained_logits(tiny):
    model = fresh(tiny)
    pre_logits = predict(model, tiny["split"])
    theta0 = theta0_of(model, tiny["ft"])
    for s, want in ((1.0, tiny["ft_logits"]), (0.0, pre_logits)):
        mask = base_patch(theta0, tiny["ft"], s)
        assert torch.equal(predict(Substituted(model, graft(theta0, tiny["ft"], mask)), tiny["split"]), want)
    assert torch.equal(predict(model, tiny["split"]), pre_logits)  # the model itself never changed


def test_default_exclusion_keeps_embeddings_and_head_finetuned(tiny):
    graftable, rest = split_state(tiny["ft"], EXCLUDE)
    assert any("embeddings" in n for n in rest) and any(".cls.predictions" in n for n in rest)
    assert all("embeddings" not in n and ".cls." not in n for n in graftable)
    model = fresh(tiny, rest)
    ref_logits = predict(model, tiny["split"])
    theta0 = theta0_of(model, graftable)
    full = graft(theta0, graftable, base_patch(theta0, graftable, 1.0))
    assert torch.equal(predict(Substituted(model, full), tiny["split"]), tiny["ft_logits"])
    empty = graft(theta0, graftable, base_patch(theta0, graftable, 0.0))
    assert torch.equal(predict(Substituted(model, empty), tiny["split"]), ref_logits)


def test_classifier_names_of_other_heads_are_excluded():
    names = ["linear.weight", "linear.bias", "backbone.lm_head.dense.weight", "backbone.model.embed_tokens.weight",
             "backbone.transformer.wte.weight", "backbone.transformer.h.0.attn.c_attn.weight",
             "backbone.encoder.layer.0.attention.self.query.weight"]
    assert select_graftable(names, EXCLUDE) == names[-2:]
    assert select_graftable(names, exclude=()) == names


@pytest.mark.parametrize("sparsity", [0.0, 1e-5, 1e-4, 0.003, 0.01, 0.37, 0.5, 1.0])
def test_base_patch_keeps_exactly_the_requested_count(tiny, sparsity):
    graftable, _ = split_state(tiny["ft"], EXCLUDE)
    n = sum(t.numel() for t in graftable.values())
    mask = base_patch(tiny["pre"], graftable, sparsity)
    want = max(round(sparsity * n), 1) if sparsity else 0  # at least one entry at a small model's 1e-4
    assert sum(int(m.sum()) for m in mask.values()) == mask_count(sparsity, n) == want
    assert all(m.dtype == torch.bool and m.shape == graftable[k].shape for k, m in mask.items())


def brute_top_k(scores, k):
    """Reference: stable sort of all entries by value (descending), then position."""
    flat = torch.cat([t.flatten() for t in scores.values()])
    order = sorted(range(len(flat)), key=lambda i: (-flat[i].item(), i))
    keep = torch.zeros(len(flat), dtype=torch.bool)
    keep[order[:k]] = True
    out, start = {}, 0
    for n, t in scores.items():
        out[n] = keep[start:start + t.numel()].view(t.shape)
        start += t.numel()
    return out


def test_top_k_matches_a_sort_with_ties_broken_by_position():
    gen = torch.Generator().manual_seed(1)
    scores = {"a": torch.randint(-3, 4, (5, 7), generator=gen).float() / 2,
              "b": torch.randn(13, generator=gen), "c": torch.tensor([0.0, -0.0, 1.5, 1.5, -1e-30, 1e30])}
    for k in (0, 1, 7, 20, 33, 54):
        got, want = top_k_mask(scores, k), brute_top_k(scores, k)
        assert all(torch.equal(got[n], want[n]) for n in scores), k


def test_base_patch_is_the_largest_movement(tiny):
    graftable, _ = split_state(tiny["ft"], EXCLUDE)
    mask = base_patch(tiny["pre"], graftable, 0.02)
    moved = {n: (graftable[n] - tiny["pre"][n]).abs() for n in graftable}
    inside = torch.cat([moved[n][mask[n]] for n in graftable])
    outside = torch.cat([moved[n][~mask[n]] for n in graftable])
    assert inside.min() >= outside.max()
    want = brute_top_k(moved, int(sum(m.sum() for m in mask.values())))
    assert all(torch.equal(mask[n], want[n]) for n in graftable)


def test_soft_graft_gradient_matches_autograd():
    gen = torch.Generator().manual_seed(0)
    s, t0, ft = (torch.rand(4, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    base = torch.rand(4, 3, generator=gen) > 0.5
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: soft_graft(x, t0, ft, base, 0.7), (s,))
    gamma = base + (1 - 2 * base.double()) * torch.sigmoid(s - 0.7)  # the paper's form
    assert torch.allclose(soft_graft(s, t0, ft, base, 0.7), t0 + gamma * (ft - t0))


def test_soft_graft_starts_at_the_base_patch():
    gen = torch.Generator().manual_seed(0)
    t0, ft, s = torch.randn(50, generator=gen), torch.randn(50, generator=gen), torch.rand(50, generator=gen)
    base = torch.arange(50) % 3 == 0
    hard = graft({"w": t0}, {"w": ft}, {"w": base})["w"]
    assert torch.allclose(soft_graft(s, t0, ft, base, 10.0), hard, atol=1e-3)


def relax(tiny, **kw):
    graftable, rest = split_state(tiny["ft"], EXCLUDE)
    model = fresh(tiny, rest)
    theta0 = theta0_of(model, graftable)
    base = base_patch(theta0, graftable, 0.01)
    out = relax_mask(model, graftable, base, tiny["split"],
                     **{"epochs": 3, "lr": 1e8, "sigmoid_bias": 10.0, "batch_size": 6, **kw})
    return model, theta0, graftable, base, out


def hard_loss(model, theta0, ft, mask, split):
    return evaluate(Substituted(model, graft(theta0, ft, mask)), split, "acc").loss


def test_relaxation_keeps_count_lowers_training_loss_and_is_deterministic(tiny):
    model, theta0, ft, base, out = relax(tiny)
    k = sum(int(m.sum()) for m in base.values())
    assert sum(int(m.sum()) for m in out.mask.values()) == k
    assert any(not torch.equal(out.mask[n], base[n]) for n in base)  # it moved off the base patch
    assert [h["epoch"] for h in out.history] == [1, 2, 3] and out.epoch == 3
    assert out.history[-1]["soft_train_loss"] < out.history[0]["soft_train_loss"]
    split = tiny["split"]
    assert hard_loss(model, theta0, ft, out.mask, split) < hard_loss(model, theta0, ft, base, split)
    again = relax(tiny)[-1]
    assert all(torch.equal(again.mask[n], out.mask[n]) for n in base) and again.history == out.history
    other = relax(tiny, seed=1)[-1]
    assert other.history != out.history


def test_relaxation_leaves_the_model_as_it_was(tiny):
    graftable, rest = split_state(tiny["ft"], EXCLUDE)
    model = fresh(tiny, rest)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model.backbone.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    theta0 = theta0_of(model, graftable)
    relax_mask(model, graftable, base_patch(theta0, graftable, 0.05), tiny["split"], epochs=1, lr=1e9,
               sigmoid_bias=10.0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags and model.training


def test_relaxation_selects_the_best_epoch(tiny):
    scores = iter([0.2, 0.9, 0.9, 0.1])
    seen = []

    def select(mask):
        seen.append({n: m.clone() for n, m in mask.items()})
        return next(scores)

    out = relax(tiny, epochs=4, select=select)[-1]
    assert out.epoch == 2 and [h["select"] for h in out.history] == [0.2, 0.9, 0.9, 0.1]
    assert all(torch.equal(out.mask[n], seen[1][n]) for n in out.mask)


def test_mask_file_roundtrip_and_errors(tmp_path):
    mask = {"a.weight": torch.tensor([[True, False], [False, True]]), "b.bias": torch.zeros(3, dtype=torch.bool),
            "c": torch.tensor(True)}
    path = tmp_path / "mask.safetensors"
    save_mask(mask, path, {"sparsity": 0.5})
    back = load_mask(path)
    assert list(back) == list(mask) and all(torch.equal(back[n], mask[n]) for n in mask)
    save_tensors({"a.weight": torch.tensor([0, 3])}, tmp_path / "plain.safetensors")
    with pytest.raises(ArtifactError, match="not a graft mask"):
        load_mask(tmp_path / "plain.safetensors")
    save_tensors({"a": torch.tensor([5])}, tmp_path / "bad.safetensors",
                 metadata={"format": "lmft-graft-indices", "shapes": '{"a": [2, 2]}'})
    with pytest.raises(ArtifactError, match="outside its shape"):
        load_mask(tmp_path / "bad.safetensors")
    with pytest.raises(ArtifactError, match="not found"):
        load_mask(tmp_path / "missing.safetensors")


def test_bad_input_raises_clear_errors(tiny):
    with pytest.raises(LmftError, match="sparsity must be in"):
        mask_count(1.5, 10)
    with pytest.raises(LmftError, match="leave no graftable tensor"):
        select_graftable(["backbone.bert.embeddings.x"], EXCLUDE)
    with pytest.raises(LmftError, match="bad exclude pattern"):
        select_graftable(["a"], ["("])
    with pytest.raises(LmftError, match="not parameters of the pre-trained model"):
        base_patch({"w": torch.zeros(2)}, {"w.lora_A.default.weight": torch.zeros(2)}, 0.5)
    with pytest.raises(LmftError, match="fine-tuned but"):
        base_patch({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5)
    with pytest.raises(LmftError, match="NaN"):
        top_k_mask({"w": torch.tensor([1.0, math.nan])}, 1)
    with pytest.raises(LmftError, match="covers"):
        graft({"w": torch.zeros(2)}, {"w": torch.ones(2)}, {"v": torch.ones(2, dtype=torch.bool)})
    graftable, _ = split_state(tiny["ft"], EXCLUDE)
    with pytest.raises(LmftError, match="epochs must be"):
        relax_mask(fresh(tiny), graftable, base_patch(tiny["pre"], graftable, 0.1), tiny["split"], epochs=0, lr=1.0,
                   sigmoid_bias=10.0)


def test_mask_count_rounds_but_keeps_one_entry_for_a_positive_sparsity():
    assert [mask_count(s, 5000) for s in (0.0, 1e-5, 1e-4, 4e-4, 1e-3, 1.0)] == [0, 1, 1, 2, 5, 5000]
    assert mask_count(1e-4, 106_000_000) == 10_600 and mask_count(1e-4, 1) == 1


def test_kept_fraction():
    assert kept_fraction(0.8, 0.5, 0.9) == pytest.approx(0.75)
    assert kept_fraction(0.5, 0.5, 0.5) is None


def test_overlap_of_hand_made_masks():
    t = torch.tensor
    masks = {"x": {"w": t([True, True, False, False]), "b": t([False, False])},
             "y": {"w": t([False, True, True, False]), "b": t([False, False])},
             "z": {"w": t([False, False, False, False]), "b": t([True, True])}}
    df = mask_overlap(masks).set_index(["a", "b"])
    xy = df.loc[("x", "y")]
    assert (xy["intersection"], xy["union"], xy["count_a"], xy["n"]) == (1, 3, 2, 6)
    assert xy["jaccard"] == pytest.approx(1 / 3) and xy["frac_a_in_b"] == 0.5 and xy["frac_b_in_a"] == 0.5
    assert xy["expected_intersection"] == pytest.approx(2 * 2 / 6)
    assert df.loc[("x", "z"), "jaccard"] == 0 and list(df.index) == [("x", "y"), ("x", "z"), ("y", "z")]
    with pytest.raises(LmftError, match="at least two"):
        mask_overlap({"x": masks["x"]})
    with pytest.raises(LmftError, match="different tensors"):
        mask_overlap({"x": masks["x"], "v": {"w": masks["x"]["w"]}})


def test_substitute_swaps_tied_weights_and_restores_every_slot(tiny):
    model = fresh(tiny)
    emb = model.backbone.bert.embeddings.word_embeddings
    dec = model.backbone.cls.predictions.decoder
    assert dec.weight is emb.weight and model.lm_head is model.backbone.cls  # one head, two names
    before = dict(model.named_parameters(remove_duplicate=False))
    new = {n: t + 1 for n, t in tiny["pre"].items()}
    with substitute(model, new):
        assert dec.weight is new["backbone.bert.embeddings.word_embeddings.weight"] and emb.weight is dec.weight
    assert all(p is before[n] for n, p in model.named_parameters(remove_duplicate=False))
    with pytest.raises(LmftError, match="not parameters of the model"):
        with substitute(model, {"nope": torch.zeros(1)}):
            pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny k-shot files, an OOD test file of the same label words, and two fine-tuning runs (full, LoRA)."""
    root = tmp_path_factory.mktemp("graft-runs")
    model_json = make_tiny_model_dir(root, "bert")
    splits = write_tiny_splits(root)
    ood = tiny_frame(10).assign(label=lambda d: d["label"].map({"0": "rotten", "1": "fresh"}))
    write_parquet(ood, root / "ood.parquet")
    train = {"steps": 6, "eval_every": 2, "batch_size": 4, "lr": 1e-3}
    dirs = {}
    for method, spec in (("ft", {"type": "ft", **train}), ("lora", {"type": "ft", "mode": "lora:2", **train})):
        dirs[method] = root / "runs" / method
        run_finetune(model_json, get_task("sst-2"), splits, dirs[method], model="tiny", k=6, seed=13, method=method,
                     spec=spec)
    return {"model_json": model_json, "splits": splits, "ood": root / "ood.parquet", "dirs": dirs}


def graft_settings(**changes):
    """Every graft option as the plan resolves it (the schema's defaults), with ``changes``."""
    return {key: {**section({}, "graft"), **changes}[key] for key in OPTIONS}


def reference_of(runs, out, method="ft", ood=True, options=None, **kw):
    """Run the graft reference of ``method``'s run into ``out``; returns its metrics."""
    return run_reference(runs["model_json"], get_task("sst-2"), runs["dirs"][method], runs["splits"], out, model="tiny",
                         k=6, seed=13, method=method, ood=OOD(runs) if ood else None,
                         options=reference_options(graft_settings(**(options or {}))), **kw)


def graft_of(runs, out, reference, sparsity, method="ft", ood=True, options=None, **kw):
    return run_graft(runs["model_json"], get_task("sst-2"), runs["dirs"][method], runs["splits"], out,
                     reference / "metrics.json", model="tiny", k=6, seed=13, method=method, sparsity=sparsity,
                     ood=OOD(runs) if ood else None, options=graft_settings(**(options or {})), **kw)


def OOD(runs):
    return {"rt-polarity": (get_task("rt-polarity"), runs["ood"])}


def check_predictions(path, metrics, models):
    """predictions.parquet: the columns of the shared interface, and per model the metrics' accuracy."""
    df = pd.read_parquet(path)
    assert list(df.columns) == ["model", "split", "index", "label", "pred", "probs"]
    assert all(str(df[c].dtype) == "int64" for c in ("index", "label", "pred"))
    assert set(df["model"]) == set(models) and set(df["split"]) == {"test", "ood:rt-polarity"}
    probs = np.stack(df["probs"].to_numpy())
    assert np.allclose(probs.sum(1), 1) and (probs.argmax(1) == df["pred"]).all()
    for model, want in models.items():
        test = df[(df["model"] == model) & (df["split"] == "test")]
        ood = df[(df["model"] == model) & (df["split"] == "ood:rt-polarity")]
        assert test["index"].tolist() == list(range(metrics["n_test"])) and len(ood) == 10
        assert (test["pred"] == test["label"]).mean() == pytest.approx(want["test"])
        assert (ood["pred"] == ood["label"]).mean() == pytest.approx(want["ood"])
    return df


@pytest.mark.parametrize("method", ["ft", "lora"])
def test_reference_and_grafts_write_masks_metrics_and_predictions(runs, tmp_path, method):
    ft_metrics = read_json(runs["dirs"][method] / "metrics.json")
    ref_dir = tmp_path / "reference"
    ref = reference_of(runs, ref_dir, method)
    assert read_json(ref_dir / "metrics.json") == json.loads(json.dumps(ref))
    assert ref["ft_test_metric"] == pytest.approx(ft_metrics["test_metric"])
    assert ref["pre_is_pretrained"] is (method == "lora")  # full FT tuned the embeddings too
    ood_ref = ref["ood"]["rt-polarity"]
    check_predictions(ref_dir / "predictions.parquet", ref,
                      {end: {"test": ref[f"{end}_test_metric"], "ood": ood_ref[end]} for end in ("pre", "ft")})
    results = {}
    for s in (0.0, 1e-4, 0.05, 1.0):
        out = tmp_path / f"sparsity-{s}"
        results[s] = m = graft_of(runs, out, ref_dir, s, method, options={"epochs": 2, "lr": 1e8})
        assert read_json(out / "metrics.json") == json.loads(json.dumps(m))
        mask = load_mask(out / "mask.safetensors")
        kept = sum(int(v.sum()) for v in mask.values())
        assert kept == m["count"] == m["base_count"] == mask_count(s, m["n_graftable"])
        assert {"stage", "task", "k", "seed", "model", "method", "metric", "dev_metric", "test_metric", "test_ece",
                "wall_time_s", "peak_mem_mb", "sparsity", "kept_fraction", "ood", "mask_moved"} <= set(m)
        assert {key: m[key] for key in REFERENCE_KEYS} == {key: ref[key] for key in REFERENCE_KEYS}
        assert m["ood"]["rt-polarity"]["pre"] == ood_ref["pre"] and m["ood"]["rt-polarity"]["ft"] == ood_ref["ft"]
        check_predictions(out / "predictions.parquet", m,
                          {"graft": {"test": m["test_metric"], "ood": m["ood"]["rt-polarity"]["graft"]}})
        assert 0 <= m["mask_moved"] <= 1
    # the graft's ends are the reference's, scored by the other job
    assert results[1.0]["test_metric"] == ref["ft_test_metric"] and results[1.0]["dev_metric"] == ref["ft_dev_metric"]
    assert results[0.0]["test_metric"] == ref["pre_test_metric"] and results[0.0]["test_ece"] == ref["pre_test_ece"]
    assert results[1.0]["ood"]["rt-polarity"]["graft"] == ood_ref["ft"]
    assert results[0.0]["ood"]["rt-polarity"]["graft"] == ood_ref["pre"]
    assert results[1e-4]["count"] >= 1 and results[1e-4]["relax_epochs"] == 2  # the paper's ~0.01% on a tiny model
    assert results[0.05]["relax_epochs"] == 2 and results[0.0]["relax_epochs"] == 0
    assert results[0.0]["mask_moved"] == results[1.0]["mask_moved"] == 0
    if method == "lora":
        assert all("lora_" in n for n in results[1.0]["graftable"])


@pytest.mark.parametrize("lr", [0.0, 1e12])
def test_grafts_read_pre_and_ft_from_the_reference_and_score_each_mask_once(runs, tmp_path, monkeypatch, lr):
    ref_dir = tmp_path / "reference"
    ref = reference_of(runs, ref_dir)
    doctored = {**ref, "pre_test_metric": 0.125, "ft_test_metric": 0.625, "pre_test_ece": 0.5,
                "ood": {"rt-polarity": {"pre": 0.25, "ft": 0.75}}}
    write_json(doctored, ref_dir / "metrics.json")
    import lmft.graft.stage as stage
    scored = []
    monkeypatch.setattr(stage, "evaluate", lambda clf, split, *a, **kw: scored.append(split.name) or evaluate(
        clf, split, *a, **kw))
    m = graft_of(runs, tmp_path / "g", ref_dir, 0.05, options={"epochs": 2, "lr": lr, "select": "best"})
    assert (m["pre_test_metric"], m["ft_test_metric"], m["pre_test_ece"]) == (0.125, 0.625, 0.5)
    assert m["ood"]["rt-polarity"] == {"pre": 0.25, "ft": 0.75, "graft": m["ood"]["rt-polarity"]["graft"]}
    assert m["kept_fraction"] == pytest.approx((m["test_metric"] - 0.125) / 0.5)
    # pre and ft never; each distinct mask (the epochs', the base patch) once per split it needs
    if lr == 0.0:  # every epoch rounds to the base patch: one mask, scored once on each split
        assert m["mask_moved"] == 0
        assert sorted(scored) == sorted(["train", "dev", "test", "ood:rt-polarity"])
    else:  # two moved epochs (selection: train, dev each), then the base patch and the chosen graft's rest
        assert m["mask_moved"] > 0 and all(h["moved"] > 0 for h in m["relax_history"])
        assert sorted(scored) == sorted(["train", "dev"] * 3 + ["test"] * 2 + ["ood:rt-polarity"])


def test_graft_refuses_a_reference_of_other_settings(runs, tmp_path):
    ref_dir = tmp_path / "reference"
    reference_of(runs, ref_dir, ood=False)
    with pytest.raises(ArtifactError, match="not the graft reference of this run.*ood"):
        graft_of(runs, tmp_path / "g", ref_dir, 0.05, options={"epochs": 1})
    reference_of(runs, ref_dir, options={"exclude": ["embed"]})
    with pytest.raises(ArtifactError, match="graftable"):
        graft_of(runs, tmp_path / "g", ref_dir, 0.05, options={"epochs": 1})


def test_mask_moved_is_zero_without_a_step_and_positive_with_a_large_one(runs, tmp_path):
    ref_dir = tmp_path / "reference"
    reference_of(runs, ref_dir, ood=False)
    still = graft_of(runs, tmp_path / "still", ref_dir, 0.05, ood=False, options={"epochs": 2, "lr": 0.0})
    assert still["mask_moved"] == 0 and [h["moved"] for h in still["relax_history"]] == [0, 0]
    assert (still["test_metric"], still["dev_metric"]) == (still["base_test_metric"], still["base_dev_metric"])
    assert all(h["max_step"] == 0 for h in still["relax_history"])
    off = graft_of(runs, tmp_path / "off", ref_dir, 0.05, ood=False, options={"epochs": 0})  # the base patch
    assert (off["mask_moved"], off["relax_epochs"], off["relax_chosen_epoch"]) == (0, 0, 0)
    assert (off["test_metric"], off["test_loss"]) == (still["base_test_metric"], still["test_loss"])
    moved = graft_of(runs, tmp_path / "moved", ref_dir, 0.05, ood=False,
                     options={"epochs": 2, "lr": 1e12, "select": "last"})
    assert 0 < moved["mask_moved"] == moved["relax_history"][-1]["moved"] <= 1
    assert moved["relax_history"][0]["max_step"] > 0
    a, b = (load_mask(tmp_path / d / "mask.safetensors") for d in ("still", "moved"))
    outside = sum(int((b[n] & ~a[n]).sum()) for n in a)  # "still" is the base patch
    assert outside / moved["count"] == pytest.approx(moved["mask_moved"])


def test_mask_moved_counts_entries_outside_the_base_patch():
    t = torch.tensor
    base = {"w": t([True, True, False, False]), "b": t([False, True])}
    assert mask_moved(base, base) == 0
    assert mask_moved({"w": t([True, False, True, False]), "b": t([False, False])}, base) == pytest.approx(0.5)
    assert mask_moved({"w": t([False] * 4), "b": t([True, False])}, base) == 1
    assert mask_moved({"w": t([False] * 4), "b": t([False, False])}, {"w": t([False] * 4), "b": t([False] * 2)}) == 0


def test_run_graft_rejects_bad_settings(runs, tmp_path):
    ref_dir = tmp_path / "reference"
    reference_of(runs, ref_dir)
    kw = {"model": "tiny", "k": 6, "seed": 13, "method": "ft", "sparsity": 0.1}
    args = (runs["model_json"], get_task("sst-2"), runs["dirs"]["ft"], runs["splits"], tmp_path,
            ref_dir / "metrics.json")
    with pytest.raises(LmftError, match="same label space"):
        run_graft(*args, ood={"sst-5": (get_task("sst-5"), runs["ood"])}, options=graft_settings(epochs=1), **kw)
    # the settings themselves are the schema's to check, before any job runs
    config = {"models": {"m": {"source": "m"}}, "tasks": ["sst-2"]}
    with pytest.raises(LmftError, match="graft.*'epoch' was unexpected"):
        validate_schema(config | {"graft": {"epoch": 3}})
    with pytest.raises(LmftError, match="graft.select.*'first'.*best, last"):
        validate_schema(config | {"graft": {"select": "first"}})


CONFIG = {"models": {"m1": {}, "m2": {}}, "tasks": ["t1", "t2"], "kshot": {"k": [16], "seeds": [13, 21]},
          "finetune": {"methods": {"ft": {"type": "ft"}, "lora": {"type": "ft", "models": ["m1"]},
                                   "zs": {"type": "zeroshot"}}}}


def test_graft_jobs_and_overlap_groups_from_the_config():
    assert {j["method"] for j in graft_jobs({**CONFIG, "graft": {}})} == {"ft", "lora"}  # not zs
    config = {**CONFIG, "graft": {"sparsities": [0.001, 0.01], "seeds": [13, 21], "lr": 5.0, "epochs": 3,
                                  "methods": {"ft": {"models": ["m1"], "lr": 7.0}, "lora": None}}}
    jobs = graft_jobs(config)
    assert len(jobs) == 2 * 1 * 2 * 2 * 2  # methods ft, lora x m1 x tasks x seeds x sparsities
    defaults = section({}, "graft")
    assert graft_options(config, "ft") == {key: {**defaults, "lr": 7.0, "epochs": 3}[key] for key in OPTIONS}
    assert graft_options(config, "lora")["lr"] == 5.0
    assert graft_dir("results", **jobs[0]) == "results/graft/m1/t1/16-13/ft/sparsity-0.001"
    assert graft_dir("results", **{**jobs[0], "sparsity": 1e-4}).endswith("/ft/sparsity-0.0001")
    assert graft_reference("results", "m1", "t1", 16, 13, "ft") == "results/graft/m1/t1/16-13/ft/reference"
    # the reference takes only the settings that its scores depend on
    assert reference_options(graft_options(config, "ft")) == {"exclude": EXCLUDE, "eval_batch_size": 32}
    assert reference_options({"lr": 1.0, "exclude": ["x"], "eval_batch_size": 4}) == {"exclude": ["x"],
                                                                                        "eval_batch_size": 4}
    groups = overlap_groups(jobs)
    by_tasks = [g for g in groups if g["by"] == "tasks"]
    by_seeds = [g for g in groups if g["by"] == "seeds"]
    assert len(by_tasks) == 2 * 2 * 2 and all(len(g["members"]) == 2 for g in groups)  # (method, seed, s)
    assert len(by_seeds) == 2 * 2 * 2  # (method, task, s)
    assert overlap_path("results", by_tasks[0]) == "results/graft/m1/overlap-tasks/16-13/ft/sparsity-0.001.parquet"
    assert overlap_path("results", by_seeds[0]) == "results/graft/m1/overlap-seeds/t1/16/ft/sparsity-0.001.parquet"
    with pytest.raises(LmftError, match="not one of finetune.methods"):
        graft_jobs({**CONFIG, "graft": {"methods": {"nope": {}}}})
    with pytest.raises(LmftError, match="needs a method that trains"):
        graft_jobs({**CONFIG, "graft": {"methods": {"zs": {}}}})


def test_paper_grid_grafts_runs_that_train_only_the_encoder_blocks(tmp_path):
    """config/paper.yaml: every grafted method fine-tunes as the released code (SGD, constant lr, weight
    decay 1e-4, head and embeddings frozen), so that on a (tiny) RoBERTa its graft's "pre" is pre-trained."""
    config = load_config(SCHEMA.parent.parent.parent / "config/paper.yaml")
    methods = {job["method"] for job in graft_jobs(config)}
    assert methods and {job["sparsity"] for job in graft_jobs(config)} >= {1e-4, 1e-3, 1e-2}
    model_json = make_tiny_model_dir(tmp_path, "roberta")
    splits = write_tiny_splits(tmp_path)
    for method in sorted(methods):
        spec = resolve_spec(config["finetune"]["methods"][method], method, grid=False)
        assert (spec["optimizer"], spec["schedule"], spec["weight_decay"]) == ("sgd", "constant", 1e-4)
        run = tmp_path / method
        run_finetune(model_json, get_task("sst-2"), splits, run, model="tiny", k=6, seed=13, method=method,
                     spec={**job_spec(spec), "steps": 2, "eval_every": 1})
        clf = load_run(model_json, get_task("sst-2"), run).clf
        tuned = [n for n, p in clf.named_parameters() if p.requires_grad]
        blocks = [n for n, _ in clf.named_parameters() if ".encoder.layer." in n]
        assert tuned == blocks and blocks  # not lm_head.dense/layer_norm/bias, not embeddings.LayerNorm
        ref = run_reference(model_json, get_task("sst-2"), run, splits, tmp_path / f"{method}-reference", model="tiny",
                            k=6, seed=13, method=method, options=graft_options(config, method))
        assert ref["pre_is_pretrained"] is True and ref["graftable"] == blocks
