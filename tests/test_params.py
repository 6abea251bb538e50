"""lmft.models.params: exactly which parameters train in each mode, for BERT, RoBERTa, GPT-2 and Llama."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmft.data.tasks import get_task
from lmft.io import LmftError
from lmft.models.batching import collate, encode_frame, label_ids, pad_id
from lmft.models.heads import build_classifier
from lmft.models.params import count_trainable, parse_mode, select_trainable
from tiny import make_tiny_model_dir, tiny_frame

SST2 = get_task("sst-2")
LAYERS, D = 4, 32
# Parameters of one tiny block (hidden 32, FFN 64), counted by hand:
# BERT/RoBERTa: q, k, v, attn-out 4 * (32*32 + 32) + attn LN 64 + FFN in 32*64 + 64 + FFN out 64*32 + 32 + LN 64
# GPT-2: ln_1 64 + c_attn 32*96 + 96 + c_proj 32*32 + 32 + ln_2 64 + c_fc 32*64 + 64 + mlp c_proj 64*32 + 32
# Llama: q, k, v, o 4 * 32*32 + gate, up, down 3 * 32*64 + two RMSNorms 2 * 32 (no biases)
BLOCK = {"bert": 8544, "roberta": 8544, "gpt2": 8544, "llama": 10304}
LINEAR = D * 2 + 2  # the cls head for two labels
CASES = [("bert", "prompt"), ("roberta", "prompt"), ("gpt2", "causal"), ("llama", "causal"),
         ("bert", "cls"), ("roberta", "cls"), ("gpt2", "cls"), ("llama", "cls")]
BLOCK_RE = {"bert": r"bert\.encoder\.layer", "roberta": r"roberta\.encoder\.layer", "gpt2": r"transformer\.h",
            "llama": r"model\.layers"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {arch: make_tiny_model_dir(root, arch, layers=LAYERS) for arch in ("bert", "roberta", "gpt2", "llama")}
    out["bert-nohead"] = make_tiny_model_dir(root, "bert", mlm_head=False)
    return out


def _block_index(arch: str, head: str, name: str) -> int | None:
    # The cls head sits on the bare base model, whose names lack the "bert."/"transformer."/"model." prefix.
    pattern = BLOCK_RE[arch] if head != "cls" else BLOCK_RE[arch].split(r"\.", 1)[-1]
    m = re.match(rf"^backbone\.{pattern}\.(\d+)\.", name)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("arch,head", CASES)
@pytest.mark.parametrize("mode,blocks", [("first:1", {0}), ("last:2", {2, 3}), ("middle:2", {1, 2}),
                                         ("middle:1", {1}), ("last:4", {0, 1, 2, 3})])
def test_block_modes(dirs, arch: str, head: str, mode: str, blocks: set[int]) -> None:
    clf, _ = build_classifier(dirs[arch], SST2, head)
    names = select_trainable(clf, mode)
    all_names = [n for n, _ in clf.named_parameters()]
    expected = [n for n in all_names if _block_index(arch, head, n) in blocks or n.startswith("linear.")]
    assert names == expected
    assert {n for n, p in clf.named_parameters() if p.requires_grad} == set(expected)
    assert count_trainable(clf) == len(blocks) * BLOCK[arch] + (LINEAR if head == "cls" else 0)


@pytest.mark.parametrize("arch,head", CASES)
def test_all_mode(dirs, arch: str, head: str) -> None:
    clf, _ = build_classifier(dirs[arch], SST2, head)
    names = select_trainable(clf, "all")
    assert names == [n for n, _ in clf.named_parameters()]
    assert count_trainable(clf) == sum(p.numel() for p in clf.parameters())
    emb = clf.backbone.get_input_embeddings().weight  # tied to the decoder / LM head, listed once
    assert len([n for n, p in clf.named_parameters() if p is emb]) == 1


@pytest.mark.parametrize("arch,head", [("bert", "prompt"), ("roberta", "cls"), ("gpt2", "causal"), ("gpt2", "cls")])
def test_bias_mode(dirs, arch: str, head: str) -> None:
    clf, _ = build_classifier(dirs[arch], SST2, head)
    names = select_trainable(clf, "bias")
    expected = [n for n, _ in clf.named_parameters() if n.endswith(".bias") or n.startswith("linear.")]
    assert names == expected
    assert any("LayerNorm.bias" in n or "ln_1.bias" in n for n in names)  # BitFit trains LayerNorm biases too
    assert ("backbone.cls.predictions.bias" in names) == (arch == "bert" and head == "prompt")
    assert not any(n.endswith("weight") for n in names if not n.startswith("linear."))


def test_bias_mode_without_biases_is_an_error(dirs) -> None:
    clf, _ = build_classifier(dirs["llama"], SST2, "causal")
    with pytest.raises(LmftError, match="selects no parameters"):
        select_trainable(clf, "bias")
    clf, _ = build_classifier(dirs["llama"], SST2, "cls")
    assert select_trainable(clf, "bias") == ["linear.weight", "linear.bias"]


# Norm vectors per tiny model (hidden 32): BERT/RoBERTa embedding LN + 2 per block (weight and bias);
# GPT-2 ln_1, ln_2 per block + ln_f (weight and bias); Llama two RMSNorm weights per block + the final norm.
NORM = {"bert": (1 + 2 * LAYERS) * 2 * D, "roberta": (1 + 2 * LAYERS) * 2 * D, "gpt2": (2 * LAYERS + 1) * 2 * D,
        "llama": (2 * LAYERS + 1) * D}


@pytest.mark.parametrize("arch,head", CASES)
def test_norm_mode(dirs, arch: str, head: str) -> None:
    clf, _ = build_classifier(dirs[arch], SST2, head)
    names = select_trainable(clf, "norm")
    mlm_head_ln = 2 * D if head == "prompt" else 0  # the MLM head's transform LayerNorm
    assert count_trainable(clf) == NORM[arch] + mlm_head_ln + (LINEAR if head == "cls" else 0)
    assert all(re.search(r"(LayerNorm|ln_|norm)", n) or n.startswith("linear.") for n in names)


def test_head_mode(dirs) -> None:
    clf, _ = build_classifier(dirs["bert"], SST2, "prompt")
    assert set(select_trainable(clf, "head")) == {
        "backbone.cls.predictions.bias", "backbone.cls.predictions.transform.dense.weight",
        "backbone.cls.predictions.transform.dense.bias", "backbone.cls.predictions.transform.LayerNorm.weight",
        "backbone.cls.predictions.transform.LayerNorm.bias"}
    assert not clf.backbone.get_input_embeddings().weight.requires_grad  # the tied decoder is not "head"
    clf, _ = build_classifier(dirs["roberta"], SST2, "prompt")
    assert set(select_trainable(clf, "head")) == {
        "backbone.lm_head.bias", "backbone.lm_head.dense.weight", "backbone.lm_head.dense.bias",
        "backbone.lm_head.layer_norm.weight", "backbone.lm_head.layer_norm.bias"}
    for arch, head in [("bert", "cls"), ("llama", "cls")]:
        clf, _ = build_classifier(dirs[arch], SST2, head)
        assert select_trainable(clf, "head") == ["linear.weight", "linear.bias"]
        assert count_trainable(clf) == LINEAR
    for key, head in [("bert-nohead", "prompt"), ("gpt2", "causal"), ("llama", "causal")]:
        clf, _ = build_classifier(dirs[key], SST2, head)
        with pytest.raises(LmftError, match="no parameters of its own"):
            select_trainable(clf, "head")


@pytest.mark.parametrize("arch,head", CASES)
@pytest.mark.parametrize("rank", [1, 4])
def test_lora_adds_exactly_the_expected_parameters(dirs, arch: str, head: str, rank: int) -> None:
    torch.manual_seed(0)
    clf, tok = build_classifier(dirs[arch], SST2, head)
    batch = collate(encode_frame(tiny_frame(4), SST2, tok, causal=clf.causal), None, pad_id(tok))
    with torch.no_grad():
        before = clf(**batch)
    n_before = sum(p.numel() for p in clf.parameters())
    names = select_trainable(clf, f"lora:{rank}")
    # rank R on a d_in -> d_out projection adds R * (d_in + d_out): 2 R d for each d x d query/value,
    # R (d + 3d) for GPT-2's fused c_attn.
    per_layer = rank * (D + 3 * D) if arch == "gpt2" else 2 * (2 * rank * D)
    added = LAYERS * per_layer
    assert sum(p.numel() for p in clf.parameters()) == n_before + added
    assert count_trainable(clf) == added + (LINEAR if head == "cls" else 0)
    targets = {"gpt2": ("c_attn",), "llama": ("q_proj", "v_proj")}.get(arch, ("query", "value"))
    lora_names = [n for n in names if not n.startswith("linear.")]
    assert len(lora_names) == LAYERS * len(targets) * 2
    assert all(re.search(rf"\.({'|'.join(targets)})\.lora_[AB]\.default\.weight$", n) for n in lora_names)
    with torch.no_grad():  # B starts at zero: the adapted model computes the same function
        torch.testing.assert_close(clf(**batch), before)


def test_lora_options_and_errors(dirs) -> None:
    clf, _ = build_classifier(dirs["bert"], SST2, "prompt")
    names = select_trainable(clf, "lora:2", lora_targets=["key"], lora_alpha=8)
    assert all(".attention.self.key.lora_" in n for n in names) and len(names) == 2 * LAYERS
    layer = clf.backbone.bert.encoder.layer[0].attention.self.key
    assert layer.scaling["default"] == 4.0
    with pytest.raises(LmftError, match="already"):
        select_trainable(clf, "lora:2")
    clf, _ = build_classifier(dirs["roberta"], SST2, "prompt")
    select_trainable(clf, "lora:8")
    assert clf.backbone.roberta.encoder.layer[0].attention.self.query.scaling["default"] == 2.0  # alpha = 2R
    clf, _ = build_classifier(dirs["bert"], SST2, "prompt")
    with pytest.raises(LmftError, match="LoRA targets"):
        select_trainable(clf, "lora:2", lora_targets=["no_such_module"])


@pytest.mark.parametrize("arch,head", CASES)
def test_prefix_mode(dirs, arch: str, head: str) -> None:
    torch.manual_seed(5)
    clf, tok = build_classifier(dirs[arch], SST2, head)
    names = select_trainable(clf, "prefix:3")
    assert names == (["linear.weight", "linear.bias"] if head == "cls" else []) + ["prefix.key", "prefix.value"]
    # keys and values of 3 positions in each of the 4 layers (2 heads x 16 = 32 wide)
    assert clf.prefix.key.shape == (LAYERS, 2, 3, 16)
    assert count_trainable(clf) == LAYERS * 2 * 3 * D + (LINEAR if head == "cls" else 0)
    with pytest.raises(LmftError, match="already"):
        select_trainable(clf, "prefix:3")
    if head == "causal":
        # A causal LM with the initial prefix computes what it computes on the random tokens + the input.
        torch.manual_seed(5)
        start = torch.randint(0, clf.backbone.config.vocab_size, (1, 3))
        batch = collate(encode_frame(tiny_frame(3), SST2, tok, causal=True), None, pad_id(tok))
        ids = torch.cat([start.expand(3, -1), batch["input_ids"]], 1)
        attn = torch.cat([torch.ones(3, 3, dtype=torch.long), batch["attention_mask"]], 1)
        with torch.no_grad():
            vocab = clf.backbone(input_ids=ids, attention_mask=attn).logits
            expected = vocab[torch.arange(3), batch["mask_pos"] + 3][:, clf.label_ids]
            torch.testing.assert_close(clf(**batch), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode,match", [("everything", "unknown"), ("last:0", "at least 1"), ("last:5", "only 4"),
                                        ("lora:x", "unknown"), ("prefix:0", "at least 1")])
def test_bad_modes(dirs, mode: str, match: str) -> None:
    clf, _ = build_classifier(dirs["bert"], SST2, "prompt")
    with pytest.raises(LmftError, match=match):
        select_trainable(clf, mode)


def test_parse_mode() -> None:
    assert parse_mode("all") == ("all", 0) and parse_mode("middle:3") == ("middle", 3)
    assert parse_mode("lora:16") == ("lora", 16)


@pytest.mark.parametrize("arch,head", [("bert", "prompt"), ("gpt2", "causal"), ("llama", "cls")])
def test_freeze_embeddings(dirs, arch: str, head: str) -> None:
    clf, _ = build_classifier(dirs[arch], SST2, head)
    names = select_trainable(clf, "all", freeze_embeddings=True)
    frozen = [n for n, p in clf.named_parameters() if not p.requires_grad]
    expected = {"bert": ["word_embeddings", "position_embeddings", "token_type_embeddings"], "gpt2": ["wte", "wpe"],
                "llama": ["embed_tokens"]}[arch]
    assert [n.split(".")[-2] for n in frozen] == expected
    assert all(n in names for n, p in clf.named_parameters() if p.requires_grad)
    if arch == "bert":  # the decoder tied to the word embeddings is frozen with them; the MLM bias is not
        assert not clf.backbone.cls.predictions.decoder.weight.requires_grad
        assert "backbone.cls.predictions.bias" in names and "backbone.bert.embeddings.LayerNorm.weight" in names


@pytest.mark.parametrize("arch,head", CASES)
@pytest.mark.parametrize("mode", ["all", "lora:2", "prefix:2"])
def test_gradients_reach_exactly_the_trainable_parameters(dirs, arch: str, head: str, mode: str) -> None:
    torch.manual_seed(0)
    clf, tok = build_classifier(dirs[arch], SST2, head)
    names = set(select_trainable(clf, mode))
    if mode.startswith("lora"):  # move B off zero so that A gets gradients too
        with torch.no_grad():
            for n, p in clf.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    df = tiny_frame(4)
    batch = collate(encode_frame(df, SST2, tok, causal=clf.causal), label_ids(df, SST2), pad_id(tok))
    labels = batch.pop("labels")
    F.cross_entropy(clf(**batch), labels).backward()
    got = {n for n, p in clf.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == names


def test_train_only_keeps_the_matching_parameters_of_the_mode(dirs) -> None:
    clf, _ = build_classifier(dirs["roberta"], SST2, "prompt")
    names = select_trainable(clf, "all", train_only=[r"\.encoder\.layer\."])
    assert names == [n for n, _ in clf.named_parameters() if ".encoder.layer." in n] and names
    assert not clf.backbone.lm_head.dense.weight.requires_grad  # the MLM head and embeddings' LayerNorm stay frozen
    assert not clf.backbone.roberta.embeddings.LayerNorm.weight.requires_grad
    assert select_trainable(clf, "bias", train_only=[r"\.encoder\.layer\.0\."]) == [
        n for n, _ in clf.named_parameters() if ".encoder.layer.0." in n and n.endswith(".bias")]
    with pytest.raises(LmftError, match="with train_only .* selects no parameters"):
        select_trainable(clf, "all", train_only=["nothing-matches"])
    with pytest.raises(LmftError, match="train_only: bad pattern"):
        select_trainable(clf, "all", train_only=["("])
