"""lmft.finetune.zo: FZOO and MeZO-SVRG against float64 out-of-place references, one direction per seed for
+eps, -eps and the update, exact restore, seeded reproducibility and resume, forward-pass counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.func import functional_call

from lmft.io import LmftError
from lmft.finetune.spsa import loss_at, perturb_
from lmft.finetune.zo import FZOO, MeZOSVRG
from tiny import make_model, make_tokenizer

EPS = 1e-3


@pytest.fixture(scope="module")
def lm() -> torch.nn.Module:
    """A tiny random Llama in float64, eval mode (deterministic)."""
    return make_model("llama", make_tokenizer("llama")).double().eval()


def token_batches(n: int, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 60, (3, 6), generator=g) for _ in range(n)]


def tuned(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The tensors the tests tune: the last block's attention and the final norm (a subset, so that
    frozen tensors must stay as they are)."""
    return {n: p for n, p in model.named_parameters() if ".1.self_attn." in n or n == "model.norm.weight"}


def lm_loss(model: torch.nn.Module, ids: Tensor, values: dict[str, Tensor] | None = None) -> Tensor:
    """Next-token loss on ``ids``; with ``values``, out of place: those tensors replace the model's."""
    with torch.no_grad():
        if values is None:
            return model(input_ids=ids, labels=ids).loss
        return functional_call(model, values, args=(), kwargs={"input_ids": ids, "labels": ids}).loss


def snapshot(params: dict[str, Tensor]) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in params.items()}


def restore(params: dict[str, torch.nn.Parameter], values: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(values[n])


def draw(params: dict[str, Tensor], seed: int, rademacher: bool = False) -> dict[str, Tensor]:
    """z (or the Rademacher u) of ``seed`` read back through the public API: perturbing zeros by 1.0 leaves it."""
    zeros = {n: torch.zeros_like(p) for n, p in params.items()}
    perturb_(list(zeros.values()), seed, 1.0, rademacher=rademacher)
    return zeros


def axpy(x: dict[str, Tensor], *terms: tuple[float, dict[str, Tensor]]) -> dict[str, Tensor]:
    """x + sum a_i y_i, new tensors."""
    return {n: x[n] + sum(a * y[n] for a, y in terms) for n in x}


def bit_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(a[n].view(torch.int64), b[n].view(torch.int64)) for n in a)


def step_seeds(seed: int, n: int) -> list[int]:
    """The step seeds an optimiser seeded with ``seed`` draws (lmft.finetune.spsa.SEED_RANGE)."""
    g = torch.Generator().manual_seed(seed)
    return [int(torch.randint(2**62, (), generator=g)) for _ in range(n)]


# --- the shared perturbation: Rademacher directions, exact excursions --------------------------------

def test_rademacher_direction_is_plus_minus_one_and_balanced(lm):
    params = tuned(lm)
    z, u = draw(params, 7), draw(params, 7, rademacher=True)
    for n in params:
        assert set(u[n].unique().tolist()) <= {-1.0, 1.0}
    flat = torch.cat([v.flatten() for v in u.values()])
    assert abs(flat.mean().item()) < 0.05  # +1 and -1 equally likely (~4,000 elements)
    agree = torch.cat([(torch.sign(z[n]) == u[n]).flatten() for n in params]).double().mean().item()
    assert 0.4 < agree < 0.6  # drawn from bits of their own, not from the Gaussian draw's signs


@pytest.mark.parametrize("rademacher", [False, True])
def test_loss_at_measures_the_perturbed_point_and_restores_bit_for_bit(lm, rademacher):
    params = tuned(lm)
    ids = token_batches(1)[0]
    theta = snapshot(params)
    got = loss_at(list(params.values()), lambda: lm_loss(lm, ids), seed=3, scale=0.05, rademacher=rademacher)
    want = lm_loss(lm, ids, axpy(theta, (0.05, draw(params, 3, rademacher)))).item()
    assert got == pytest.approx(want, rel=1e-12)
    assert bit_equal(snapshot(params), theta)
    with pytest.raises(LmftError, match="loss is nan"):
        loss_at(list(params.values()), lambda: torch.tensor(math.nan), seed=3, scale=0.05)
    assert bit_equal(snapshot(params), theta)


# --- FZOO -----------------------------------------------------------------------------------------------

def fzoo_reference(lm, theta: dict[str, Tensor], ids: Tensor, seed: int, n: int, lr: float, wd: float,
                   eps: float = EPS) -> dict[str, Tensor]:
    """FZOO's step out of place (module doc of lmft.finetune.zo), every loss on new tensors."""
    u = [draw(theta, seed + i, rademacher=True) for i in range(n)]
    l0 = lm_loss(lm, ids, theta).item()
    losses = [lm_loss(lm, ids, axpy(theta, (eps, ui))).item() for ui in u]
    mean = sum(losses) / n
    sigma = math.sqrt(sum((x - mean) ** 2 for x in losses) / (n - 1))
    g = [((li - l0) / (eps * n), ui) for li, ui in zip(losses, u)]
    return axpy({k: (1 - lr * wd) * v for k, v in theta.items()}, *[(-lr / sigma * a, ui) for a, ui in g])


