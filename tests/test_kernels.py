"""lmft.kernels.compute: eNTK entries against plain autograd, symmetry and PSD, shards bit for bit, merging, files."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, RobertaConfig, RobertaForMaskedLM)

from lmft.kernels import jacobians

from lmft.kernels import files as kernel_files

from lmft.kernels import pairs as kernel_pairs

from lmft.kernels import compute as kernels

from lmft.kernels import tile_jacobians

from lmft.kernels import tiled as tiled_kernel
from lmft.kernels.formulas import FORMULAS
from lmft.kernels.files import merge_shards, split_range
from lmft.kernels.tile_jacobians import TILE
from lmft.models.heads import Classifier
from lmft.io import ArtifactError, LmftError
from lmft.models.params import select_trainable

VOCAB, HIDDEN, WORDS = 24, 8, (5, 6, 7)
WIDE = 32  # a hidden size whose Linear weights the tiled path keeps factored at 9 tokens (9 * (in + out) < in * out)


class TinyClassifier(nn.Module):
    """A 2-layer random BERT: a linear head on [CLS] (``cls``) or the MLM scores of label words at mask_pos (``mlm``)."""

    def __init__(self, head: str = "cls", num_labels: int = 3, dtype: torch.dtype = torch.float32, seed: int = 0,
                 hidden: int = HIDDEN):
        super().__init__()
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=2 * hidden, max_position_embeddings=16, attn_implementation="eager")
        self.lm = BertForMaskedLM(config)  # its decoder is tied to the word embeddings
        self.linear = nn.Linear(hidden, num_labels) if head == "cls" else None
        self.words = list(WORDS[:num_labels])
        self.to(dtype).eval()

    def forward(self, input_ids, attention_mask, token_type_ids=None, mask_pos=None):
        if self.linear is not None:
            h = self.lm.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return self.linear(h.last_hidden_state[:, 0])
        scores = self.lm(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
        return scores[torch.arange(scores.shape[0]), mask_pos][:, self.words]


def make_batch(n: int, width: int = 9, seed: int = 0, labels: int = 3) -> dict[str, torch.Tensor]:
    """Right-padded random examples; lengths repeat so that some examples share a mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3, 5, width, 5, 4, 7, 3, 6, 5][:n] + [4] * max(0, n - 9))
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB, (n, width), generator=g) * mask
    types = torch.randint(0, 2, (n, width), generator=g) * mask
    pos = (torch.rand(n, generator=g) * lengths).long()
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "mask_pos": pos,
            "labels": torch.randint(0, labels, (n,), generator=g)}


