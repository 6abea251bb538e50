"""MeZO: SPSA matches autograd, exact restore, seeded reproducibility and resume, learning, errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from transformers import BertConfig, BertModel

from lmft.finetune import excursion
from lmft.finetune.spsa import MeZO, mezo_step, perturb_, spsa_grad
from lmft.io import LmftError, torch_load, torch_save
from lmft.models.losses import classifier_loss


class TinyBert(nn.Module):
    """A Classifier: 2-layer, 16-wide random BERT, linear head on [CLS]; no dropout."""

    def __init__(self, seed: int = 0, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(16, classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                mask_pos: Tensor | None = None) -> Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.head(h.last_hidden_state[:, 0])


class Bag(nn.Module):
    """A Classifier small enough for MeZO to train in a few hundred steps: mean of embeddings, linear."""

    def __init__(self, vocab: int = 12, dim: int = 4, classes: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                mask_pos: Tensor | None = None) -> Tensor:
        m = attention_mask.unsqueeze(-1).to(self.emb.weight.dtype)
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1))


def bert_batch(n: int = 6, length: int = 7, classes: int = 3) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 40, (n, length), generator=g)
    attn = torch.ones_like(ids)
    attn[0, -2:] = 0  # one right-padded example
    return {"input_ids": ids, "attention_mask": attn, "token_type_ids": torch.zeros_like(ids),
            "mask_pos": torch.zeros(n, dtype=torch.long), "labels": torch.arange(n) % classes}


def bits(params: list[Tensor]) -> list[Tensor]:
    """The parameters' bit patterns (tells -0.0 from 0.0, unlike ==)."""
    ints = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}
    return [p.detach().clone().view(ints[p.dtype]) for p in params]


def same_bits(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def direction(params: list[Tensor], seed: int, scale: float = 1.0, rademacher: bool = False) -> list[Tensor]:
    """``fl(scale z)`` for ``seed`` (z itself by default), read back through the public API: perturbing zeros."""
    zeros = [torch.zeros_like(p) for p in params]
    perturb_(zeros, seed, scale, rademacher=rademacher)
    return zeros


def test_projected_grad_matches_autograd_directional_derivative():
    model = TinyBert().double()
    batch = bert_batch()
    params = list(model.parameters())
    loss = classifier_loss(model, batch)
    grads = torch.autograd.grad(loss, params)
    z = direction(params, seed=7)
    exact = sum((gr * zi).sum() for gr, zi in zip(grads, z)).item()
    assert abs(exact) > 1e-2  # a real directional derivative, not zero matching zero
    before = bits(params)
    errors = []
    for eps in (1e-4, 1e-5):
        g, plus, minus = spsa_grad(params, lambda: classifier_loss(model, batch), eps=eps, seed=7)
        errors.append(abs(g - exact) / abs(exact))
        assert (plus + minus) / 2 == pytest.approx(loss.item(), rel=1e-5)  # + O(eps^2) curvature
        assert same_bits(bits(params), before)
    assert errors[0] < 1e-3
    assert errors[1] < 1e-5  # the central difference's O(eps^2) error


@pytest.mark.parametrize("eps,n,rademacher", [(1e-3, 1, False), (1e-3, 3, False), (1e-1, 1, False),
                                              (1e-3, 3, True), (1e-1, 1, True)])
def test_lr_zero_restores_parameters_bit_for_bit(eps, n, rademacher, monkeypatch):
    monkeypatch.setattr("lmft.finetune.excursion.CHUNK", 97)  # many chunks per tensor, as big tensors have
    model = TinyBert()
    with torch.no_grad():  # make rounding bite: negative zeros, small and mid-sized values
        model.bert.embeddings.word_embeddings.weight[0].fill_(-0.0)
        model.head.bias.copy_(torch.tensor([1e-6, -3e-4, 0.7]))
    batch = bert_batch()
    params = list(model.parameters())
    before = bits(params)

    # The reference arithmetic (+eps, -2 eps, +eps) does not come back: why the restore keeps values.
    perturb_(params, 5, eps, rademacher=rademacher)
    perturb_(params, 5, -2 * eps, rademacher=rademacher)
    perturb_(params, 5, eps, rademacher=rademacher)
    assert not same_bits(bits(params), before)
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b.view(p.dtype))

    out = mezo_step(params, lambda: classifier_loss(model, batch), eps=eps, lr=0.0, weight_decay=0.1, seed=5,
                    n_perturbations=n, rademacher=rademacher)
    assert same_bits(bits(params), before)
    assert 0 < out["kept_fraction"] <= 1
    assert out["projected_grad"] != 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lr_zero_is_exact_in_half_precision(dtype):
    params = [torch.randn(64, 8, generator=torch.Generator().manual_seed(0)).to(dtype)]
    before = bits(params)
    mezo_step(params, lambda: (params[0].float() ** 2).sum(), eps=1e-2, lr=0.0, seed=1)
    assert same_bits(bits(params), before)


