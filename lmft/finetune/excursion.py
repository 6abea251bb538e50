"""Excursions of the tuned tensors to ``theta +- eps z`` and back, bit for bit, for MeZO (:mod:`lmft.finetune.spsa`).

Exact restore. The reference code moves theta by +eps z, -2 eps z, +eps z and assumes it is back.
In floating point it is not: the three roundings leave about half of the float32 elements off
by an ulp or more, and a run with ``lr=0`` drifts. No in-place scheme can be exact by arithmetic alone:
``p -> fl(p + eps z)`` sends several floats to one wherever the sum lands where floats are
sparser than at ``p`` (``|p|`` well below ``eps |z|``, or a power of two crossed), so ``p`` cannot
be recomputed from the perturbed value. Here each evaluation is an excursion that moves out by
``+d`` (then ``-d``), evaluates the loss and moves back. Moving out computes ``fl(fl(p + d) - d)``
into a buffer: the elements whose bits the move back would not reproduce are kept and written
back after the move back, so the parameters are restored bit for bit, for any values, eps and
dtype. They are found 8 at a time (the 8-byte words of the bool flags that hold one), then in
those words only, and kept as 16-bit offsets in the chunk with, for float32, the difference of
their bit patterns from where the move back lands (int16: 4 bytes an element), else their
values, or a plain copy of the chunk where that is smaller. Few are kept where eps is small
next to the weights: 0.6% of SmolLM2-135M's (4-bit weights dequantised, eps 1e-3), 7.5% of a
randomly initialised BERT's (std 0.02; 0.3 byte per parameter while a forward pass runs); many
where it is not (prefix tuning's eps 1e-1), where the cap is one copy of each chunk.

Float32 chunks on a CPU take the same steps in C (``excursion.c``, built on first use by
:mod:`lmft.finetune.native`): one call per chunk and pass that sweeps the chunk once from memory, where the
torch path makes a dozen passes, and gives the same bits (it keeps the same elements; deltas that
do not fit 16 bits are kept as 32-bit deltas, in place of values or a copy). Without a C compiler,
or with ``LMFT_NATIVE=0``, every chunk takes the torch path.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lmft.finetune import native


# Integer views with the width of each supported float dtype: bitwise comparison (tells -0.0 from 0.0).
BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}
MASK64 = 2**64 - 1
CHUNK = 1 << 16  # elements of z per draw: 256 KB per float32 buffer, in cache while a chunk is worked on;
# at most 2**16, so that kept elements are indexed by 16-bit offsets
_BLOCK = 1 << 18  # int16 elements per block of kept elements (512 KB)
_DRAWN_AS_IS = (torch.float32, torch.float64)  # dtypes that normal_ draws with a full-precision scale


SOURCE = Path(__file__).with_suffix(".c")


@functools.cache
def _library() -> ctypes.CDLL | None:
    return declare(native.load(SOURCE))


def declare(lib: ctypes.CDLL | None) -> ctypes.CDLL | None:
    """``lib`` (built from :data:`SOURCE`) with its functions' signatures declared."""
    if lib is not None:
        ptr, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
        lib.lmft_pack.argtypes, lib.lmft_pack.restype = (ptr, ptr, i64, i32, ptr), None
        lib.lmft_walk.argtypes = (ptr, i64, ptr, f32, ptr, i32, ptr, i64, i32, i32, ptr, ptr, ptr, i32, f32, i32, f32,
                                  ptr, i64)
        lib.lmft_walk.restype = i64
    return lib


def kernels() -> ctypes.CDLL | None:
    """The C kernels of ``excursion.c``, or None (no compiler, or ``LMFT_NATIVE=0``): the torch path."""
    return _library() if native.enabled() else None