def test_fzoo_steps_equal_the_float64_reference(lm):
    params = tuned(lm)
    frozen = {n: p.detach().clone() for n, p in lm.named_parameters() if n not in params}
    start = snapshot(params)
    opt = FZOO(params.values(), lr=1e-3, eps=EPS, n_directions=4, weight_decay=0.1, seed=11)
    ref = dict(start)
    for ids, seed in zip(token_batches(3), step_seeds(11, 3)):
        out = opt.step(lambda ids=ids: lm_loss(lm, ids))
        assert out["seed"] == seed and out["loss"] == pytest.approx(lm_loss(lm, ids, ref).item(), rel=1e-12)
        ref = fzoo_reference(lm, ref, ids, seed, 4, 1e-3, 0.1)
        for n, p in params.items():
            torch.testing.assert_close(p.detach(), ref[n], rtol=0, atol=1e-12, msg=n)
    assert opt.steps == 3 and opt.passes == 3 * (4 + 1)
    assert not bit_equal(snapshot(params), start)
    assert all(torch.equal(p, frozen[n]) for n, p in lm.named_parameters() if n in frozen)
    restore(params, start)


def displacements(params: dict[str, Tensor], theta: dict[str, Tensor], log: list[dict[str, Tensor]], loss):
    """A loss function that also records where the parameters stand, as offsets from ``theta``."""
    def fn():
        log.append({n: p.detach() - theta[n] for n, p in params.items()})
        return loss()
    return fn


def test_fzoo_uses_one_direction_per_seed_for_the_loss_and_the_update(lm):
    """Each perturbed loss sees theta + eps u_i with u_i in {-1, +1}; the update is the
    combination of those same u_i that the measured losses say (no second draw that differs)."""
    params = tuned(lm)
    start = snapshot(params)
    ids = token_batches(1)[0]
    seen: list[dict[str, Tensor]] = []
    losses: list[float] = []

    def loss():
        value = lm_loss(lm, ids)
        losses.append(value.item())
        return value

    opt = FZOO(params.values(), lr=1e-3, eps=EPS, n_directions=3, seed=5)
    opt.step(displacements(params, start, seen, loss))
    assert len(seen) == 4 and all(bool((d == 0).all()) for d in seen[0].values())  # l_0 at theta itself
    u = [{n: d / EPS for n, d in s.items()} for s in seen[1:]]
    for ui in u:
        for v in ui.values():
            torch.testing.assert_close(v.abs(), torch.ones_like(v), rtol=0, atol=1e-9)
    l0, rest = losses[0], losses[1:]
    mean = sum(rest) / 3
    sigma = math.sqrt(sum((x - mean) ** 2 for x in rest) / 2)
    want = axpy(start, *[(-1e-3 * (li - l0) / (EPS * 3 * sigma), ui) for li, ui in zip(rest, u)])
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), want[n], rtol=0, atol=1e-9)
    restore(params, start)


def test_fzoo_with_equal_losses_does_not_move():
    params = [torch.randn(5, 3), torch.randn(4)]
    before = [p.clone() for p in params]
    out = FZOO(params, lr=1.0, eps=0.1, n_directions=2).step(lambda: 1.0)
    assert out["sigma"] == 0.0 and all(torch.equal(p, b) for p, b in zip(params, before))


# --- MeZO-SVRG ------------------------------------------------------------------------------------------

def spsa(lm, theta: dict[str, Tensor], loss, seed: int) -> tuple[float, dict[str, Tensor]]:
    """(projected gradient, z) of SPSA at ``theta`` out of place; ``loss(values)`` -> float."""
    z = draw(theta, seed)
    return (loss(axpy(theta, (EPS, z))) - loss(axpy(theta, (-EPS, z)))) / (2 * EPS), z


def test_svrg_steps_equal_the_float64_reference(lm):
    params = tuned(lm)
    start = snapshot(params)
    data = token_batches(4, seed=1)  # the full set: 4 batches

    def full(values=None):
        return sum(lm_loss(lm, ids, values).item() for ids in data) / len(data)

    opt = MeZOSVRG(params.values(), full, full_passes=4, lr=2e-3, anchor_lr=5e-3, eps=EPS, anchor_every=3,
                   weight_decay=0.1, seed=2)
    ref, anchor, c_bar, z_bar = dict(start), None, 0.0, None
    for t, (seed, ids) in enumerate(zip(step_seeds(2, 7), [data[i % 4] for i in range(7)])):
        opt.step(lambda ids=ids: lm_loss(lm, ids))
        if t % 3 == 0:  # anchor: theta_bar <- theta, g_bar from the full set, a step of lr_anchor
            anchor = dict(ref)
            c_bar, z_bar = spsa(lm, anchor, full, seed)
            ref = axpy({k: (1 - 5e-3 * 0.1) * v for k, v in ref.items()}, (-5e-3 * c_bar, z_bar))
        else:  # grad_I(theta; z) - grad_I(theta_bar; z) + g_bar, one z for both estimates
            batch = lambda values, ids=ids: lm_loss(lm, ids, values).item()  # noqa: E731
            g, z = spsa(lm, ref, batch, seed)
            g_anchor, _ = spsa(lm, anchor, batch, seed)
            ref = axpy({k: (1 - 2e-3 * 0.1) * v for k, v in ref.items()}, (-2e-3 * (g - g_anchor), z),
                       (-2e-3 * c_bar, z_bar))
        for n, p in params.items():
            torch.testing.assert_close(p.detach(), ref[n], rtol=0, atol=1e-12, msg=f"step {t}: {n}")
            torch.testing.assert_close(opt.anchor[list(params).index(n)], anchor[n], rtol=0, atol=1e-12)
    assert opt.passes == 3 * 2 * 4 + 4 * 4  # anchors at steps 0, 3, 6; four other steps
    restore(params, start)