@pytest.mark.parametrize("rademacher", [False, True])
def test_step_equals_the_reference_spsa_update(rademacher):
    """Against SPSA written out of place: theta +- eps z built as new tensors, loaded, evaluated; the
    direction read back once serves +eps, -eps and the update (one perturbation, used three times)."""
    model = TinyBert().double()
    batch = bert_batch()
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    z = direction(theta, 13, rademacher=rademacher)

    def loss_at(values: list[Tensor]) -> float:
        with torch.no_grad():
            for p, v in zip(model.parameters(), values):
                p.copy_(v)
            return classifier_loss(model, batch).item()

    plus = loss_at([t + 1e-3 * zi for t, zi in zip(theta, z)])
    minus = loss_at([t - 1e-3 * zi for t, zi in zip(theta, z)])
    loss_at(theta)
    g = (plus - minus) / 2e-3
    out = mezo_step(list(model.parameters()), lambda: classifier_loss(model, batch), eps=1e-3, lr=0.05,
                    weight_decay=0.1, seed=13, rademacher=rademacher)
    assert out["projected_grad"] == pytest.approx(g, rel=1e-9)
    assert out["loss"] == pytest.approx((plus + minus) / 2, rel=1e-12)
    for name, p, t, zi in zip(names, model.parameters(), theta, z):
        torch.testing.assert_close(p.detach(), t - 0.05 * (g * zi + 0.1 * t), rtol=0, atol=1e-12, msg=name)


def test_update_starts_from_the_exactly_restored_parameters():
    """The last pass restores theta and updates it: the same bits as the update applied to theta itself."""
    model = TinyBert()
    batch = bert_batch()
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    loss_fn = lambda: classifier_loss(model, batch)  # noqa: E731
    g, _, _ = spsa_grad(params, loss_fn, eps=1e-3, seed=4)
    d = direction(params, 4, 1e-3)  # fl(eps z): the update adds (alpha / eps) d, alpha z up to d's rounding
    mezo_step(params, loss_fn, eps=1e-3, lr=0.01, weight_decay=0.5, seed=4)
    decay, alpha = 1.0 - 0.01 * 0.5, -0.01 * g
    assert same_bits(bits(params), bits([t.mul_(decay).add_(di, alpha=alpha / 1e-3) for t, di in zip(theta, d)]))


@pytest.mark.parametrize("n", [1, 3])
def test_a_step_draws_z_four_times_per_perturbation_less_one(n, monkeypatch):
    monkeypatch.setattr("lmft.finetune.excursion.CHUNK", 97)
    draws = []
    original = excursion.Scratch.draw
    monkeypatch.setattr(excursion.Scratch, "draw",
                        lambda self, c, seed, *rest, **kw: draws.append(seed) or original(self, c, seed, *rest, **kw))
    params = [torch.randn(300), torch.randn(5, 7)]  # 4 + 1 chunks
    mezo_step(params, lambda: params[0].sum() + params[1].square().sum(), eps=1e-3, lr=1e-2, seed=0,
              n_perturbations=n)
    assert len(draws) == (4 * n - 1) * 5
    assert len(set(draws)) == 5 * n  # one seed per chunk and perturbation, each drawn again as needed