def splitmix64(x: int) -> int:
    """A 64-bit integer hash (SplitMix64's finaliser): nearby seeds give unrelated chunk seeds."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def chunks_of(params: Sequence[Tensor]) -> list[Tensor]:
    """Flat views ``[<= CHUNK]`` of the tensors, in order: each tensor cut into ``CHUNK``-element pieces."""
    return [p.view(-1)[start:start + CHUNK] for p in params for start in range(0, p.numel(), CHUNK)]


class Scratch:
    """A generator per device and reusable buffers per (device, dtype), as long as the largest chunk.

    ``draw(c, seed, scale)`` returns ``d = fl(scale z)`` (``scale > 0``) in a buffer of ``c``'s
    length and dtype, ``z`` ~ N(0, I) from a generator seeded with ``seed``: ``normal_(0, scale)``
    scales inside the sampler, so no pass of its own multiplies. With ``rademacher`` it returns
    ``fl(scale u)`` for a Rademacher direction ``u`` (+-1, each with probability 1/2) made of the
    bits of ``ceil(n / 32)`` random 32-bit words from the same generator: element ``32 w + j`` is
    negative where bit ``j`` of word ``w`` is set. A float32 chunk's ``d`` is written as bit
    patterns, each bit shifted into the sign bit of ``|fl(scale)|``'s pattern (three integer passes;
    5.4x cheaper than the Gaussian draw on a CPU: 29 against 154 us a 64K chunk); other dtypes make ``+-1``
    so in float32 and multiply. Half-precision chunks draw in float32 (their ``normal_`` would round
    ``scale`` itself to half precision) and round once.
    ``free(c)`` returns three more buffers of ``c``'s length: ``t`` (``c``'s dtype), ``diff`` (integers of
    its width, for bit patterns compared by xor) and bool ``flags``, padded with False to a multiple of 8.
    Views are made once per length: most chunks have the same one.
    """

    def __init__(self, chunks: Sequence[Tensor]) -> None:
        sizes: dict[tuple[torch.device, torch.dtype], int] = {}
        for c in chunks:
            key = (c.device, c.dtype)
            sizes[key] = max(sizes.get(key, 0), -(-c.numel() // 32) * 32)  # whole words of signs
        self.buffers = {(dev, dt): (torch.empty(n, device=dev, dtype=dt), torch.empty(n, device=dev, dtype=dt),
                                    torch.empty(n, device=dev, dtype=BITS[dt]), torch.zeros(n, device=dev, dtype=torch.bool),
                                    None if dt == torch.float32 else torch.empty(n, device=dev, dtype=torch.float32))
                        for (dev, dt), n in sizes.items()}
        self.generators = {dev: torch.Generator(device=dev) for dev, _ in sizes}
        longest = max(sizes.values(), default=0)
        self.words = {dev: torch.empty(longest // 32, 1, device=dev, dtype=torch.int32) for dev, _ in sizes}
        self.shifts = {dev: 31 - torch.arange(32, device=dev, dtype=torch.int32) for dev, _ in sizes}
        self._views: dict[tuple[torch.device, torch.dtype, int], tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]] = {}
        self._ptrs: dict[tuple[torch.device, torch.dtype, int], tuple[int, int, int, int]] = {}

    def _of(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """Views ``(d, t, diff, flags padded to a multiple of 8, int32 [ceil(n / 32), 32] over d or wide,
        float32 draw or None)``."""
        key = (c.device, c.dtype, c.numel())
        views = self._views.get(key)
        if views is None:
            n = c.numel()
            d, t, diff, flags, wide = self.buffers[key[:2]]
            signs = (d if wide is None else wide)[:-(-n // 32) * 32].view(torch.int32).view(-1, 32)
            views = self._views[key] = (d[:n], t[:n], diff[:n], flags[:-(-n // 8) * 8], signs,
                                        None if wide is None else wide[:n])
        return views

    def draw(self, c: Tensor, seed: int, scale: float, rademacher: bool = False, words_only: bool = False) -> Tensor:
        """``words_only`` (Rademacher): return the random words, int32 ``[ceil(n / 32)]``, and leave
        turning them into ``d`` to the caller (the C kernels do it in the pass that uses ``d``)."""
        d, _, _, _, signs, wide = self._of(c)
        generator = self.generators[c.device].manual_seed(seed)
        if rademacher:
            words = self.words[c.device][:signs.shape[0]]
            words.random_(-2**31, 2**31, generator=generator)  # all 32 bits (random_() leaves the sign bit 0)
            if words_only:
                return words
            torch.bitwise_left_shift(words, self.shifts[c.device], out=signs)  # bit j of word w -> sign of 32 w + j
            magnitude = struct.unpack("<i", struct.pack("<f", scale if wide is None else 1.0))[0]  # its bit pattern
            signs.bitwise_and_(-2**31).bitwise_or_(magnitude)
            if wide is not None:
                d.copy_(wide).mul_(scale)  # +-1 times scale: +-fl(scale) in d's dtype
        elif c.dtype in _DRAWN_AS_IS:
            d.normal_(0.0, scale, generator=generator)
        else:
            d.copy_(wide.normal_(0.0, scale, generator=generator))
        return d

    def free(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(t, diff, flags)``: ``flags`` extends ``c``'s length with False to a multiple of 8 elements."""
        _, t, diff, flags, _, _ = self._of(c)
        if flags.numel() > c.numel():
            flags[c.numel():].zero_()  # a longer chunk may have left flags there
        return t, diff, flags

    def native(self, c: Tensor) -> tuple[int, int, int, int]:
        """Addresses ``(words, d, diff, off)`` for the C kernels: the random words (int32 ``[ceil(n / 32)]``),
        ``d``, int32 ``[n]`` and int16 ``[2 n]`` (over ``t``)."""
        key = (c.device, c.dtype, c.numel())
        ptrs = self._ptrs.get(key)
        if ptrs is None:
            d, t, diff, _, _, _ = self._of(c)
            ptrs = self._ptrs[key] = (self.words[c.device].data_ptr(), d.data_ptr(), diff.data_ptr(), t.data_ptr())
        return ptrs


