"""The per-pair reference path of the kernel contraction (``vmap`` and ``naive``, :mod:`lmft.kernels.compute`).

Rows go in blocks of ``row_batch`` examples whose dense Jacobians (:func:`lmft.kernels.jacobians.jacobians`)
are kept while every column block of ``col_batch`` examples is computed and contracted against
them (column Jacobians are recomputed once per row block). The contraction multiplies each (row,
column) pair on its own (:func:`kernel_blocks`), ``[C, k] @ [k, C]`` over fixed ``CHUNK``-wide
slices of each parameter tensor, summed in a fixed order: with ``vmap_chunk=1`` the result is
bit-identical on the CPU whatever the shard layout, the batch sizes and the thread count (a plain
``A @ B.T`` over a block would not do: a BLAS GEMM rounds an entry by its position in the output).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lmft.io import LmftError
from lmft.kernels.formulas import get_formula, get_formulas
from lmft.kernels.jacobians import Batch, jacobians, take

log = logging.getLogger(__name__)

CHUNK = 1 << 16  # parameter coordinates per float64 slice of the per-pair contraction
# adds a block of kernel entries into the shard: (block, formula, row example ids, column example ids; -1 none)
Put = Callable[[Tensor, str, Tensor, Tensor], None]


def kernel_block(rows: Sequence[Tensor], cols: Sequence[Tensor], formula: str) -> Tensor:
    """Contract row Jacobians ``[R, C, *shape]`` with column Jacobians ``[S, C, *shape]`` (one per
    parameter tensor, same order) into a float64 ``[R, C, S, C]`` block (``[2, R, C, S, C]`` for
    asymmetric-signgd), on the Jacobians' device. See :func:`kernel_blocks`."""
    return kernel_blocks(rows, cols, [formula])[formula]


def kernel_blocks(rows: Sequence[Tensor], cols: Sequence[Tensor], formulas: Sequence[str]) -> dict[str, Tensor]:
    """:func:`kernel_block` for several formulas from one pass over the Jacobians: formula -> block.

    Each (row example, column example) pair is its own ``[C, k] @ [k, C]`` float64 product (one
    ``bmm`` per row example over all columns) over a fixed ``CHUNK``-wide slice, accumulated
    tensor by tensor and slice by slice. A product that packs several examples into one GEMM would
    not do: BLAS micro-kernels round an entry differently by its position in the output (seen on
    an AMD EPYC: the last 4 columns of a 16-wide tile), so an entry's bits would depend on which
    examples share its block. With one product per pair every entry is computed at the same
    position of a product of the same shape, whatever R, S, the other formulas or the shard.
    """
    formulas = [f.name for f in get_formulas(formulas, "kernel_blocks")]
    if len(rows) != len(cols) or not rows:
        raise LmftError(f"kernel_block: {len(rows)} row and {len(cols)} column Jacobian tensors")
    r, c = rows[0].shape[:2]
    s = cols[0].shape[0]
    products = [p for f in formulas for p in get_formula(f).products]
    device = rows[0].device
    acc = torch.zeros(len(products), r, s, c, c, dtype=torch.float64, device=device)  # [P, R, S, C, C]
    width = min(CHUNK, max(j[0, 0].numel() for j in rows))  # widest slice of any tensor
    # float64 staging buffers, allocated once per call: fresh multi-MB tensors per slice cost page faults
    names = {name for p in products for name in p}
    bufs = {name: torch.empty(n * c * width, dtype=torch.float64, device=device)
            for name, n in (("x", r), ("y", s), ("sx", r), ("sy", s)) if name in names | {"x", "y"}}
    for jr, jc in zip(rows, cols):
        if jr.shape[1:] != jc.shape[1:] or jr.shape[1] != c:
            raise LmftError(f"kernel_block: row Jacobian {tuple(jr.shape)} and column Jacobian {tuple(jc.shape)} do not match")
        a, b = jr.reshape(r, c, -1), jc.reshape(s, c, -1)
        for k in range(0, a.shape[2], CHUNK):
            ops = {"x": _as_float64(a[:, :, k:k + CHUNK], bufs["x"]), "y": _as_float64(b[:, :, k:k + CHUNK], bufs["y"])}
            for name in names - {"x", "y"}:
                ops[name] = torch.sign(ops[name[1]], out=bufs[name][: ops[name[1]].numel()].view(ops[name[1]].shape))
            for o, (left, right) in enumerate(products):
                u, vt = ops[left], ops[right].transpose(1, 2)  # [R, C, w], [S, w, C]
                for i in range(r):
                    acc[o, i] += torch.bmm(u[i].expand(s, c, u.shape[2]), vt)  # [S, C, C]
    return per_formula(acc.permute(0, 1, 3, 2, 4), formulas)  # [P, R, C, S, C]


def per_formula(out: Tensor, formulas: Sequence[str]) -> dict[str, Tensor]:
    """Split ``out`` ``[P, R, C, S, C]`` (the products of ``formulas`` in order) into each formula's block:
    ``[R, C, S, C]``, or ``[P_f, R, C, S, C]`` for a stacked formula of P_f products; each in its own storage."""
    blocks, o = {}, 0
    for formula in formulas:
        f = get_formula(formula)
        n = len(f.products)
        blocks[formula] = (out[o:o + n] if f.stacked else out[o]).clone(memory_format=torch.contiguous_format)
        o += n
    return blocks


def _as_float64(m: Tensor, buf: Tensor) -> Tensor:
    """``m`` as a contiguous float64 tensor in the storage of ``buf``."""
    return buf[: m.numel()].view(m.shape).copy_(m)


def _by_mask(mask: Tensor, lo: int, hi: int, size: int) -> list[Tensor]:
    """Indices ``lo..hi-1`` sorted by attention mask (equal masks adjacent), cut into blocks of ``size``."""
    rows = mask[lo:hi].tolist()
    order = sorted(range(hi - lo), key=lambda i: (sum(rows[i]), rows[i], i))
    idx = torch.tensor(order, dtype=torch.long) + lo
    return list(idx.split(size))


def per_pair(model: nn.Module, rows: Batch, cols: Batch, formulas: list[str], rng: tuple[int, int],
             crng: tuple[int, int], row_batch: int, col_batch: int, binary: bool, method: str,
             vmap_chunk: int | None, put: Put) -> None:
    """The per-pair path of :func:`lmft.kernels.compute.compute_shards`: rows ``rng`` x columns ``crng`` into ``put``."""
    row_blocks = _by_mask(rows["attention_mask"], *rng, row_batch)
    col_blocks = _by_mask(cols["attention_mask"], *crng, col_batch)
    for bi, ridx in enumerate(row_blocks):
        log.info("kernel %s rows %d:%d cols %d:%d: row block %d/%d", "+".join(formulas), *rng, *crng, bi + 1,
                 len(row_blocks))
        jr = jacobians(model, take(rows, ridx), binary=binary, method=method, vmap_chunk=vmap_chunk)
        for cidx in col_blocks:
            if cols is rows and torch.equal(cidx, ridx):  # a train x train diagonal block: the same Jacobians
                jc = jr
            else:
                jc = jacobians(model, take(cols, cidx), binary=binary, method=method, vmap_chunk=vmap_chunk)
            for formula, block in kernel_blocks(jr, jc, formulas).items():  # [(2,) R, C, S, C]
                put(block, formula, ridx, cidx)
            del jc
        del jr