def test_direction_is_standard_normal_and_reproducible_chunk_by_chunk(monkeypatch):
    monkeypatch.setattr("lmft.finetune.excursion.CHUNK", 1000)
    params = [torch.zeros(20_000), torch.zeros(3, 4)]
    z = direction(params, 9)
    assert same_bits(bits(z), bits(direction(params, 9)))
    assert not torch.equal(z[0], direction(params, 10)[0])
    chunks = z[0].view(20, 1000)
    assert len({tuple(c[:4].tolist()) for c in chunks}) == 20  # every chunk draws its own numbers
    assert abs(z[0].mean().item()) < 0.03 and abs(z[0].std().item() - 1) < 0.03
    assert chunks.mean(1).abs().max().item() < 0.2  # no chunk off on its own: 0.2 is 6 sigma


def test_rademacher_direction_is_the_bits_of_each_chunks_seeded_words(monkeypatch):
    """u is +-1: element i of a chunk is -1 where bit i % 32 of the chunk generator's word i // 32 is set."""
    monkeypatch.setattr("lmft.finetune.excursion.CHUNK", 1000)
    params = [torch.zeros(20_000), torch.zeros(3, 5)]
    u = direction(params, 9, rademacher=True)
    assert same_bits(bits(u), bits(direction(params, 9, rademacher=True)))
    assert set(torch.cat([t.flatten() for t in u]).unique().tolist()) == {-1.0, 1.0}
    base = excursion.splitmix64(9)
    for k, chunk in enumerate([u[0][i:i + 1000] for i in range(0, 20_000, 1000)] + [u[1].flatten()]):
        g = torch.Generator().manual_seed((base + k) & excursion.MASK64)
        raw = torch.empty(-(-chunk.numel() // 32), 1, dtype=torch.int32).random_(-2**31, 2**31, generator=g)
        want = 1.0 - 2 * ((raw.long() >> torch.arange(32)) & 1).flatten()[:chunk.numel()]
        assert torch.equal(chunk, want), k
    assert abs(u[0].mean().item()) < 0.03  # +1 and -1 equally likely: 0.03 is 4 sigma
    assert len({tuple(c[:16].tolist()) for c in u[0].view(20, 1000)}) == 20
    half = [direction([torch.zeros(100, dtype=dt)], 9, 0.1, rademacher=True)[0] for dt in (torch.float16, torch.float32)]
    assert torch.equal(half[0], half[1].half())  # half precision: +-fl16(0.1), the same signs


def test_several_perturbations_average_gradients_taken_at_the_same_point():
    model = TinyBert().double()
    batch = bert_batch()
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    loss_fn = lambda: classifier_loss(model, batch)  # noqa: E731
    g0, _, _ = spsa_grad(params, loss_fn, eps=1e-3, seed=20)
    g1, _, _ = spsa_grad(params, loss_fn, eps=1e-3, seed=21)
    z0, z1 = direction(params, 20), direction(params, 21)
    out = mezo_step(params, loss_fn, eps=1e-3, lr=0.1, seed=20, n_perturbations=2)
    assert out["projected_grad"] == pytest.approx((g0 + g1) / 2, rel=1e-12)
    for p, t, a, b in zip(params, theta, z0, z1):
        torch.testing.assert_close(p.detach(), t - 0.05 * (g0 * a + g1 * b), rtol=0, atol=1e-12)


def run(seed: int, steps: int, model: TinyBert | None = None, state: dict | None = None) -> list[Tensor]:
    model = model or TinyBert()
    batch = bert_batch()
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-3, seed=seed)
    if state is not None:
        opt.load_state_dict(state)
    for _ in range(steps):
        opt.step(lambda: classifier_loss(model, batch))
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_same_run_different_seed_different_run():
    a, b, c = run(3, 4), run(3, 4), run(4, 4)
    assert same_bits(bits(a), bits(b))
    assert not any(torch.equal(x, y) for x, y in zip(a, c))


def test_resume_from_state_continues_the_same_run(tmp_path):
    uninterrupted = run(3, 6)
    model = TinyBert()
    batch = bert_batch()
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-3, seed=3)
    for _ in range(3):
        opt.step(lambda: classifier_loss(model, batch))
    torch_save({"model": model.state_dict(), "mezo": opt.state_dict()}, tmp_path / "ckpt.pt")

    saved = torch_load(tmp_path / "ckpt.pt")
    fresh = TinyBert(seed=99)  # different weights until the checkpoint is loaded
    fresh.load_state_dict(saved["model"])
    assert saved["mezo"]["steps"] == 3
    resumed = run(0, 3, model=fresh, state=saved["mezo"])  # seed 0 is overridden by the loaded state
    assert same_bits(bits(resumed), bits(uninterrupted))


