"""MeZO: fine-tuning with forward passes only (Malladi et al., NeurIPS 2023).

One step is SPSA with a random Gaussian direction, the paper's Algorithm 1::

    draw a seed s;  z ~ N(0, I) over the tuned tensors, drawn again from s whenever it is needed
    L+ = L(theta + eps z);   L- = L(theta - eps z);   g = (L+ - L-) / (2 eps)
    theta <- theta - lr (g z + wd theta)

``z`` is never stored: each tensor's part is drawn with ``torch.randn(p.shape, generator=g, ...)``
from a generator seeded with ``s`` (one per device), tensor by tensor in the given order, so the
memory is that of inference plus ``z`` of the largest tensor and the few kept elements below.
With ``n`` perturbations
every ``g_i`` is measured at the same ``theta`` (perturbation ``i`` uses seed ``s + i``), then
each update ``theta <- theta - (lr / n) (g_i z_i + wd theta)`` is applied in turn, as the
reference code repeats its ``zo_update`` with the learning rate split ``n`` ways.

Exact restore. The reference code moves theta by +eps z, -2 eps z, +eps z and assumes it is back.
In floating point it is not: the three roundings leave about half of the float32 elements off
by an ulp or more, and a run with ``lr=0`` drifts. No in-place scheme can be exact by arithmetic alone:
``p -> fl(p + eps z)`` sends several floats to one wherever the sum lands where floats are
sparser than at ``p`` (``|p|`` well below ``eps |z|``, or a power of two crossed), so ``p`` cannot
be recomputed from the perturbed value. Here each evaluation is an excursion that moves out by
``scale z`` (``scale = +eps``, then ``-eps``), evaluates the loss and moves back by ``-scale z``.
Before moving, one trial add-and-subtract into a temporary finds the elements whose bits the
move back would not reproduce; their values are kept (flat indices and values, or a plain copy
of the tensor when that is smaller) and written back after the move back. The parameters are
therefore restored bit for bit, for any values, eps and dtype. The kept elements are few where
eps is small next to the weights (about 7% of the elements of a float32 tensor with std 0.02 at
eps 1e-3: 0.6 byte per parameter while one forward pass runs) and many where it is not (prefix
tuning's eps 1e-1), where the cap is one copy of each tensor. This costs one more draw of ``z``
per perturbation than the reference (five instead of four) and the trial arithmetic.

The loss function must be deterministic (eval mode: no dropout), as the two evaluations must
differ only by the perturbation. Weight decay applies to every tensor given (the reference
code skips biases and LayerNorm weights; pass ``weight_decay=0`` to sidestep the difference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmft.heads import Classifier
from lmft.io import LmftError

# Integer views with the width of each supported float dtype: bitwise comparison (tells -0.0 from 0.0).
_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}
SEED_RANGE = 2**62  # step seeds are drawn below this, so seed + i stays a valid 64-bit seed
_TRIAL_SLICE = 1 << 20  # elements per slice of the exact-restore trial: a few MB of temporaries


LOSSES = ("label-words", "lm")


def check_loss(model: nn.Module, loss: str) -> None:
    """Raise :class:`LmftError` unless :func:`classifier_loss` can compute ``loss`` for ``model``."""
    if loss not in LOSSES:
        raise LmftError(f"unknown loss {loss!r}; one of {', '.join(LOSSES)}")
    if loss == "lm":
        if not isinstance(model, Classifier):
            raise LmftError(f"the lm loss needs a lmft.heads.Classifier, got {type(model).__name__}")
        model.vocab_head()


def classifier_loss(model: nn.Module, batch: Mapping[str, Tensor], loss: str = "label-words") -> Tensor:
    """Mean training cross-entropy of a Classifier on a batch (``[B, L]`` inputs, ``mask_pos`` and ``labels`` ``[B]``).

    ``label-words``: over the class logits ``[B, C]`` (the label words' scores, MeZO's recipe).
    ``lm``: over the whole vocabulary at ``mask_pos`` (:meth:`Classifier.vocab_logits`
    ``[B, vocab]``), the target being the true class's label-word id: the causal LM loss with
    labels -100 everywhere but the label word (or the MLM loss at the mask). Computed in float32
    at least (half-precision logits are upcast), float64 for a float64 model.
    """
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "token_type_ids": batch.get("token_type_ids"), "mask_pos": batch.get("mask_pos")}
    check_loss(model, loss)
    if loss == "lm":
        logits, labels = model.vocab_logits(**inputs), model.label_ids[batch["labels"]]
    else:
        logits, labels = model(**inputs), batch["labels"]
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)


def _checked(params: Iterable[Tensor]) -> list[Tensor]:
    params = list(params)
    if not params:
        raise LmftError("MeZO: the list of parameters to tune is empty; select at least one tensor")
    seen: set[int] = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise LmftError(f"MeZO: parameter {i} is a {type(p).__name__}, not a tensor")
        if p.dtype not in _BITS:
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


def _for_each_direction(params: Sequence[Tensor], seed: int, fn: Callable[[int, Tensor, Tensor], None]) -> None:
    """Call ``fn(i, p, z)`` for each tensor with its part of z ~ N(0, I) drawn from ``seed``.

    One generator per device, seeded with ``seed``; ``z`` is dropped as soon as ``fn`` returns, so
    only one tensor's worth of it exists at a time.
    """
    generators: dict[torch.device, torch.Generator] = {}
    for i, p in enumerate(params):
        if p.device not in generators:
            generators[p.device] = torch.Generator(device=p.device).manual_seed(seed)
        fn(i, p, torch.randn(p.shape, generator=generators[p.device], device=p.device, dtype=p.dtype))


@torch.no_grad()
def perturb_(params: Sequence[Tensor], seed: int, scale: float) -> None:
    """``p += scale * z`` in place for every tensor, z ~ N(0, I) drawn from ``seed`` (see module doc).

    Plain float arithmetic, as the reference code: a later call with ``-scale`` returns to the
    starting values only up to rounding. :func:`spsa_grad` restores bit for bit.
    """
    params = _checked(params)
    _check_seed(seed)
    _for_each_direction(params, seed, lambda i, p, z: p.add_(z.mul_(scale)))


@dataclass
class _Kept:
    """What moving a tensor back cannot recompute: ``values`` at flat ``index``, or a copy (index None)."""

    index: Tensor | None
    values: Tensor


def _move_out_(p: Tensor, z: Tensor, scale: float) -> _Kept:
    """``p += scale z`` in place; returns the elements that ``p -= scale z`` will not restore exactly.

    ``d = fl(scale z)`` is rounded once and then added and subtracted as is: two correctly rounded
    additions, the same on every code path, where a fused ``add_(z, alpha=scale)`` may round
    differently on the move back (and then even zeros would not come back). The trial runs over
    slices so that its temporaries stay small next to ``z``.
    """
    bits = _BITS[p.dtype]
    d = z.mul_(scale)
    flat_p, flat_d = p.view(-1), d.view(-1)
    index_dtype = torch.int32 if p.numel() < 2**31 else torch.int64
    parts = []
    for start in range(0, flat_p.numel(), _TRIAL_SLICE):
        p_s, d_s = flat_p[start:start + _TRIAL_SLICE], flat_d[start:start + _TRIAL_SLICE]
        trial = (p_s + d_s).sub_(d_s)
        parts.append((trial.view(bits) != p_s.view(bits)).nonzero().squeeze(1).add_(start).to(index_dtype))
    index = torch.cat(parts)
    if index.numel() * (index.element_size() + p.element_size()) >= p.numel() * p.element_size():
        kept = _Kept(None, p.clone())
    else:
        kept = _Kept(index, flat_p[index])
    p.add_(d)
    return kept


def _move_back_(p: Tensor, z: Tensor, scale: float, kept: _Kept) -> None:
    if kept.index is None:
        p.copy_(kept.values)
    else:
        p.sub_(z.mul_(scale))
        p.view(-1)[kept.index] = kept.values


def _loss_value(loss_fn: Callable[[], Tensor | float], where: str) -> float:
    loss = loss_fn()
    if isinstance(loss, Tensor) and loss.numel() != 1:
        raise LmftError(f"MeZO: the loss function returned a tensor of shape {tuple(loss.shape)}; "
                        "it must return a scalar")
    value = float(loss)
    if not math.isfinite(value):
        raise LmftError(f"MeZO: the loss is {value} at {where}; lower eps or the learning rate")
    return value


def _excursion(params: Sequence[Tensor], seed: int, scale: float, loss_fn: Callable[[], Tensor | float]
               ) -> tuple[float, int]:
    """The loss at ``theta + scale z``; ``theta`` is back bit for bit afterwards, even on an error.

    Returns (loss, number of elements restored from kept values).
    """
    kept: list[_Kept | None] = [None] * len(params)

    def out(i: int, p: Tensor, z: Tensor) -> None:
        kept[i] = _move_out_(p, z, scale)

    def back(i: int, p: Tensor, z: Tensor) -> None:
        if kept[i] is not None:  # None only when moving out failed part way
            _move_back_(p, z, scale, kept[i])
            kept[i] = None  # free it now: the kept values of all tensors never outlive this pass

    n_kept = 0
    try:
        _for_each_direction(params, seed, out)
        n_kept = sum(p.numel() if k.index is None else k.index.numel() for p, k in zip(params, kept))
        loss = _loss_value(loss_fn, f"theta {'+' if scale > 0 else '-'} eps z")
    finally:
        _for_each_direction(params, seed, back)
    return loss, n_kept


@torch.no_grad()
def spsa_grad(params: Sequence[Tensor], loss_fn: Callable[[], Tensor | float], eps: float, seed: int
              ) -> tuple[float, float, float]:
    """SPSA estimate of the directional derivative ``<grad L, z>`` along z drawn from ``seed``.

    Returns ``(g, L+, L-)`` with ``g = (L+ - L-) / (2 eps)``; the parameters end bit-identical.
    """
    params = _checked(params)
    _check_hparams(eps, 0.0, 0.0, 1)
    _check_seed(seed)
    g, plus, minus, _ = _spsa(params, loss_fn, eps, seed)
    return g, plus, minus


def _spsa(params: Sequence[Tensor], loss_fn: Callable[[], Tensor | float], eps: float, seed: int
          ) -> tuple[float, float, float, int]:
    """(g, L+, L-, most elements kept in one excursion)."""
    plus, kept_plus = _excursion(params, seed, eps, loss_fn)
    minus, kept_minus = _excursion(params, seed, -eps, loss_fn)
    return (plus - minus) / (2 * eps), plus, minus, max(kept_plus, kept_minus)


def _decay_and_step_(params: Sequence[Tensor], seed: int, decay: float, alpha: float) -> None:
    """``p <- decay p + alpha z`` for every tensor, z drawn from ``seed``.

    Skipped when it changes nothing (lr=0, or L+ == L- without decay): no draw, and every bit
    kept (``-0.0 + 0.0`` would turn a negative zero positive).
    """
    if alpha == 0.0 and decay == 1.0:
        return
    _for_each_direction(params, seed, lambda i, p, z: p.mul_(decay).add_(z, alpha=alpha))


@torch.no_grad()
def mezo_step(params: Sequence[Tensor], loss_fn: Callable[[], Tensor | float], *, eps: float, lr: float,
              weight_decay: float = 0.0, seed: int, n_perturbations: int = 1) -> dict[str, float]:
    """One MeZO step in place on ``params``; perturbation ``i`` uses seed ``seed + i``.

    Returns ``loss`` (mean of (L+ + L-) / 2, the loss at theta to second order),
    ``projected_grad`` (mean g) and ``kept_fraction`` (largest share of elements restored from
    kept values in one excursion: the memory that exactness cost). With ``lr=0`` the parameters
    end bit-identical.
    """
    params = _checked(params)
    _check_hparams(eps, lr, weight_decay, n_perturbations)
    _check_seed(seed, n_perturbations)
    seeds = [seed + i for i in range(n_perturbations)]
    grads, losses, kept = [], [], 0
    for s in seeds:
        g, plus, minus, kept_s = _spsa(params, loss_fn, eps, s)
        grads.append(g)
        losses.append((plus + minus) / 2)
        kept = max(kept, kept_s)
    step = lr / n_perturbations
    decay = 1.0 - step * weight_decay
    for s, g in zip(seeds, grads):
        _decay_and_step_(params, s, decay, -step * g)
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
                 n_perturbations: int = 1, seed: int = 0) -> None:
        self.params = _checked(params)
        _check_hparams(eps, lr, weight_decay, n_perturbations)
        _check_seed(seed)
        self.lr, self.eps, self.weight_decay, self.n_perturbations = lr, eps, weight_decay, n_perturbations
        self.steps = 0
        self._generator = torch.Generator().manual_seed(seed)

    def step(self, loss_fn: Callable[[], Tensor | float]) -> dict[str, float]:
        """One step; returns :func:`mezo_step`'s dict plus the step's ``seed``."""
        seed = int(torch.randint(SEED_RANGE, (), generator=self._generator))
        out = mezo_step(self.params, loss_fn, eps=self.eps, lr=self.lr, weight_decay=self.weight_decay,
                        seed=seed, n_perturbations=self.n_perturbations)
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
