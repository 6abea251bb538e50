"""MeZO: fine-tuning with forward passes only (Malladi et al., NeurIPS 2023).

One step is SPSA with a random Gaussian direction, the paper's Algorithm 1::

    draw a seed s;  z ~ N(0, I) over the tuned tensors, drawn again from s whenever it is needed
    L+ = L(theta + eps z);   L- = L(theta - eps z);   g = (L+ - L-) / (2 eps)
    theta <- theta - lr (g z + wd theta)

``z`` is never stored. The tuned tensors are cut into chunks of at most ``excursion.CHUNK`` (2**16)
elements, in order, and chunk ``k`` draws its part of ``d = fl(eps z)`` with ``normal_(0, eps)``
(the scale applied inside the sampler: no pass of its own) from a generator seeded with
``hash(s) + k`` (one generator per device, reseeded per chunk): a counter-based scheme at the
chunk level, so each pass over the parameters is one draw of ``z`` with one chunk of it (and a
few chunk-sized buffers, 256 KB each in float32, in cache while the chunk is worked on) in
memory, and the same seed gives the same ``z`` on a device. The update adds ``(alpha / eps) d``
for ``alpha z``: the same direction up to ``d``'s rounding (one float32 ulp). The memory is that
of inference plus those buffers and the few kept elements below. With ``n`` perturbations
every ``g_i`` is measured at the same ``theta`` (perturbation ``i`` uses seed ``s + i``), then
each update ``theta <- theta - (lr / n) (g_i z_i + wd theta)`` is applied in turn, as the
reference code repeats its ``zo_update`` with the learning rate split ``n`` ways.

Exact restore: every evaluation is an excursion of :mod:`lmft.finetune.excursion` that returns
the parameters bit for bit.

Three draws of ``z`` per step (one perturbation), the fewest without storing ``z``: pass 1
moves out to ``theta + eps z``; after L+, pass 2 moves each chunk back to ``theta`` and on to
``theta - eps z``; after L-, pass 3 moves each chunk back to ``theta`` and applies the update to
it, from the restored value, as a separate update pass would. The reference draws ``z`` four
times (three moves and the update); with ``n`` perturbations this takes ``4 n - 1`` draws, the
perturbations measured from the last seed down so that the first seed's update shares the last
restore.

Rademacher directions (SPSA's own, Spall 1992; :mod:`lmft.finetune.zo`'s FZOO; MeZO with
``rademacher=True``): ``u`` in +-1 from random bits, drawn per chunk from the same seeded
generators (:class:`lmft.finetune.excursion.Scratch`), 5x cheaper than the Gaussian draw on a
CPU. ``E[u u^T] = I`` as for ``z``, so ``g u`` is an unbiased estimate of the same smoothed
gradient direction to first order; the update's scale is the same (``|u_i| = 1``).

The loss function must be deterministic (eval mode: no dropout), as the two evaluations must
differ only by the perturbation. Weight decay applies to every tensor given (the reference
code skips biases and LayerNorm weights; pass ``weight_decay=0`` to sidestep the difference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lmft.finetune.excursion import BITS, MASK64, Direction, Scratch, chunks_of, splitmix64
from lmft.io import LmftError

# Integer views with the width of each supported float dtype: bitwise comparison (tells -0.0 from 0.0).
SEED_RANGE = 2**62  # step seeds are drawn below this, so seed + i stays a valid 64-bit seed


def _checked(params: Iterable[Tensor]) -> list[Tensor]:
    params = list(params)
    if not params:
        raise LmftError("MeZO: the list of parameters to tune is empty; select at least one tensor")
    seen: set[int] = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise LmftError(f"MeZO: parameter {i} is a {type(p).__name__}, not a tensor")
        if p.dtype not in BITS:
            raise LmftError(f"MeZO: parameter {i} has dtype {p.dtype}; only float16, bfloat16, float32 "
                            "and float64 tensors can be perturbed")
        if not p.is_contiguous():
            raise LmftError(f"MeZO: parameter {i} (shape {tuple(p.shape)}) is not contiguous; "
                            "make it contiguous (p.data = p.data.contiguous()) before tuning it")
        if p.numel() == 0:
            continue
        if p.data_ptr() in seen:
            raise LmftError(f"MeZO: parameter {i} is listed twice or shares storage with an earlier one "
                            "(tied weights); list each tensor once")
        seen.add(p.data_ptr())
    if not seen:
        raise LmftError("MeZO: every parameter to tune is empty (0 elements)")
    return params


def _check_hparams(eps: float, lr: float, weight_decay: float, n_perturbations: int) -> None:
    if not (math.isfinite(eps) and eps > 0):
        raise LmftError(f"MeZO: eps must be a positive number, got {eps}")
    if not (math.isfinite(lr) and lr >= 0):
        raise LmftError(f"MeZO: lr must be >= 0, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise LmftError(f"MeZO: weight_decay must be >= 0, got {weight_decay}")
    if isinstance(n_perturbations, bool) or not isinstance(n_perturbations, int) or n_perturbations < 1:
        raise LmftError(f"MeZO: n_perturbations must be an integer >= 1, got {n_perturbations!r}")


def _check_seed(seed: int, n: int = 1) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**64 - n:
        raise LmftError(f"MeZO: the seed must be an integer in [0, 2**64 - {n}], got {seed!r}")


@torch.no_grad()
def perturb_(params: Sequence[Tensor], seed: int, scale: float, *, rademacher: bool = False) -> None:
    """``p += fl(scale z)`` in place for every tensor, z ~ N(0, I) drawn from ``seed`` (see module doc;
    ``rademacher``: a Rademacher ``u`` in place of ``z``).

    Plain float arithmetic, as the reference code: a later call with ``-scale`` returns to the
    starting values only up to rounding. :func:`spsa_grad`, :func:`mezo_step` and :func:`loss_at`
    restore bit for bit.
    """
    params = _checked(params)
    _check_seed(seed)
    if not math.isfinite(scale):
        raise LmftError(f"MeZO: the perturbation's scale must be finite, got {scale}")
    if scale == 0.0:
        return
    chunks = chunks_of(params)
    scratch, base = Scratch(chunks), splitmix64(seed)
    for k, c in enumerate(chunks):
        d = scratch.draw(c, (base + k) & MASK64, abs(scale), rademacher)
        if scale > 0:
            c.add_(d)
        else:
            c.sub_(d)


def _loss_value(loss_fn: Callable[[], Tensor | float], where: str) -> float:
    loss = loss_fn()
    if isinstance(loss, Tensor) and loss.numel() != 1:
        raise LmftError(f"MeZO: the loss function returned a tensor of shape {tuple(loss.shape)}; "
                        "it must return a scalar")
    value = float(loss)
    if not math.isfinite(value):
        raise LmftError(f"MeZO: the loss is {value} at {where}; lower eps or the learning rate")
    return value


def _measure(direction: Direction, scratch: Scratch, loss_fn: Callable[[], Tensor | float], eps: float
             ) -> tuple[float, float, int]:
    """``(L+, L-, most elements kept in one excursion)``, in two passes over the chunks.

    Returns with the parameters at ``theta - eps z``: the caller's next pass of ``direction``
    moves them back (and may apply the update in the same pass). On an error they are back at
    ``theta`` bit for bit.
    """
    try:
        direction.walk(scratch, out=1)
        kept = direction.n_kept()
        plus = _loss_value(loss_fn, "theta + eps z")
        direction.walk(scratch, out=-1)
        kept = max(kept, direction.n_kept())
        minus = _loss_value(loss_fn, "theta - eps z")
    except BaseException:
        direction.walk(scratch)
        raise
    return plus, minus, kept


@torch.no_grad()
def loss_at(params: Sequence[Tensor], loss_fn: Callable[[], Tensor | float], *, seed: int, scale: float,
            rademacher: bool = False) -> float:
    """The loss at ``theta + scale z`` (z drawn from ``seed``; ``rademacher``: a Rademacher ``u``), in one
    excursion: the parameters end bit-identical, also when ``loss_fn`` raises."""
    params = _checked(params)
    _check_hparams(abs(scale), 0.0, 0.0, 1)
    _check_seed(seed)
    chunks = chunks_of(params)
    scratch, direction = Scratch(chunks), Direction(chunks, seed, abs(scale), rademacher)
    try:
        direction.walk(scratch, out=1 if scale > 0 else -1)
        return _loss_value(loss_fn, "theta + scale z")
    finally:
        direction.walk(scratch)


@torch.no_grad()
def spsa_grad(params: Sequence[Tensor], loss_fn: Callable[[], Tensor | float], eps: float, seed: int
              ) -> tuple[float, float, float]:
    """SPSA estimate of the directional derivative ``<grad L, z>`` along z drawn from ``seed``.

    Returns ``(g, L+, L-)`` with ``g = (L+ - L-) / (2 eps)``; the parameters end bit-identical.
    """
    params = _checked(params)
    _check_hparams(eps, 0.0, 0.0, 1)
    _check_seed(seed)
    chunks = chunks_of(params)
    scratch, direction = Scratch(chunks), Direction(chunks, seed, eps)
    plus, minus, _ = _measure(direction, scratch, loss_fn, eps)
    direction.walk(scratch)
    return (plus - minus) / (2 * eps), plus, minus


@torch.no_grad()
def mezo_step(params: Sequence[Tensor], loss_fn: Callable[[], Tensor | float], *, eps: float, lr: float,
              weight_decay: float = 0.0, seed: int, n_perturbations: int = 1,
              rademacher: bool = False) -> dict[str, float]:
    """One MeZO step in place on ``params``; perturbation ``i`` uses seed ``seed + i`` (``rademacher``:
    Rademacher directions in place of Gaussian ones).

    Returns ``loss`` (mean of (L+ + L-) / 2, the loss at theta to second order),
    ``projected_grad`` (mean g) and ``kept_fraction`` (largest share of elements restored from
    kept values in one excursion: the memory that exactness cost). With ``lr=0`` the parameters
    end bit-identical.
    """
    params = _checked(params)
    _check_hparams(eps, lr, weight_decay, n_perturbations)
    _check_seed(seed, n_perturbations)
    chunks = chunks_of(params)
    scratch = Scratch(chunks)
    grads, losses, kept = [0.0] * n_perturbations, [0.0] * n_perturbations, 0
    # From the last seed down, so that the first seed's update, which comes first, can share
    # the pass that brings its perturbation back: one draw of z fewer.
    for i in reversed(range(n_perturbations)):
        direction = Direction(chunks, seed + i, eps, rademacher)
        plus, minus, kept_i = _measure(direction, scratch, loss_fn, eps)
        grads[i], losses[i], kept = (plus - minus) / (2 * eps), (plus + minus) / 2, max(kept, kept_i)
        if i:
            direction.walk(scratch)
    step = lr / n_perturbations
    decay = 1.0 - step * weight_decay
    direction.walk(scratch, decay=decay, alpha=-step * grads[0])
    for i in range(1, n_perturbations):
        Direction(chunks, seed + i, eps, rademacher).walk(scratch, decay=decay, alpha=-step * grads[i])
    return {"loss": sum(losses) / len(losses), "projected_grad": sum(grads) / len(grads),
            "kept_fraction": kept / sum(p.numel() for p in params)}


class MeZO:
    """MeZO over a fixed list of tensors, with step seeds drawn from the run seed.

    ``step(loss_fn)`` draws the step's seed from a CPU generator seeded with ``seed``, so a run
    is a function of its seed; ``state_dict()`` holds that generator and the step count, and a
    run resumed with ``load_state_dict`` continues with the same sequence of seeds. ``lr`` may be
    changed between steps (schedules).
    """

    def __init__(self, params: Iterable[Tensor], *, lr: float, eps: float = 1e-3, weight_decay: float = 0.0,
                 n_perturbations: int = 1, seed: int = 0, rademacher: bool = False) -> None:
        self.params = _checked(params)
        _check_hparams(eps, lr, weight_decay, n_perturbations)
        _check_seed(seed)
        self.lr, self.eps, self.weight_decay, self.n_perturbations = lr, eps, weight_decay, n_perturbations
        self.rademacher, self.steps = rademacher, 0
        self._generator = torch.Generator().manual_seed(seed)

    def step(self, loss_fn: Callable[[], Tensor | float]) -> dict[str, float]:
        """One step; returns :func:`mezo_step`'s dict plus the step's ``seed``."""
        seed = int(torch.randint(SEED_RANGE, (), generator=self._generator))
        out = mezo_step(self.params, loss_fn, eps=self.eps, lr=self.lr, weight_decay=self.weight_decay,
                        seed=seed, n_perturbations=self.n_perturbations, rademacher=self.rademacher)
        self.steps += 1
        return {**out, "seed": seed}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "rng_state": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"steps", "rng_state"} - set(state)
        if missing:
            raise LmftError(f"MeZO state: missing {sorted(missing)}; it holds {sorted(state)}")
        steps, rng = state["steps"], state["rng_state"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise LmftError(f"MeZO state: 'steps' must be an integer >= 0, got {steps!r}")
        if not (isinstance(rng, Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1):
            raise LmftError("MeZO state: 'rng_state' must be the uint8 tensor that state_dict() wrote")
        try:
            self._generator.set_state(rng)
        except RuntimeError as e:
            raise LmftError(f"MeZO state: 'rng_state' is not a CPU generator state ({e})") from e
        self.steps = steps