def test_svrg_uses_one_direction_for_both_estimates_and_the_update(lm):
    """An inner step sees theta +- eps z and theta_bar +- eps z with the same z, and moves theta along
    that z and the anchor's z_a only, by the amounts its losses say."""
    params = tuned(lm)
    start = snapshot(params)
    ids = token_batches(1)[0]
    opt = MeZOSVRG(params.values(), lambda: lm_loss(lm, ids), full_passes=1, lr=1e-3, eps=EPS, anchor_every=2,
                   anchor_lr=1e-3, seed=9)
    seen: list[dict[str, Tensor]] = []
    opt.step(displacements(params, start, seen, lambda: lm_loss(lm, ids)))  # anchor: full_loss, not recorded
    assert seen == []
    theta, anchor = snapshot(params), {n: a.clone() for n, a in zip(params, opt.anchor)}
    z_a = {n: (theta[n] - anchor[n]) / (-1e-3 * opt.anchor_grad) for n in params}  # the anchor step's direction
    losses: list[float] = []

    def loss():
        value = lm_loss(lm, ids)
        losses.append(value.item())
        return value

    opt.step(displacements(params, theta, seen, loss))
    assert len(seen) == 4
    z = {n: d / EPS for n, d in seen[0].items()}
    for n in params:  # theta + eps z, theta - eps z, then theta_bar +- eps z (offsets from theta)
        torch.testing.assert_close(seen[1][n], -EPS * z[n], rtol=0, atol=1e-12)
        torch.testing.assert_close(seen[2][n], anchor[n] - theta[n] + EPS * z[n], rtol=0, atol=1e-12)
        torch.testing.assert_close(seen[3][n], anchor[n] - theta[n] - EPS * z[n], rtol=0, atol=1e-12)
    g, g_bar = (losses[0] - losses[1]) / (2 * EPS), (losses[2] - losses[3]) / (2 * EPS)
    want = axpy(theta, (-1e-3 * (g - g_bar), z), (-1e-3 * opt.anchor_grad, z_a))
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), want[n], rtol=0, atol=1e-9)
    restore(params, start)


# --- both: seeds, resume, settings ----------------------------------------------------------------------

def make(kind: str, params: list[Tensor], seed: int, loss):
    if kind == "fzoo":
        return FZOO(params, lr=1e-2, eps=EPS, n_directions=3, seed=seed)
    return MeZOSVRG(params, loss, full_passes=2, lr=1e-2, anchor_lr=1e-2, eps=EPS, anchor_every=2, seed=seed)


@pytest.mark.parametrize("kind", ["fzoo", "svrg"])
def test_seeded_runs_are_reproducible_and_resume_exactly(kind):
    target = torch.linspace(-1, 1, 12)

    def run(seed: int, steps: int, state=None, params=None):
        params = params or [torch.zeros(12)]
        loss = lambda: (params[0] - target).square().sum()  # noqa: E731
        opt = make(kind, params, seed, loss)
        if state is not None:
            opt.load_state_dict(state)
        for _ in range(steps):
            opt.step(loss)
        return params[0], opt

    a, _ = run(3, 6)
    b, _ = run(3, 6)
    c, _ = run(4, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    half, opt = run(3, 3)
    resumed, again = run(0, 3, state=opt.state_dict(), params=[half.clone()])
    assert torch.equal(resumed, a) and again.steps == 6 and again.passes == run(3, 6)[1].passes


@pytest.mark.parametrize("kwargs,message", [
    ({"n_directions": 1}, "n_directions must be an integer >= 2"),
    ({"eps": 0.0}, "eps must be positive"),
    ({"lr": -1.0}, "lr must be >= 0"),
])
def test_bad_fzoo_settings_raise(kwargs, message):
    with pytest.raises(LmftError, match=message):
        FZOO([torch.zeros(3)], **{"lr": 1e-3} | kwargs)


def test_bad_svrg_settings_raise():
    with pytest.raises(LmftError, match="anchor_every must be an integer >= 1"):
        MeZOSVRG([torch.zeros(3)], lambda: 0.0, full_passes=1, lr=1e-3, anchor_lr=1e-3, anchor_every=0)
    with pytest.raises(LmftError, match="parameters to tune is empty"):
        FZOO([], lr=1e-3)
