"""Empirical neural tangent kernels of a Classifier (Malladi et al., ICML 2023).

The kernel view of fine-tuning linearises the C class logits ``f(x)`` of a Classifier around the
pre-trained weights. With ``J_a(x) = d f_a(x) / d theta`` over the trainable parameters
(:mod:`lmft.kernels.jacobians`), one kernel entry is, for a training (row) example ``x_i`` and an example
``y_j`` of any split (the formulas of :mod:`lmft.kernels.formulas`)::

    sgd                K[i, a, j, b] = <J_a(x_i), J_b(y_j)>
    signgd             K[i, a, j, b] = <sign J_a(x_i), sign J_b(y_j)>
    asymmetric-signgd  K[0, i, a, j, b] = <sign J_a(x_i), J_b(y_j)>
                       K[1, i, a, j, b] = <J_a(x_i), sign J_b(y_j)>   (the flipped kernel)

so a kernel is ``[N, C, M, C]`` float64 (``[2, N, C, M, C]`` for asymmetric-signgd, stacked as the
paper's released files are). ``binary=True`` replaces the two logits by the one logit
``f_1 - f_0`` (C = 1); the solvers then regress labels +-1.

Computation. A kernel is computed in shards (rows ``[r0, r1)`` x columns ``[c0, c1)``,
:func:`compute_shard`; :func:`compute_shards` makes the shards of several formulas from one pass of
Jacobians) that :func:`lmft.kernels.files.merge_shards` assembles. Three methods: ``tiled``, the
default (:mod:`lmft.kernels.tiled`), and ``vmap`` and ``naive``, the per-pair reference
(:mod:`lmft.kernels.pairs`). On the CPU the result is bit-identical whatever the shard layout and
the batch sizes: the tiled path computes the Jacobians of fixed tiles of the global example grid in
one batched pass each (the per-pair paths each example alone at its own length), and no entry's
rounding depends on which other examples share a product.

Gradients that are zero in exact arithmetic but not in floating point, such as those of the
attention key biases (softmax ignores a shift of all scores), are rounding noise whose signs the
sign formulas count, as the paper's code does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lmft.io import LmftError
from lmft.kernels.files import KernelShard
from lmft.kernels.formulas import get_formula, get_formulas
from lmft.kernels.jacobians import JACOBIAN_METHODS, Batch, check_batch, take
from lmft.kernels.jacobians import logits as pretrained_logits
from lmft.kernels.pairs import per_pair
from lmft.kernels.tiled import tiled

METHODS = ("tiled", *JACOBIAN_METHODS)  # of compute_shards


def _range(rng: tuple[int, int] | None, n: int, what: str) -> tuple[int, int]:
    lo, hi = (0, n) if rng is None else (int(rng[0]), int(rng[1]))
    if not 0 <= lo < hi <= n:
        raise LmftError(f"{what} {lo}:{hi} is empty or outside 0:{n}")
    return lo, hi


def compute_shard(model: nn.Module, rows: Batch, cols: Batch, formula: str, **kwargs) -> KernelShard:
    """The kernel of one formula between ``rows[r0:r1]`` (training examples) and ``cols[c0:c1]`` (any
    split); keyword arguments as :func:`compute_shards_and_logits`."""
    return compute_shards(model, rows, cols, [formula], **kwargs)[formula]


def compute_shards(model: nn.Module, rows: Batch, cols: Batch, formulas: Sequence[str], **kwargs
                   ) -> dict[str, KernelShard]:
    """The kernels of several formulas between ``rows[r0:r1]`` and ``cols[c0:c1]`` from one pass of
    Jacobians: formula -> :class:`KernelShard` (each bit-identical to computing it alone); keyword
    arguments as :func:`compute_shards_and_logits`."""
    return compute_shards_and_logits(model, rows, cols, formulas, **kwargs)[0]


def compute_shards_and_logits(model: nn.Module, rows: Batch, cols: Batch, formulas: Sequence[str], *,
                              row_range: tuple[int, int] | None = None, col_range: tuple[int, int] | None = None,
                              row_batch: int = 8, col_batch: int = 8, binary: bool = False, method: str = "tiled",
                              vmap_chunk: int | None = None, mem_mb: float | None = None
                              ) -> tuple[dict[str, KernelShard], Tensor]:
    """The kernels of several formulas between ``rows[r0:r1]`` and ``cols[c0:c1]`` from one pass of
    Jacobians: formula -> :class:`KernelShard` (each bit-identical to computing it alone), and the
    columns' pre-trained logits f0 ``[c1 - c0, C]`` float64 (the tiled path's from its tiles' forward
    passes, as bit-stable as the kernels; the per-pair paths' from :func:`lmft.kernels.jacobians.logits`).

    ``rows``/``cols`` are whole splits as one batch each (see :func:`lmft.kernels.jacobians.check_batch`); the
    ranges default to everything. ``method`` ``tiled`` (the default) holds the Jacobians of blocks of
    ``row_batch`` rows and ``col_batch`` columns, rounded up to whole tiles of the global grid, and
    contracts them with :func:`lmft.kernels.tiled.tile_blocks`. ``vmap`` and ``naive`` (the per-pair
    reference) take :func:`lmft.kernels.jacobians.jacobians` of blocks of ``row_batch`` rows, reused for
    every block of ``col_batch`` columns (and as the column Jacobians of a block with the same
    examples when ``cols is rows``), and contract them with :func:`lmft.kernels.pairs.kernel_blocks`;
    ``vmap_chunk`` is :func:`lmft.kernels.jacobians.jacobians`'. ``mem_mb`` (tiled only; None: no bound) is
    a memory budget in MB: a side is held whole where that fits and computes fewer tiles, and where
    the held Jacobians of all tensors would not fit (:func:`lmft.kernels.tiled.block_room`), the
    tensors are cut into blocks, each one a pass of its own over every example (forward and
    backward again, only the block's gradients kept), and the partial float64 kernels are summed.
    The result then differs from the unblocked one by float64 rounding only; like the tile grid,
    the block layout (fixed by ``mem_mb``, the batch sizes and C) is part of its bits.
    Runs where the model is (CPU or CUDA); the shards come back on the CPU.
    """
    formulas = [f.name for f in get_formulas(formulas, "compute_shards")]
    if method not in METHODS:
        raise LmftError(f"unknown kernel method {method!r}; one of {', '.join(METHODS)}")
    if mem_mb is not None and method != "tiled":
        raise LmftError(f"kernels.mem_mb bounds the tiled method only, not {method}")
    if row_batch < 1 or col_batch < 1:
        raise LmftError(f"row_batch and col_batch must be >= 1, got {row_batch} and {col_batch}")
    n, m = check_batch(rows, "rows"), check_batch(cols, "cols")
    r0, r1 = _range(row_range, n, "row range")
    c0, c1 = _range(col_range, m, "column range")
    kernels: dict[str, Tensor] = {}

    def put(block: Tensor, formula: str, ridx: Tensor, cidx: Tensor) -> None:
        """kernel[..., i, :, j, :] += block[..., i', :, j', :] for the block's examples ``ridx``, ``cidx`` (-1: none)."""
        block = block.cpu()
        if formula not in kernels:
            c = block.shape[-1]
            kernels[formula] = torch.zeros(*get_formula(formula).lead, r1 - r0, c, c1 - c0, c, dtype=torch.float64)
        ri, ci = (ridx >= 0).nonzero().flatten(), (cidx >= 0).nonzero().flatten()
        kernels[formula].transpose(-3, -2)[..., (ridx[ri] - r0)[:, None], (cidx[ci] - c0)[None, :], :, :] += \
            block.transpose(-3, -2)[..., ri[:, None], ci[None, :], :, :]

    if method == "tiled":
        f0: list[Tensor] = []

        def put_logits(tile_logits: Tensor, slots: Tensor) -> None:
            """f0[j - c0] = tile_logits[j's slot] for the tile's columns j in the shard."""
            if not f0:
                f0.append(torch.full((c1 - c0, tile_logits.shape[1]), float("nan"), dtype=torch.float64))
            inside = (slots >= 0).nonzero().flatten()
            f0[0][slots[inside] - c0] = tile_logits.cpu()[inside]

        tiled(model, rows, cols, formulas, (r0, r1), (c0, c1), row_batch, col_batch, binary, mem_mb, put, put_logits)
        logits = f0[0]
    else:
        per_pair(model, rows, cols, formulas, (r0, r1), (c0, c1), row_batch, col_batch, binary, method,
                 vmap_chunk, put)
        logits = pretrained_logits(model, take(cols, torch.arange(c0, c1)), binary=binary)
    return {f: KernelShard(kernels[f], (r0, r1), (c0, c1), n, m, f) for f in formulas}, logits
