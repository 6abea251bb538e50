"""MeZO: fine-tuning with forward passes only (Malladi et al., NeurIPS 2023).

One step is SPSA with a random Gaussian direction, the paper's Algorithm 1::

    draw a seed s;  z ~ N(0, I) over the tuned tensors, drawn again from s whenever it is needed
    L+ = L(theta + eps z);   L- = L(theta - eps z);   g = (L+ - L-) / (2 eps)
    theta <- theta - lr (g z + wd theta)

``z`` is never stored. The tuned tensors are cut into chunks of at most ``_CHUNK`` (2**20)
elements, in order, and chunk ``k`` draws its part of ``z`` with ``normal_`` from a generator
seeded with ``hash(s) + k`` (one generator per device, reseeded per chunk): a counter-based
scheme at the chunk level, so each pass over the parameters is one draw of ``z`` with one chunk
of it (and a few chunk-sized buffers) in memory, and the same seed gives the same ``z`` on a
device. The memory is that of inference plus those buffers and the few kept elements below.
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
``d = fl(scale z)`` (``scale = +eps``, then ``-eps``), evaluates the loss and moves back by ``-d``.
Moving out computes ``fl(p + d)`` into a buffer and, from it, ``fl(fl(p + d) - d)``: the elements
whose bits the move back would not reproduce are kept (indices and values, or a plain copy of
the chunk when that is smaller) and written back after the move back. The parameters are
therefore restored bit for bit, for any values, eps and dtype. The kept elements are few where
eps is small next to the weights (about 3-7% of the elements of a float32 tensor with std 0.02
at eps 1e-3: 0.6 byte per parameter at most while one forward pass runs) and many where it is
not (prefix tuning's eps 1e-1), where the cap is one copy of each chunk.

Three draws of ``z`` per step (one perturbation), the fewest without storing ``z``: pass 1
moves out to ``theta + eps z``; after L+, pass 2 moves each chunk back to ``theta`` and on to
``theta - eps z``; after L-, pass 3 moves each chunk back to ``theta`` and applies the update to
it, from the restored value, as a separate update pass would. The reference draws ``z`` four
times (three moves and the update); with ``n`` perturbations this takes ``4 n - 1`` draws, the
perturbations measured from the last seed down so that the first seed's update shares the last
restore.

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
from torch import Tensor

from lmft.io import LmftError

# Integer views with the width of each supported float dtype: bitwise comparison (tells -0.0 from 0.0).
_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}
SEED_RANGE = 2**62  # step seeds are drawn below this, so seed + i stays a valid 64-bit seed
_MASK64 = 2**64 - 1
_CHUNK = 1 << 20  # elements of z per draw: 4 MB per float32 buffer, a few buffers in all


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


def _splitmix64(x: int) -> int:
    """A 64-bit integer hash (SplitMix64's finaliser): nearby seeds give unrelated chunk seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _chunks(params: Sequence[Tensor]) -> list[Tensor]:
    """Flat views ``[<= _CHUNK]`` of the tensors, in order: each tensor cut into ``_CHUNK``-element pieces."""
    return [p.view(-1)[start:start + _CHUNK] for p in params for start in range(0, p.numel(), _CHUNK)]


class _Scratch:
    """A generator per device and reusable buffers per (device, dtype), as long as the largest chunk.

    ``draw(c, seed)`` returns ``(z, d, t, same)``, views of ``c``'s length: ``z`` ~ N(0, I) drawn
    from a generator seeded with ``seed``, and free buffers (``d``, ``t`` of ``c``'s dtype, ``same``
    bool). Reusing them spares an allocation (and, for large blocks, the page faults of fresh memory)
    per chunk.
    """

    def __init__(self, chunks: Sequence[Tensor]) -> None:
        sizes: dict[tuple[torch.device, torch.dtype], int] = {}
        for c in chunks:
            key = (c.device, c.dtype)
            sizes[key] = max(sizes.get(key, 0), c.numel())
        self.buffers = {(dev, dt): (torch.empty(n, device=dev, dtype=dt), torch.empty(n, device=dev, dtype=dt),
                                    torch.empty(n, device=dev, dtype=dt), torch.empty(n, device=dev, dtype=torch.bool))
                        for (dev, dt), n in sizes.items()}
        self.generators = {dev: torch.Generator(device=dev) for dev, _ in sizes}

    def draw(self, c: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = c.numel()
        z, d, t, same = (b[:n] for b in self.buffers[(c.device, c.dtype)])
        return z.normal_(generator=self.generators[c.device].manual_seed(seed)), d, t, same


@dataclass
class _Kept:
    """What moving a chunk back cannot recompute: ``values`` at ``index`` (int32), or a copy (index None)."""

    index: Tensor | None
    values: Tensor

    def __len__(self) -> int:
        return self.values.numel()


def _move_out_(c: Tensor, d: Tensor, t: Tensor, same: Tensor) -> _Kept:
    """``c += d`` in place; returns the elements that ``c -= d`` will not restore exactly.

    ``d = fl(scale z)`` is rounded once and then added and subtracted as is: two correctly rounded
    additions, the same on every code path, where a fused ``add_(z, alpha=scale)`` may round
    differently on the move back (and then even zeros would not come back). ``d``, ``t`` and
    ``same`` are scratch of ``c``'s length; ``d`` is overwritten.
    """
    bits = _BITS[c.dtype]
    torch.add(c, d, out=t)  # where c moves to
    torch.sub(t, d, out=d)  # where moving back will land
    index = torch.ne(d.view(bits), c.view(bits), out=same).nonzero().squeeze(1).to(torch.int32)
    if index.numel() * (index.element_size() + c.element_size()) >= c.numel() * c.element_size():
        kept = _Kept(None, c.clone())
    else:
        kept = _Kept(index, c[index])
    c.copy_(t)
    return kept


def _move_back_(c: Tensor, d: Tensor, kept: _Kept) -> None:
    """Undo :func:`_move_out_` (same ``d``): ``c -= d``, then the kept elements written back."""
    if kept.index is None:
        c.copy_(kept.values)
        return
    c.sub_(d)
    if kept.index.numel():
        c[kept.index] = kept.values


class _Direction:
    """The direction ``z`` of one seed over the chunks of the tuned tensors, and where each chunk stands.

    Chunk ``k`` draws its part of ``z`` from a generator seeded with ``hash(seed) + k``: any chunk
    can be drawn on its own, so one pass over the chunks is one draw of ``z``, with one chunk of it
    in memory at a time. ``scale[k]`` is the chunk's current excursion (``theta + scale z``; 0.0 at
    ``theta``) and ``kept[k]`` what moving it back needs.
    """

    def __init__(self, chunks: Sequence[Tensor], seed: int) -> None:
        self.chunks, self.base = chunks, _splitmix64(seed)
        self.scale = [0.0] * len(chunks)
        self.kept: list[_Kept | None] = [None] * len(chunks)

    def walk(self, scratch: _Scratch, out: float = 0.0, decay: float = 1.0, alpha: float = 0.0) -> None:
        """One pass, one draw of z: each chunk moves back to ``theta`` bit for bit, then either out to
        ``theta + out z`` (``out != 0``) or ``theta <- decay theta + alpha z`` (the update)."""
        update = alpha != 0.0 or decay != 1.0
        for k, c in enumerate(self.chunks):
            if not (self.scale[k] or out or update):
                continue  # already at theta, nothing to apply: no draw
            z, d, t, same = scratch.draw(c, (self.base + k) & _MASK64)
            if self.scale[k]:
                _move_back_(c, torch.mul(z, self.scale[k], out=d), self.kept[k])
                self.scale[k], self.kept[k] = 0.0, None
            if out:
                self.kept[k] = _move_out_(c, torch.mul(z, out, out=d), t, same)
                self.scale[k] = out
            elif update:
                if decay != 1.0:
                    c.mul_(decay)
                if alpha != 0.0:  # adding 0 would turn a -0.0 into +0.0
                    c.add_(z, alpha=alpha)

    def n_kept(self) -> int:
        return sum(len(k) for k in self.kept if k is not None)


@torch.no_grad()
def perturb_(params: Sequence[Tensor], seed: int, scale: float) -> None:
    """``p += fl(scale z)`` in place for every tensor, z ~ N(0, I) drawn from ``seed`` (see module doc).

    Plain float arithmetic, as the reference code: a later call with ``-scale`` returns to the
    starting values only up to rounding. :func:`spsa_grad` and :func:`mezo_step` restore bit for bit.
    """
    params = _checked(params)
    _check_seed(seed)
    chunks = _chunks(params)
    scratch, base = _Scratch(chunks), _splitmix64(seed)
    for k, c in enumerate(chunks):
        z, d, _, _ = scratch.draw(c, (base + k) & _MASK64)
        c.add_(torch.mul(z, scale, out=d))


def _loss_value(loss_fn: Callable[[], Tensor | float], where: str) -> float:
    loss = loss_fn()
    if isinstance(loss, Tensor) and loss.numel() != 1:
        raise LmftError(f"MeZO: the loss function returned a tensor of shape {tuple(loss.shape)}; "
                        "it must return a scalar")
    value = float(loss)
    if not math.isfinite(value):
        raise LmftError(f"MeZO: the loss is {value} at {where}; lower eps or the learning rate")
    return value


def _measure(direction: _Direction, scratch: _Scratch, loss_fn: Callable[[], Tensor | float], eps: float
             ) -> tuple[float, float, int]:
    """``(L+, L-, most elements kept in one excursion)``, in two passes over the chunks.

    Returns with the parameters at ``theta - eps z``: the caller's next pass of ``direction``
    moves them back (and may apply the update in the same pass). On an error they are back at
    ``theta`` bit for bit.
    """
    try:
        direction.walk(scratch, out=eps)
        kept = direction.n_kept()
        plus = _loss_value(loss_fn, "theta + eps z")
        direction.walk(scratch, out=-eps)
        kept = max(kept, direction.n_kept())
        minus = _loss_value(loss_fn, "theta - eps z")
    except BaseException:
        direction.walk(scratch)
        raise
    return plus, minus, kept


@torch.no_grad()
def spsa_grad(params: Sequence[Tensor], loss_fn: Callable[[], Tensor | float], eps: float, seed: int
              ) -> tuple[float, float, float]:
    """SPSA estimate of the directional derivative ``<grad L, z>`` along z drawn from ``seed``.

    Returns ``(g, L+, L-)`` with ``g = (L+ - L-) / (2 eps)``; the parameters end bit-identical.
    """
    params = _checked(params)
    _check_hparams(eps, 0.0, 0.0, 1)
    _check_seed(seed)
    chunks = _chunks(params)
    scratch, direction = _Scratch(chunks), _Direction(chunks, seed)
    plus, minus, _ = _measure(direction, scratch, loss_fn, eps)
    direction.walk(scratch)
    return (plus - minus) / (2 * eps), plus, minus


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
    chunks = _chunks(params)
    scratch = _Scratch(chunks)
    grads, losses, kept = [0.0] * n_perturbations, [0.0] * n_perturbations, 0
    # From the last seed down, so that the first seed's update, which comes first, can share
    # the pass that brings its perturbation back: one draw of z fewer.
    for i in reversed(range(n_perturbations)):
        direction = _Direction(chunks, seed + i)
        plus, minus, kept_i = _measure(direction, scratch, loss_fn, eps)
        grads[i], losses[i], kept = (plus - minus) / (2 * eps), (plus + minus) / 2, max(kept, kept_i)
        if i:
            direction.walk(scratch)
    step = lr / n_perturbations
    decay = 1.0 - step * weight_decay
    direction.walk(scratch, decay=decay, alpha=-step * grads[0])
    for i in range(1, n_perturbations):
        _Direction(chunks, seed + i).walk(scratch, decay=decay, alpha=-step * grads[i])
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