def _flagged(flags: Tensor) -> Tensor | None:
    """Positions of the True elements of ``flags`` (bool ``[8 m]``), int64 ``[k]`` in order, or None.

    ``nonzero`` over a bool tensor costs a few ns an element even where almost all are False
    (it tests them one by one). So first the 8-byte words that hold a flag are found, 8 flags at
    a time; where few words do (the common case: pre-trained weights keep well under 1% of the
    elements), only the flags of those words are looked at.
    """
    words = flags.view(torch.int64)
    hit = int(words.count_nonzero())  # a vectorised count over the words: cheap next to nonzero
    if not hit:
        return None
    if 4 * hit > words.numel():  # dense: one pass over the flags costs less than two
        return flags.nonzero().view(-1)
    words = words.nonzero().view(-1)
    hits = flags.view(-1, 8).index_select(0, words).view(-1).nonzero().view(-1)  # 8 i + j: flag j of word i
    return words.index_select(0, hits >> 3).mul_(8).add_(hits & 7)


class _Store:
    """Append-only int16 blocks (``_BLOCK`` elements, or one request's if larger) that hold what a
    pass keeps: thousands of chunks' kept elements in a few tensors, with no allocation and no
    tensor object per chunk (those would weigh more than the elements where few are kept). A
    block is freed when the last chunk kept in it has moved back."""

    def __init__(self) -> None:
        self.current: dict[torch.device, tuple[Tensor, int]] = {}  # device -> (block, elements used)

    def take(self, device: torch.device, size: int) -> tuple[Tensor, int]:
        """``(block, start)``: ``size`` free elements from ``start``, a multiple of 4 (any float view aligns)."""
        block, used = self.current.get(device, (None, 0))
        if block is None or used + size > block.numel():
            block, used = torch.empty(max(_BLOCK, size), dtype=torch.int16, device=device), 0
        self.current[device] = (block, used + -(-size // 4) * 4)
        return block, used

    def tail(self, device: torch.device) -> tuple[int | None, int]:
        """``(address, room)``: where the current block's free elements start (None: no block yet) and how many
        there are; a kernel may write there what the next :meth:`take` of at most ``room`` returns."""
        block, used = self.current.get(device, (None, 0))
        return (None, 0) if block is None else (block.data_ptr() + 2 * used, block.numel() - used)


@dataclass(slots=True)
class _Kept:
    """What moving a chunk back cannot recompute, in the smallest of three forms, from ``start`` of
    a :class:`_Store` block: ``"delta"``: ``n`` offsets in the chunk (int16 read modulo 2**16),
    then the elements' bit patterns minus those that moving back lands on (int16; float32
    chunks where all fit: 4 bytes an element); ``"values"``: the offsets, then (from the next
    multiple of 4) the elements themselves; ``"copy"``: the whole chunk (``n`` its length).
    The C kernels write ``"delta"`` or ``"delta32"``: the offsets, then (from the next multiple of
    4) int32 deltas, and restore them themselves. ``elements``: how many elements could not be
    recomputed, whatever the form (``n`` but for a copy)."""

    block: Tensor
    start: int
    n: int
    form: str
    elements: int

    def offsets(self) -> Tensor:
        return self.block[self.start:self.start + self.n].long().bitwise_and_(0xFFFF)

    def payload(self, dtype: torch.dtype) -> Tensor:
        """The deltas (int16), values or copy (``dtype``) that follow the offsets."""
        if self.form == "delta":
            return self.block[self.start + self.n:self.start + 2 * self.n]
        start = self.start if self.form == "copy" else self.start + -(-self.n // 4) * 4
        return self.block[start:start + self.n * torch.finfo(dtype).bits // 16].view(dtype)


def _keep(c: Tensor, landed: Tensor, index: Tensor, store: _Store) -> _Kept:
    """The :class:`_Kept` of ``c``'s elements at ``index`` (int64), where moving back lands on ``landed``."""
    n, k, width = c.numel(), index.numel(), c.element_size() // 2  # width: int16 elements per element
    if c.dtype == torch.float32 and 2 * k < n * width:  # int64 difference of int32 patterns: no overflow
        delta = c.view(torch.int32).index_select(0, index).long().sub_(landed.view(torch.int32).index_select(0, index))
        low, high = delta.aminmax()
        if -(2**15) <= int(low) and int(high) < 2**15:
            block, start = store.take(c.device, 2 * k)
            block[start:start + k].copy_(index)  # offsets past 2**15 wrap: read modulo 2**16
            block[start + k:start + 2 * k].copy_(delta)
            return _Kept(block, start, k, "delta", k)
    if k * (1 + width) < n * width:
        padded = -(-k // 4) * 4
        block, start = store.take(c.device, padded + k * width)
        block[start:start + k].copy_(index)
        torch.index_select(c, 0, index, out=block[start + padded:start + padded + k * width].view(c.dtype))
        return _Kept(block, start, k, "values", k)
    block, start = store.take(c.device, n * width)
    block[start:start + n * width].view(c.dtype).copy_(c)
    return _Kept(block, start, n, "copy", k)


def _move_out_(c: Tensor, d: Tensor, sign: int, scratch: Scratch, store: _Store) -> _Kept | None:
    """``c += sign d`` in place (``sign`` +1 or -1); returns what moving back needs to restore ``c``
    bit for bit (None if moving back alone does), kept in ``store``.

    ``d`` is the rounded ``fl(eps z)`` and is added and subtracted as is: correctly rounded
    additions, the same on every code path, where a fused multiply-add may round differently on
    the move back (and then even zeros would not come back).
    """
    bits = BITS[c.dtype]
    t, diff, flags = scratch.free(c)
    if sign > 0:
        torch.add(c, d, out=t).sub_(d)  # where moving out, then back, lands
    else:
        torch.sub(c, d, out=t).add_(d)
    torch.bitwise_xor(t.view(bits), c.view(bits), out=diff)  # 0 where the bits come back (-0.0 is not 0.0)
    flags[:c.numel()].copy_(diff)  # a cast: 4x cheaper than torch.ne on a CPU
    index = _flagged(flags)
    kept = None if index is None else _keep(c, t, index, store)
    if sign > 0:
        c.add_(d)
    else:
        c.sub_(d)
    return kept


def _move_back_(c: Tensor, d: Tensor, sign: int, kept: _Kept | None) -> None:
    """Undo :func:`_move_out_` (same ``d`` and ``sign``): ``c -= sign d``, then the kept elements written back."""
    if kept is not None and kept.form == "copy":
        c.copy_(kept.payload(c.dtype))
        return
    if sign > 0:
        c.sub_(d)
    else:
        c.add_(d)
    if kept is None:
        return
    if kept.form == "delta":
        c.view(torch.int32).index_add_(0, kept.offsets(), kept.payload(c.dtype).to(torch.int32))
    else:
        c.index_copy_(0, kept.offsets(), kept.payload(c.dtype))


def _walk_native(lib: ctypes.CDLL, c: Tensor, scratch: Scratch, seed: int, eps: float, rademacher: bool,
                 back: int, kept: _Kept | None, out: int, decay: float, step: float, store: _Store,
                 flags: ctypes.c_int) -> _Kept | None:
    """One float32 CPU chunk's part of :meth:`Direction.walk` in one C call, ``d`` drawn from ``seed``:
    back from ``theta + back d`` (0: at theta), then out to ``theta + out d`` (returns what moving
    back needs, stored in ``store``) or else the update ``theta <- decay theta + step d``. The torch
    path's steps, bit for bit."""
    words, d, diff, off = scratch.native(c)
    scratch.draw(c, seed, eps, rademacher, words_only=True)
    dst, room = store.tail(c.device)
    k = lib.lmft_walk(c.data_ptr(), c.numel(), words if rademacher else None, eps, d, back,
                      None if kept is None else kept.block.data_ptr() + 2 * kept.start,
                      0 if kept is None else kept.n, kept is not None and kept.form == "delta32",
                      out, diff, off, ctypes.addressof(flags), decay != 1.0, decay, step != 0.0, step, dst, room)
    if not k:
        return None
    wide = flags.value & 1
    block, used = store.take(c.device, -(-k // 4) * 4 + 2 * k if wide else 2 * k)  # where the kernel stored them
    if flags.value & 2:  # it had no room: a new block
        lib.lmft_pack(off, diff, k, wide, block.data_ptr() + 2 * used)
    return _Kept(block, used, k, "delta32" if wide else "delta", k)


class Direction:
    """The direction ``z`` of one seed over the chunks of the tuned tensors, and where each chunk stands.

    Chunk ``k`` draws its part of ``d = fl(eps z)`` from a generator seeded with ``hash(seed) + k``:
    any chunk can be drawn on its own, so one pass over the chunks is one draw of ``z``, with one
    chunk of it in memory at a time (``rademacher``: a Rademacher ``u`` in place of ``z``, everywhere).
    ``side[k]`` is the chunk's current excursion (``theta + side eps z``, ``side`` in -1, 0, 1) and
    ``kept[k]`` what moving it back needs. Whether float32 CPU chunks take the C kernels is decided
    once, here: the two paths keep different forms, so a chunk moves back by the path that moved it out.
    """

    def __init__(self, chunks: Sequence[Tensor], seed: int, eps: float, rademacher: bool = False) -> None:
        self.chunks, self.base, self.eps, self.rademacher = chunks, splitmix64(seed), eps, rademacher
        self.lib = kernels()
        self.side = [0] * len(chunks)
        self.kept: list[_Kept | None] = [None] * len(chunks)

    def walk(self, scratch: Scratch, out: int = 0, decay: float = 1.0, alpha: float = 0.0) -> None:
        """One pass, one draw of z: each chunk moves back to ``theta`` bit for bit, then either out to
        ``theta + out eps z`` (``out`` +1 or -1) or ``theta <- decay theta + alpha z`` (the update)."""
        update = alpha != 0.0 or decay != 1.0
        store, lib, flags = _Store(), self.lib, ctypes.c_int(0)
        for k, c in enumerate(self.chunks):
            side = self.side[k]
            if not (side or out or update):
                continue  # already at theta, nothing to apply: no draw
            seed = (self.base + k) & MASK64
            if lib is not None and c.dtype == torch.float32 and c.device.type == "cpu":
                self.kept[k] = _walk_native(lib, c, scratch, seed, self.eps, self.rademacher, side, self.kept[k], out,
                                            decay, alpha / self.eps, store, flags)
                self.side[k] = out
                continue
            d = scratch.draw(c, seed, self.eps, self.rademacher)
            if side:
                _move_back_(c, d, side, self.kept[k])
                self.side[k], self.kept[k] = 0, None
            if out:
                self.kept[k], self.side[k] = _move_out_(c, d, out, scratch, store), out
            elif update:
                if decay != 1.0:
                    c.mul_(decay)
                if alpha != 0.0:  # adding 0 would turn a -0.0 into +0.0
                    c.add_(d, alpha=alpha / self.eps)  # alpha z = (alpha / eps) d, up to d's rounding

    def n_kept(self) -> int:
        return sum(k.elements for k in self.kept if k is not None)