def test_loss_decreases_on_a_separable_problem():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(32) % 2
    ids = torch.randint(1, 6, (32, 6), generator=g) + 5 * labels[:, None]  # class 0: tokens 1-5, class 1: 6-10
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    model = Bag()
    opt = MeZO(model.parameters(), lr=0.1, eps=1e-3, seed=0)
    first = classifier_loss(model, batch).item()
    for _ in range(300):
        opt.step(lambda: classifier_loss(model, batch))
    with torch.no_grad():
        last = classifier_loss(model, batch).item()
        acc = (model(ids, batch["attention_mask"]).argmax(1) == labels).float().mean().item()
    assert last < 0.1 * first
    assert acc == 1.0


def test_only_the_given_parameters_change():
    model = TinyBert()
    batch = bert_batch()
    tuned = [p for n, p in model.named_parameters() if n.endswith("bias")]
    others = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    tuned_before, others_before = bits(tuned), bits(others)
    opt = MeZO(tuned, lr=1e-2, eps=1e-3, seed=1)
    for _ in range(3):
        opt.step(lambda: classifier_loss(model, batch))
    assert same_bits(bits(others), others_before)
    assert all(not torch.equal(a, b) for a, b in zip(bits(tuned), tuned_before))


def test_no_autograd_graph_is_built():
    model = TinyBert()
    batch = bert_batch()
    out = MeZO(model.parameters(), lr=1e-3, seed=0).step(lambda: classifier_loss(model, batch))
    assert all(p.grad is None for p in model.parameters())
    assert set(out) == {"loss", "projected_grad", "kept_fraction", "seed"}