def autograd_jacobian(model: nn.Module, batch: dict, i: int) -> torch.Tensor:
    """``[C, P]``: the gradients of example i's logits, one backward each, on the padded input."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(batch["input_ids"][i:i + 1], batch["attention_mask"][i:i + 1],
                batch["token_type_ids"][i:i + 1], batch["mask_pos"][i:i + 1])[0]
    rows = []
    for a in range(out.shape[0]):
        grads = torch.autograd.grad(out[a], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)]))
    return torch.stack(rows)


def freeze_key_biases(model: nn.Module) -> None:
    """Attention key biases get analytically zero gradients (softmax ignores a shift of all scores),
    which come out as rounding noise of either sign; sign formulas would compare that noise."""
    for name, p in model.named_parameters():
        if "key.bias" in name:
            p.requires_grad_(False)


@pytest.mark.parametrize("hidden", [HIDDEN, WIDE])  # Linear weights materialised, factored
@pytest.mark.parametrize("head", ["cls", "mlm"])
@pytest.mark.parametrize("formula", FORMULAS)
def test_entries_equal_inner_products_of_autograd_gradients(formula, head, hidden):
    model = TinyClassifier(head, dtype=torch.float64, hidden=hidden)
    if formula != "sgd":
        freeze_key_biases(model)
    x, y = make_batch(5, seed=1), make_batch(4, seed=2)
    got = kernels.compute_shard(model, x, y, formula, row_batch=2, col_batch=3).kernel
    jx = torch.stack([autograd_jacobian(model, x, i) for i in range(5)])  # [N, C, P]
    jy = torch.stack([autograd_jacobian(model, y, j) for j in range(4)])
    inner = lambda u, v: torch.einsum("iap,jbp->iajb", u, v)  # noqa: E731
    if formula == "sgd":
        torch.testing.assert_close(got, inner(jx, jy), rtol=1e-10, atol=1e-10)
    elif formula == "signgd":
        assert torch.equal(got, inner(jx.sign(), jy.sign()))
    else:
        assert got.shape == (2, 5, 3, 4, 3)
        torch.testing.assert_close(got[0], inner(jx.sign(), jy), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got[1], inner(jx, jy.sign()), rtol=1e-10, atol=1e-10)


def test_sgd_kernel_of_a_split_with_itself_is_symmetric_psd():
    model = TinyClassifier("mlm", dtype=torch.float64)
    x = make_batch(6)
    k = kernels.compute_shard(model, x, x, "sgd", row_batch=4, col_batch=3).kernel.reshape(18, 18)
    scale = k.abs().max()
    torch.testing.assert_close(k, k.T, rtol=0, atol=1e-12 * scale)
    assert torch.linalg.eigvalsh((k + k.T) / 2).min() >= -1e-10 * scale


def test_signgd_self_entry_counts_nonzero_gradient_coordinates():
    model = TinyClassifier("cls", dtype=torch.float64)
    freeze_key_biases(model)
    x = make_batch(4)
    k = kernels.compute_shard(model, x, x, "signgd").kernel
    for i in range(4):
        nonzero = (autograd_jacobian(model, x, i) != 0).sum(1)
        assert torch.equal(torch.stack([k[i, a, i, a] for a in range(3)]), nonzero.double())
        assert 0 < nonzero.min() < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method", ["tiled", "vmap"])
@pytest.mark.parametrize("formula", ["sgd", "asymmetric-signgd"])  # signgd sums integers: exact in any order
def test_shards_and_batch_sizes_give_the_same_bits(formula, method):
    model = TinyClassifier("mlm")  # float32 Jacobians, float64 contraction
    x, y = make_batch(7, seed=3), make_batch(5, seed=4)
    whole = kernels.compute_shard(model, x, y, formula, row_batch=7, col_batch=5, method=method).kernel

    def sharded(row_parts, col_parts, row_batch, col_batch):
        return merge_shards([
            kernels.compute_shard(model, x, y, formula, row_range=r, col_range=c, row_batch=row_batch, col_batch=col_batch,
                                  method=method)
            for r in split_range(7, row_parts) for c in split_range(5, col_parts)])

    assert torch.equal(whole, sharded(3, 2, 2, 1))
    assert torch.equal(whole, sharded(2, 3, 1, 4))
    assert whole.abs().sum() > 0


@pytest.mark.parametrize("head", ["cls", "mlm"])
def test_tiled_default_equals_the_per_pair_reference(head):
    """More examples than a tile on each side, row and column tiles cut by the shard, a tied decoder (mlm)."""
    model = TinyClassifier(head, dtype=torch.float64)
    freeze_key_biases(model)
    x, y = make_batch(TILE + 3, seed=1), make_batch(2 * TILE + 1, seed=2)
    formulas = list(FORMULAS)
    tiled = kernels.compute_shards(model, x, y, formulas, row_range=(2, TILE + 3), col_range=(1, 2 * TILE),
                                   row_batch=3, col_batch=5)
    ref = kernels.compute_shards(model, x, y, formulas, row_range=(2, TILE + 3), col_range=(1, 2 * TILE),
                                 method="naive")
    for formula in formulas:
        got, want = tiled[formula].kernel, ref[formula].kernel
        assert got.shape == want.shape and got.abs().sum() > 0
        if formula == "signgd":
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))
    decoder = model.lm.cls.predictions.decoder
    assert "forward" not in vars(decoder)  # the swapped forward is gone
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("hidden", [HIDDEN, WIDE])  # Linear weights materialised, factored
@pytest.mark.parametrize("formula", ["sgd", "asymmetric-signgd"])
def test_tiled_shards_across_tiles_threads_and_train_x_train_give_the_same_bits(formula, hidden):
    model = TinyClassifier("mlm", hidden=hidden)  # float32 Jacobians, float64 contraction
    n, m = 2 * TILE + 3, TILE + 3
    x, y = make_batch(n, seed=3), make_batch(m, seed=4)
    whole = kernels.compute_shard(model, x, y, formula, row_batch=n, col_batch=m).kernel
    for row_parts, col_parts, row_batch, col_batch in ((3, 2, 2, 1), (5, 3, 9, 4), (1, 4, 17, 3)):
        parts = [kernels.compute_shard(model, x, y, formula, row_range=r, col_range=c, row_batch=row_batch,
                                       col_batch=col_batch)
                 for r in split_range(n, row_parts) for c in split_range(m, col_parts)]
        assert torch.equal(whole, merge_shards(parts))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(whole, kernels.compute_shard(model, x, y, formula, row_batch=5, col_batch=20).kernel)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    xx = kernels.compute_shard(model, x, x, formula, row_batch=8, col_batch=8).kernel  # diagonal tiles reused
    assert torch.equal(xx, merge_shards([kernels.compute_shard(model, x, x, formula, row_range=r, col_range=c)
                                         for r in split_range(n, 4) for c in split_range(n, 3)]))
    ref = kernels.compute_shard(model, x, y, formula, method="naive").kernel
    torch.testing.assert_close(whole, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_formulas_from_one_pass_equal_each_formula_alone():
    model = TinyClassifier("mlm")
    x, y = make_batch(6, seed=6), make_batch(5, seed=7)
    together = kernels.compute_shards(model, x, y, ["asymmetric-signgd", "sgd", "signgd"], row_range=(1, 5),
                                      col_range=(2, 5), row_batch=3, col_batch=2)
    assert list(together) == ["asymmetric-signgd", "sgd", "signgd"]
    for formula, shard in together.items():
        alone = kernels.compute_shard(model, x, y, formula, row_range=(1, 5), col_range=(2, 5), row_batch=4, col_batch=3)
        assert shard.formula == formula and shard.rows == (1, 5) and shard.cols == (2, 5)
        assert torch.equal(shard.kernel, alone.kernel)
    jx, jy = jacobians.jacobians(model, x), jacobians.jacobians(model, y)
    for block in kernel_pairs.kernel_blocks(jx, jy, ["sgd", "asymmetric-signgd"]).values():
        assert block.untyped_storage().nbytes() == block.numel() * 8  # its own storage: torch.save writes only it


def test_naive_and_vmap_jacobians_agree_and_binary_is_the_logit_difference():
    model = TinyClassifier("mlm", num_labels=2, dtype=torch.float64)
    x, y = make_batch(4, labels=2), make_batch(3, seed=5, labels=2)  # examples 1 and 3 share a mask
    naive = jacobians.jacobians(model, x, method="naive")
    for chunk in (1, 4):  # 4: vmap over mask groups, as on a GPU
        for a, b in zip(jacobians.jacobians(model, x, vmap_chunk=chunk), naive):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    full = kernels.compute_shard(model, x, y, "sgd").kernel
    binary = kernels.compute_shard(model, x, y, "sgd", binary=True, method="naive").kernel
    diff = full[:, 1, :, 1] - full[:, 1, :, 0] - full[:, 0, :, 1] + full[:, 0, :, 0]  # <J1 - J0, J1 - J0>
    assert binary.shape == (4, 1, 3, 1)
    torch.testing.assert_close(binary[:, 0, :, 0], diff, rtol=1e-9, atol=1e-9)


def test_jacobians_leave_the_model_mode_and_frozen_parameters_alone():
    model = TinyClassifier("cls").train()
    model.lm.bert.embeddings.requires_grad_(False)
    jac = jacobians.jacobians(model, make_batch(3))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [j.shape for j in jac] == [(3, 3, *p.shape) for p in trainable]
    assert model.training


def test_logits_are_the_models_outputs_in_float64():
    model = TinyClassifier("mlm")
    x = make_batch(5)
    with torch.no_grad():
        expected = model(x["input_ids"], x["attention_mask"], x["token_type_ids"], x["mask_pos"]).double()
    f0 = jacobians.logits(model, x, batch_size=2)
    assert f0.dtype == torch.float64 and f0.shape == (5, 3)
    torch.testing.assert_close(f0, expected, rtol=1e-5, atol=1e-6)
    model2 = TinyClassifier("mlm", num_labels=2)
    f0b = jacobians.logits(model2, x, binary=True)
    assert f0b.shape == (5, 1)
    full = jacobians.logits(model2, x)
    torch.testing.assert_close(f0b[:, 0], full[:, 1] - full[:, 0])


def test_merge_names_the_missing_and_the_overlapping_shard():
    model = TinyClassifier("cls")
    x, y = make_batch(4), make_batch(6, seed=1)
    shards = [kernels.compute_shard(model, x, y, "signgd", row_range=r, col_range=c)
              for r in split_range(4, 2) for c in split_range(6, 2)]
    assert merge_shards(shards).shape == (4, 3, 6, 3)
    with pytest.raises(LmftError, match=r"no shard covers rows 2:4 x cols 0:3 of the 4x6 kernel"):
        merge_shards(shards[:2] + shards[3:])
    with pytest.raises(LmftError, match=r"shards rows 0:2 x cols 0:3 and rows 0:2 x cols 0:3 overlap"):
        merge_shards(shards + shards[:1])
    other = kernels.compute_shard(model, x, y, "sgd", row_range=(0, 2), col_range=(0, 3))
    with pytest.raises(LmftError, match="sgd kernel"):
        merge_shards([other] + shards[1:])


def test_files_round_trip_in_the_papers_format(tmp_path):
    model = TinyClassifier("cls")
    x, y = make_batch(3), make_batch(4, seed=1)
    shard = kernels.compute_shard(model, x, y, "asymmetric-signgd", col_range=(1, 4))
    kernel_files.save_shard(shard, tmp_path / "shard.pt")
    back = kernel_files.load_shard(tmp_path / "shard.pt")
    assert torch.equal(back.kernel, shard.kernel) and (back.rows, back.cols) == ((0, 3), (1, 4))

    kernel = kernels.compute_shard(model, x, y, "sgd").kernel
    kernel_files.save_kernel(tmp_path / "test.pt", kernel, y["labels"])
    raw = torch.load(tmp_path / "test.pt", weights_only=True)  # what the paper's code loads
    assert isinstance(raw, tuple) and torch.equal(raw[0], kernel) and raw[1].dtype == torch.long
    assert torch.equal(kernel_files.load_kernel(tmp_path / "test.pt")[1], y["labels"])

    kernel_files.save_logits(tmp_path / "f0.pt", jacobians.logits(model, y), y["labels"])
    f0, labels = kernel_files.load_logits(tmp_path / "f0.pt")
    assert f0.shape == (4, 3) and torch.equal(labels, y["labels"])
    with pytest.raises(ArtifactError, match="not a kernel shard"):
        kernel_files.load_shard(tmp_path / "test.pt")
    with pytest.raises(ArtifactError, match=r"not a \(kernel, labels\) tuple"):
        kernel_files.load_kernel(tmp_path / "shard.pt")


def test_bad_input_raises_clear_errors():
    model = TinyClassifier("cls")
    x = make_batch(3)
    with pytest.raises(LmftError, match="unknown kernel formula 'ntk'"):
        kernels.compute_shard(model, x, x, "ntk")
    with pytest.raises(LmftError, match="row range 2:2 is empty"):
        kernels.compute_shard(model, x, x, "sgd", row_range=(2, 2))
    with pytest.raises(LmftError, match="binary kernels need a two-class model, this one has 3"):
        kernels.compute_shard(model, x, x, "sgd", binary=True)
    bad = dict(x, mask_pos=torch.tensor([0, 8, 0]))
    with pytest.raises(LmftError, match="example 1 has mask_pos 8 outside its attended tokens"):
        kernels.compute_shard(model, bad, x, "sgd")
    with pytest.raises(LmftError, match="missing 'attention_mask'"):
        jacobians.jacobians(model, {k: v for k, v in x.items() if k != "attention_mask"})
    with pytest.raises(LmftError, match="unknown Jacobian method"):
        jacobians.jacobians(model, x, method="jvp")
    with pytest.raises(LmftError, match="unknown Jacobian method 'tiled'; one of vmap, naive"):
        jacobians.jacobians(model, x, method="tiled")
    with pytest.raises(LmftError, match="unknown kernel method 'jvp'; one of tiled, vmap, naive"):
        kernels.compute_shard(model, x, x, "sgd", method="jvp")
    with pytest.raises(LmftError, match="vmap_chunk must be >= 1"):
        jacobians.jacobians(model, x, vmap_chunk=0)
    with pytest.raises(LmftError, match="cannot cut 3 examples into 4 shards"):
        split_range(3, 4)
    model.requires_grad_(False)
    with pytest.raises(LmftError, match="no trainable parameters"):
        jacobians.jacobians(model, x)


def _backbone(arch: str, attn: str, hidden: int = HIDDEN) -> tuple[nn.Module, bool]:
    small = dict(vocab_size=VOCAB, num_attention_heads=2, attn_implementation=attn)
    if arch == "bert":
        return BertForMaskedLM(BertConfig(hidden_size=hidden, num_hidden_layers=1, intermediate_size=2 * hidden,
                                          max_position_embeddings=16, **small)), False
    if arch == "roberta":
        return RobertaForMaskedLM(RobertaConfig(hidden_size=hidden, num_hidden_layers=1, intermediate_size=2 * hidden,
                                                max_position_embeddings=20, pad_token_id=0, type_vocab_size=1,
                                                **small)), False
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=hidden, n_layer=1, n_positions=16, bos_token_id=1, eos_token_id=1,
                                          **small)), True
    return LlamaForCausalLM(LlamaConfig(hidden_size=hidden, num_hidden_layers=1, intermediate_size=2 * hidden,
                                        num_key_value_heads=1, max_position_embeddings=16, bos_token_id=1,
                                        eos_token_id=1, pad_token_id=0, **small)), True


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # sdpa has no vmap batching rule on the CPU
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2", "llama"])
def test_vmap_runs_through_the_shared_classifier_of_each_architecture(arch, attn):
    torch.manual_seed(0)
    backbone, causal = _backbone(arch, attn)
    clf = Classifier(backbone.double(), "causal" if causal else "prompt", 2, causal, label_ids=[5, 6]).eval()
    x = make_batch(5, labels=2)  # examples 1 and 3 share a mask: one vmap call with vmap_chunk=4
    for a, b in zip(jacobians.jacobians(clf, x, vmap_chunk=4), jacobians.jacobians(clf, x, method="naive")):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # the tiled path: embedding tables as rows (RoBERTa's padding row, GPT-2's tied lm_head)
    tiled = kernels.compute_shard(clf, x, x, "sgd").kernel
    ref = kernels.compute_shard(clf, x, x, "sgd", method="naive").kernel
    torch.testing.assert_close(tiled, ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))


@pytest.mark.parametrize("arch", ["roberta", "gpt2", "llama"])
def test_factored_weights_of_each_architecture_equal_the_reference(arch):
    """Wide Linear (GPT-2: Conv1D) weights kept factored, LayerNorm and RMSNorm rules, a padding row
    (RoBERTa), a causal model's padded positions dropped: every formula against the per-pair reference."""
    torch.manual_seed(0)
    backbone, causal = _backbone(arch, "eager", WIDE)
    clf = Classifier(backbone.double(), "causal" if causal else "prompt", 2, causal, label_ids=[5, 6]).eval()
    x, y = make_batch(TILE + 2, labels=2), make_batch(5, seed=4, labels=2)
    assert len(tile_jacobians.layout_of(clf, 9).factored) >= 3
    got = kernels.compute_shards(clf, x, y, ["sgd", "asymmetric-signgd"], row_range=(1, TILE + 2), binary=True)
    ref = kernels.compute_shards(clf, x, y, ["sgd", "asymmetric-signgd"], row_range=(1, TILE + 2), binary=True,
                                 method="naive")
    for formula, shard in got.items():
        want = ref[formula].kernel
        assert want.abs().sum() > 0
        torch.testing.assert_close(shard.kernel, want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


def test_pretrained_logits_do_not_depend_on_the_slice():
    model = TinyClassifier("mlm")
    x = make_batch(7, seed=3)
    whole = jacobians.logits(model, x)
    parts = [jacobians.logits(model, jacobians.take(x, torch.arange(a, b))) for a, b in split_range(7, 3)]
    assert whole.shape == (7, 3) and whole.dtype == torch.float64
    assert torch.equal(whole, torch.cat(parts))  # column shards of any size: the same f0 bits


def test_a_memory_budget_cuts_the_tensors_into_blocks_and_gives_the_same_kernel(monkeypatch):
    """A budget with room for a few tensors (several blocks) against no budget; too small a budget."""
    model = TinyClassifier("mlm", dtype=torch.float64, hidden=WIDE)
    x, y = make_batch(TILE + 3, seed=1), make_batch(TILE + 1, seed=2)
    formulas = list(FORMULAS)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    c = len(WORDS)
    layout = tile_jacobians.layout_of(model, 9)
    largest = max(layout.example_bytes(p, c) for p in layout.order)

    def budget(room: int, held: int) -> float:
        return (tiled_kernel.BASE_MB * 2**20 + 3 * weights + room * held) / 2**20

    runs = []
    real = tiled_kernel._run
    monkeypatch.setattr(tiled_kernel, "_run", lambda m, block, *a: runs.append(block) or real(m, block, *a))
    want = kernels.compute_shards(model, x, y, formulas)
    got = kernels.compute_shards(model, x, y, formulas, mem_mb=budget(2 * largest, 4 * TILE))  # both sides whole
    assert len(runs) >= 4 and all(block.tables == [] for block in runs[2:])  # 1 unbounded run, then >= 3 blocks
    assert {id(p) for block in runs[1:] for p in block.order} == {id(p) for p in layout.order}
    for formula in formulas:
        assert got[formula].kernel.abs().sum() > 0
        torch.testing.assert_close(got[formula].kernel, want[formula].kernel, rtol=1e-10,
                                   atol=1e-10 * float(want[formula].kernel.abs().max()))
    with pytest.raises(LmftError, match=r"kernels\.mem_mb = .* too small"):  # a tile of rows and one of columns
        kernels.compute_shards(model, x, y, formulas, mem_mb=budget(largest - 1, 2 * TILE))
    with pytest.raises(LmftError, match=r"kernels\.mem_mb bounds the tiled method only"):
        kernels.compute_shards(model, x, y, formulas, method="naive", mem_mb=budget(largest, 2 * TILE))


def test_tiles_factor_wide_linear_weights_and_fall_back_to_one_example_at_a_time():
    """Factored Linear weights where their factors are smaller; a tied decoder read as E[label_ids] (the
    prompt head of an encoder without MLM head) and an uncovered tensor (a prefix) take one example at a time."""
    wide = tile_jacobians.layout_of(TinyClassifier("mlm", hidden=WIDE), 9)
    # per layer the query, key, value, attention output, intermediate and output weights; the MLM transform's
    assert wide.batched and all(p.dim() == 2 for p in wide.factored) and len(wide.factored) == 2 * 6 + 1
    assert tile_jacobians.layout_of(TinyClassifier("mlm"), 9).factored == []
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=WIDE, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=WIDE, max_position_embeddings=16, attn_implementation="eager")
    encoder = Classifier(BertModel(config).double(), "prompt", 2, False, label_ids=[5, 6]).eval()
    x = make_batch(TILE + 2, labels=2)
    got = kernels.compute_shards(encoder, x, x, ["sgd", "signgd"], row_range=(1, TILE + 2), col_range=(0, 5))
    ref = kernels.compute_shards(encoder, x, x, ["sgd", "signgd"], row_range=(1, TILE + 2), col_range=(0, 5),
                                 method="naive")
    torch.testing.assert_close(got["sgd"].kernel, ref["sgd"].kernel, rtol=1e-10, atol=0)
    assert got["signgd"].kernel.abs().sum() > 0
    with pytest.raises(tile_jacobians.NotSeparable):
        tile_jacobians.tile_jacobians(encoder, tile_jacobians.layout_of(encoder, 9), x, 0, 0, TILE, False)
    select_trainable(encoder, "prefix:2")
    assert not tile_jacobians.layout_of(encoder, 9).batched
    got = kernels.compute_shard(encoder, x, x, "sgd", col_range=(0, 3)).kernel
    ref = kernels.compute_shard(encoder, x, x, "sgd", col_range=(0, 3), method="naive").kernel
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)
