"""lmft.finetune.loop: schedule, sampler, learning on a tiny task, best-dev checkpoint, the lm loss, bad settings."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from lmft.data.tasks import get_task
from lmft.finetune.logreg import extract_features
from lmft.finetune.loop import EpochSampler, FirstOrder, LoopConfig, ZerothOrder, lr_factor, train_loop
from lmft.io import LmftError
from lmft.models.encode import encode_split
from lmft.models.evaluate import Split, evaluate
from lmft.models.heads import build_classifier, fit_linear_head
from lmft.models.losses import classifier_loss
from lmft.models.params import select_trainable
from tiny import make_tiny_model_dir, tiny_frame

SST2 = get_task("sst-2")
# Held-out sentences built from the tiny vocabulary: the words of the training sentences, recombined.
DEV = pd.DataFrame({"text_a": ["great fun", "a good story", "really great acting", "fun film", "terrible acting",
                               "a bad story", "boring plot", "really bad film"],
                    "label": ["1"] * 4 + ["0"] * 4})


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models"), "llama")


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory, llama: Path) -> dict[str, Path]:
    """Tiny models with a real LM head: causal (llama, gpt2) and masked (bert)."""
    root = tmp_path_factory.mktemp("lms")
    return {"llama": llama, "gpt2": make_tiny_model_dir(root, "gpt2"), "bert": make_tiny_model_dir(root, "bert")}


def _splits(clf, tok) -> tuple[Split, Split]:
    return (encode_split(tiny_frame(), SST2, tok, clf, name="train"), encode_split(DEV, SST2, tok, clf, name="dev"))


def test_lr_factor_linear_warmup_constant() -> None:
    assert [lr_factor(t, 4, 0, "linear") for t in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert [lr_factor(t, 6, 2, "linear") for t in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [lr_factor(t, 4, 1, "constant") for t in range(4)] == [1.0, 1.0, 1.0, 1.0]


def test_sampler_permutes_each_epoch_and_resumes() -> None:
    s = EpochSampler(10, 4, seed=13)
    first = [s.next_rows() for _ in range(3)]
    assert [len(b) for b in first] == [4, 4, 2]  # the last batch of an epoch is smaller
    assert sorted(sum(first, [])) == list(range(10))
    state = s.state_dict()
    ahead = [s.next_rows() for _ in range(4)]
    t = EpochSampler(10, 4, seed=99)
    t.load_state_dict(state)
    assert [t.next_rows() for _ in range(4)] == ahead
    assert [EpochSampler(10, 4, seed=13).next_rows() for _ in range(1)] == first[:1]
    assert EpochSampler(10, 4, seed=21).next_rows() != first[0]


def test_loop_config_rejects_bad_values() -> None:
    with pytest.raises(LmftError, match="steps must be at least 1"):
        LoopConfig(steps=0, batch_size=2)
    with pytest.raises(LmftError, match=r"save_steps \[7\] lie outside"):
        LoopConfig(steps=6, batch_size=2, save_steps=(2, 7))
    cfg = LoopConfig(steps=7, batch_size=2, eval_every=3)
    assert [s for s in range(1, 8) if cfg.is_eval_step(s)] == [3, 6, 7]


def test_stepper_settings_are_checked(llama: Path) -> None:
    clf, _ = build_classifier(llama, SST2, "causal")
    select_trainable(clf, "all")
    with pytest.raises(LmftError, match="unknown optimizer 'adam'"):
        FirstOrder(clf, total_steps=2, optimizer="adam")
    with pytest.raises(LmftError, match="unknown schedule"):
        ZerothOrder(clf, total_steps=2, lr=1e-3, schedule="cosine")
    with pytest.raises(LmftError, match="unknown loss 'mse'; one of label-words, lm"):
        ZerothOrder(clf, total_steps=2, lr=1e-3, loss="mse")
    for p in clf.parameters():
        p.requires_grad_(False)
    with pytest.raises(LmftError, match="no trainable parameters"):
        FirstOrder(clf, total_steps=2)
    cls, _ = build_classifier(llama, SST2, "cls")
    with pytest.raises(LmftError, match="the full-vocabulary \\(lm\\) loss needs the backbone's own MLM or LM head"):
        FirstOrder(cls, total_steps=2, loss="lm")


@pytest.mark.parametrize("arch,head", [("llama", "causal"), ("gpt2", "causal"), ("bert", "prompt")])
def test_lm_loss_is_the_lm_loss_with_labels_on_the_label_word_only(lms: dict[str, Path], arch: str, head: str) -> None:
    """By hand: the backbone's own loss (transformers shifts a causal LM's labels), labels -100 but the label word."""
    clf, tok = build_classifier(lms[arch], SST2, head)
    batch = _splits(clf, tok)[0].batch(list(range(8)))
    n, rows = batch["attention_mask"].sum(1), torch.arange(8)
    assert (n < batch["input_ids"].shape[1]).any()  # padded
    words = torch.tensor([tok.encode(" " + w, add_special_tokens=False)[0] for w in SST2.label_words])
    target = words[batch["labels"]]
    ids, attn = batch["input_ids"], batch["attention_mask"]
    kwargs = {"token_type_ids": batch["token_type_ids"]} if arch == "bert" else {}
    if clf.causal:  # the label word follows each prompt (into the padding, or a new column)
        ids, attn = (torch.cat([t, torch.zeros_like(t[:, :1])], 1) for t in (ids, attn))
        ids[rows, n], attn[rows, n] = target, 1
    labels = torch.full_like(ids, -100)
    labels[rows, n if clf.causal else batch["mask_pos"]] = target
    with torch.no_grad():
        expected = clf.backbone(input_ids=ids, attention_mask=attn, labels=labels, **kwargs).loss
        lm = classifier_loss(clf, batch, "lm")
        torch.testing.assert_close(lm, expected, atol=1e-5, rtol=1e-5)
        assert lm > classifier_loss(clf, batch) + 1  # not the label-word loss (over 2 classes: ~log 2)


def test_steppers_train_on_their_loss(llama: Path) -> None:
    clf, tok = build_classifier(llama, SST2, "causal")
    select_trainable(clf, "all")
    batch = _splits(clf, tok)[0].batch(list(range(8)))
    with torch.no_grad():
        lm = classifier_loss(clf, batch, "lm").item()
    mezo = ZerothOrder(clf, total_steps=1, lr=0.0, eps=1e-6, loss="lm").step(batch)  # lr 0: the model stays
    assert mezo == pytest.approx(lm, rel=1e-4)
    assert FirstOrder(clf, total_steps=1, lr=1e-3, loss="lm").step(batch) == pytest.approx(lm, rel=1e-6)
    with torch.no_grad():
        assert classifier_loss(clf, batch, "lm").item() < lm  # the step went down the lm loss


def test_ft_learns_a_separable_task(llama: Path) -> None:
    clf, tok = build_classifier(llama, SST2, "causal")
    select_trainable(clf, "all")
    train, dev = _splits(clf, tok)
    before = evaluate(clf, dev, "acc")
    cfg = LoopConfig(steps=20, batch_size=4, eval_every=5)
    result = train_loop(clf, FirstOrder(clf, total_steps=20, lr=1e-3), train, dev, "acc", cfg, seed=13)
    after = evaluate(clf, dev, "acc")
    assert before.metric <= 0.5 and after.metric >= 0.75
    assert after.metric == result.best_dev_metric and after.loss == pytest.approx(result.best_dev_loss)
    dev_rows = [r for r in result.curve if r["split"] == "dev"]
    assert [r["step"] for r in dev_rows] == [0, 5, 10, 15, 20]
    assert len([r for r in result.curve if r["split"] == "train"]) == 20


class Scripted:
    """A stepper that sets the linear head to given weights at each step (no learning involved)."""

    PASS = "forward+backward"

    def __init__(self, clf, weights: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.clf, self.weights, self.t = clf, weights, 0

    @property
    def passes(self) -> int:
        return self.t

    def step(self, batch) -> float:
        w, b = self.weights[self.t]
        with torch.no_grad():
            self.clf.linear.weight.copy_(w)
            self.clf.linear.bias.copy_(b)
        self.t += 1
        return 0.0

    def state_dict(self):
        return {"t": self.t}

    def load_state_dict(self, state) -> None:
        self.t = state["t"]


def _fitted_head(llama: Path):
    """A cls head fitted on dev (the only trainable part), the splits, and its (weight, bias)."""
    clf, tok = build_classifier(llama, SST2, "cls")
    select_trainable(clf, "head")
    train, dev = _splits(clf, tok)
    fit_linear_head(clf, extract_features(clf, dev), torch.tensor(dev.labels), l2=1e-3)
    return clf, train, dev, (clf.linear.weight.detach().clone(), clf.linear.bias.detach().clone())


def test_best_dev_checkpoint_is_kept(llama: Path) -> None:
    clf, train, dev, good = _fitted_head(llama)
    zero = (torch.zeros_like(good[0]), torch.zeros_like(good[1]))
    bad = (-good[0], -good[1])
    saved = []
    cfg = LoopConfig(steps=4, batch_size=4, eval_every=1, save_steps=(3,))
    result = train_loop(clf, Scripted(clf, [zero, good, bad, zero]), train, dev, "acc", cfg, seed=13,
                        save_step=lambda s: saved.append((s, clf.linear.weight.detach().clone())))
    assert result.best_step == 2 and result.best_dev_metric == 1.0
    assert torch.equal(clf.linear.weight, good[0]) and torch.equal(clf.linear.bias, good[1])
    assert [s for s, _ in saved] == [3] and torch.equal(saved[0][1], bad[0])  # save_steps sees that step's tensors
    dev_metrics = [r["metric"] for r in result.curve if r["split"] == "dev"]
    assert dev_metrics[1:] == [0.5, 1.0, 0.0, 0.5]
    assert all(math.isnan(r["metric"]) for r in result.curve if r["split"] == "train")


def test_ties_go_to_lower_loss_then_earlier_step(llama: Path) -> None:
    clf, train, dev, good = _fitted_head(llama)
    sharper = (good[0] * 2, good[1] * 2)  # same predictions, lower loss
    cfg = LoopConfig(steps=3, batch_size=4, eval_every=1)
    result = train_loop(clf, Scripted(clf, [good, sharper, sharper]), train, dev, "acc", cfg, seed=13)
    assert result.best_step == 2