@pytest.mark.parametrize("kwargs,message", [
    ({"eps": 0.0}, "eps must be a positive"),
    ({"eps": float("nan")}, "eps must be a positive"),
    ({"lr": -1.0}, "lr must be >= 0"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
    ({"n_perturbations": 0}, "n_perturbations must be an integer >= 1"),
])
def test_bad_hyperparameters_raise(kwargs, message):
    params = [nn.Parameter(torch.zeros(3))]
    with pytest.raises(LmftError, match=message):
        MeZO(params, **{"lr": 1e-3, **kwargs})
    with pytest.raises(LmftError, match=message):
        mezo_step(params, lambda: params[0].sum(), **{"eps": 1e-3, "lr": 1e-3, "seed": 0, **kwargs})


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_bad_seeds_raise(seed):
    params = [torch.zeros(3)]
    with pytest.raises(LmftError, match="the seed must be an integer"):
        perturb_(params, seed, 1.0)
    with pytest.raises(LmftError, match="the seed must be an integer"):
        spsa_grad(params, lambda: params[0].sum(), 1e-3, seed)
    with pytest.raises(LmftError, match="the seed must be an integer"):
        mezo_step(params, lambda: params[0].sum(), eps=1e-3, lr=1e-3, seed=seed)


def test_bad_parameter_lists_raise():
    w = nn.Parameter(torch.zeros(4, 3))
    with pytest.raises(LmftError, match="empty"):
        MeZO([], lr=1e-3)
    with pytest.raises(LmftError, match="dtype torch.int64"):
        MeZO([torch.zeros(3, dtype=torch.long)], lr=1e-3)
    with pytest.raises(LmftError, match="listed twice"):
        MeZO([w, w], lr=1e-3)
    with pytest.raises(LmftError, match="not contiguous"):
        perturb_([torch.zeros(4, 3).t()], 0, 1.0)


def test_bad_loss_raises_and_leaves_parameters_unchanged():
    model = TinyBert()
    params = list(model.parameters())
    before = bits(params)
    opt = MeZO(params, lr=1e-3, seed=0)
    with pytest.raises(LmftError, match="the loss is nan"):
        opt.step(lambda: torch.tensor(float("nan")))
    with pytest.raises(LmftError, match="must return a scalar"):
        opt.step(lambda: torch.ones(2))
    assert same_bits(bits(params), before)
    assert opt.steps == 0


def test_bad_state_raises():
    opt = MeZO([nn.Parameter(torch.zeros(3))], lr=1e-3)
    with pytest.raises(LmftError, match="missing \\['rng_state'\\]"):
        opt.load_state_dict({"steps": 1})
    with pytest.raises(LmftError, match="'steps' must be"):
        opt.load_state_dict({"steps": -1, "rng_state": opt.state_dict()["rng_state"]})
    with pytest.raises(LmftError, match="'rng_state' must be"):
        opt.load_state_dict({"steps": 1, "rng_state": torch.zeros(3)})
    with pytest.raises(LmftError, match="not a CPU generator state"):
        opt.load_state_dict({"steps": 1, "rng_state": torch.zeros(3, dtype=torch.uint8)})


def test_classifier_loss_names_a_bad_loss():
    model, batch = TinyBert(), bert_batch()
    with pytest.raises(LmftError, match="unknown loss 'mse'; one of label-words, lm"):
        classifier_loss(model, batch, "mse")
    with pytest.raises(LmftError, match="the lm loss needs a lmft.models.heads.Classifier, got TinyBert"):
        classifier_loss(model, batch, "lm")


@pytest.mark.parametrize("n", [8, 97, 4096])
@pytest.mark.parametrize("density", [0.0, 0.002, 0.05, 0.6])
def test_flagged_positions_are_those_of_nonzero(n, density):
    g = torch.Generator().manual_seed(n)
    flags = torch.zeros(-(-n // 8) * 8, dtype=torch.bool)
    flags[:n] = torch.rand(n, generator=g) < density
    found = excursion._flagged(flags)
    expected = flags.nonzero().view(-1)
    assert (found is None) if not expected.numel() else torch.equal(found, expected)


@pytest.mark.parametrize("dtype,eps,tiny,form", [
    (torch.float32, 1e-3, False, "delta"),  # few kept, bit differences within int16
    (torch.float32, 1e-3, True, "values"),  # a weight far below eps (its bits are lost to the sum), a -0.0
    (torch.float32, 0.5, True, "copy"),  # most kept: a copy of the chunk is smaller
    (torch.float16, 1e-3, False, "values"),
    (torch.bfloat16, 1e-2, False, "values"),
    (torch.float64, 1e-3, False, "values"),
])
@pytest.mark.parametrize("sign", [1, -1])
def test_each_kept_form_restores_the_chunk_bit_for_bit(dtype, eps, tiny, form, sign):
    n = 4000
    c = (torch.randn(n, generator=torch.Generator().manual_seed(0)) * 0.05).to(dtype)
    if tiny:
        c[7], c[11] = 1e-30, -0.0
    before = c.clone()
    scratch = excursion.Scratch([c])
    d = scratch.draw(c, 123, eps).clone()
    store = excursion._Store()
    kept = excursion._move_out_(c, d, sign, scratch, store)
    assert torch.equal(c, (before.double() + sign * d.double()).to(dtype))  # the move itself: one rounding
    assert kept.form == form
    excursion._move_back_(c, d, sign, kept)
    assert same_bits([c], [before])


def test_kept_elements_of_many_chunks_share_a_few_blocks(monkeypatch):
    monkeypatch.setattr("lmft.finetune.excursion._BLOCK", 1000)
    chunks = [(torch.randn(500, generator=torch.Generator().manual_seed(i)) * 0.02).to(dtype)
              for i, dtype in enumerate([torch.float32, torch.float64, torch.float16] * 4)]
    chunks[0][3] = 1e-30  # values form in float32
    before = [c.clone() for c in chunks]
    scratch, store = excursion.Scratch(chunks), excursion._Store()
    draws = [scratch.draw(c, i, 1e-3).clone() for i, c in enumerate(chunks)]
    kept = [excursion._move_out_(c, d, 1, scratch, store) for c, d in zip(chunks, draws)]
    assert {k.form for k in kept} == {"delta", "values"}
    assert len({id(k.block) for k in kept}) < len(kept) / 2
    for c, d, k in zip(chunks, draws, kept):
        excursion._move_back_(c, d, 1, k)
    assert same_bits(chunks, before)
