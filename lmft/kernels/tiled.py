"""The tiled path of the kernel contraction, the default (:mod:`lmft.kernels.compute`).

A (row tile, column tile) pair of :mod:`lmft.kernels.tile_jacobians` is contracted with one float64 GEMM
``[TILE*C, w] @ [w, TILE*C]`` per ``SLICE``-wide slice of the dense coordinates (slots outside the
shard are zero rows), plus, for the embedding tables, the products of the rows two examples share.
Jacobians are held for blocks of ``row_batch`` rows and ``col_batch`` columns rounded up to whole
tiles; those of a side that forms one block are computed once. A memory budget (``mem_mb``) bounds
the dense coordinates held at once: past it, the dense tensors go in blocks of whole tensors
(:func:`block_coords`), each block a pass of its own over every example (forward and backward
again, only the block's gradients requested), and the blocks' float64 partial kernels are summed.

Reproducibility. On the CPU an entry is bit-identical whatever the shard layout and the batch
sizes: it is always produced at the same place (fixed by its examples' global indices) of GEMMs of
the same shapes, and the table rows of a pair are summed in ascending row id. The path runs on one
thread, whose count would change the rounding of MKL's inner-dimension splits and of LayerNorm's
backward.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from lmft.io import LmftError
from lmft.kernels.formulas import FORMULAS
from lmft.kernels.jacobians import Batch, device_of, logits, take
from lmft.kernels.pairs import Put, per_formula
from lmft.kernels.tile_jacobians import SLICE, TILE, Layout, Tile, dense_blocks, layout_of, slots_of, tile_jacobians

log = logging.getLogger(__name__)

BASE_MB = 1024  # of a memory budget: Python, torch, transformers and the float64 staging of the tiled contraction


def block_coords(model: nn.Module, mem_mb: float, held: int, logits: int) -> int:
    """Dense coordinates per block of the tiled path under a memory budget of ``mem_mb`` MB, when
    ``held`` examples' Jacobians of ``logits`` logits are kept at once.

    The budget pays first for the process's fixed part, :data:`BASE_MB` plus three copies of the
    weights (the weights, one backward pass's gradients, its graph's activations at most), the
    rest for the held Jacobians in the model's dtype. Raises LmftError naming ``kernels.mem_mb``
    when that does not hold the largest dense tensor.
    """
    layout = layout_of(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    itemsize = layout.dense[0].element_size() if layout.dense else 4
    coords = int((mem_mb * 2**20 - BASE_MB * 2**20 - 3 * weights) // (held * logits * itemsize))
    need = max((p.numel() for p in layout.dense), default=0)
    if coords < need:
        least = BASE_MB + (3 * weights + need * held * logits * itemsize) / 2**20
        raise LmftError(f"kernels.mem_mb = {mem_mb} MB is too small: {held} examples' Jacobians of the largest "
                        f"dense tensor ({need} coordinates) need at least {least:.0f} MB")
    return coords


def tile_blocks(layout: Layout, row_tiles: Sequence[Tile], col_tiles: Sequence[Tile],
                formulas: Sequence[str]) -> dict[str, Tensor]:
    """Contract row tiles with column tiles into a float64 ``[R, C, S, C]`` block per formula
    (``[P, R, C, S, C]`` for a stacked formula; R = TILE * len(row_tiles), S likewise, slots outside
    the shard included).

    Dense tensors: per (row tile, column tile) pair and slice of the layout, one
    ``[TILE*C, w] @ [w, TILE*C]`` float64 GEMM, accumulated slice by slice. Each pair's GEMM of a
    slice has the same shape whatever the shard, and an entry's place in it is fixed by its
    examples' global indices (a slot outside the shard is a zero row), so an entry's bits depend
    neither on the shard layout nor on the batch sizes.
    Embedding tables: each pair of examples sums the products of the rows both hold, ascending in
    row id (one ``[C, H] @ [H, C]`` per shared row), added after the dense sum, table by table.
    """
    products = [p for f in formulas for p in FORMULAS[f].products]
    signed = {name for p in products for name in p if name.startswith("s")}
    nr, ns = len(row_tiles), len(col_tiles)
    c = row_tiles[0].num_logits
    device = row_tiles[0].slots.device if not layout.dense else layout.dense[0].device
    acc = torch.zeros(len(products), nr, ns, TILE * c, TILE * c, dtype=torch.float64, device=device)
    # float64 staging, allocated once: fresh multi-MB tensors per slice cost page faults
    bufs = {side: torch.empty(len(tiles), 2 if "s" + side in signed else 1, TILE * c, SLICE, dtype=torch.float64,
                              device=device) for side, tiles in (("x", row_tiles), ("y", col_tiles))}
    for pieces in layout.slices:
        w = sum(stop - start for _, start, stop in pieces)
        ops: dict[str, list[Tensor]] = {}
        for side, tiles in (("x", row_tiles), ("y", col_tiles)):
            ops[side] = [_stage(tile, pieces, buf[0, :, :w]) for tile, buf in zip(tiles, bufs[side])]
            if "s" + side in signed:
                ops["s" + side] = [torch.sign(u, out=buf[1, :, :w]) for u, buf in zip(ops[side], bufs[side])]
        for o, (left, right) in enumerate(products):
            for i, u in enumerate(ops[left]):
                for j, v in enumerate(ops[right]):
                    acc[o, i, j].addmm_(u, v.T)
    out = acc.view(len(products), nr, ns, TILE, c, TILE, c).permute(0, 1, 3, 4, 2, 5, 6)
    out = out.reshape(len(products), nr * TILE, c, ns * TILE, c)
    for t in range(len(layout.tables)):
        for i, rt in enumerate(row_tiles):
            for j, ct in enumerate(col_tiles):
                out[:, i * TILE:(i + 1) * TILE, :, j * TILE:(j + 1) * TILE, :] += \
                    _shared_rows(rt.tables[t], ct.tables[t], products)
    return per_formula(out, formulas)


def _stage(tile: Tile, pieces: Sequence[tuple[int, int, int]], buf: Tensor) -> Tensor:
    """``buf`` ``[TILE*C, w]`` float64 filled with one slice of ``tile``'s dense Jacobians, row ``s*C + a``
    for slot s and logit a (zero for a slot outside the shard and a tensor without gradient)."""
    c = buf.shape[0] // TILE
    for s, grads in enumerate(tile.dense):
        if grads is None:
            buf[s * c:(s + 1) * c].zero_()
            continue
        for a, per_tensor in enumerate(grads):
            row, offset = buf[s * c + a], 0
            for i, start, stop in pieces:
                dst = row[offset:offset + stop - start]
                g = per_tensor[i]
                dst.zero_() if g is None else dst.copy_(g[start:stop])
                offset += stop - start
    return buf


def _shared_rows(rows: tuple[Tensor, Tensor, Tensor], cols: tuple[Tensor, Tensor, Tensor],
                 products: Sequence[tuple[str, str]]) -> Tensor:
    """``[P, TILE, C, TILE, C]``: for each product and pair of slots, the sum over the table rows that
    both slots hold of row Jacobian ``[C, H]`` times column Jacobian ``[H, C]``, in ascending row id."""
    (rid, rslot, rval), (cid, cslot, cval) = rows, cols
    c = rval.shape[1]
    out = torch.zeros(len(products), TILE * TILE, c, c, dtype=torch.float64, device=rval.device)
    p, q = (rid[:, None] == cid[None, :]).nonzero(as_tuple=True)  # p, then q, ascending: ascending ids per pair
    if p.numel():
        ops = {"x": rval[p], "y": cval[q]}
        for name in {n for product in products for n in product} - ops.keys():
            ops[name] = ops[name[1]].sign()
        pair = rslot[p] * TILE + cslot[q]
        for o, (left, right) in enumerate(products):
            out[o].index_add_(0, pair, torch.bmm(ops[left], ops[right].transpose(1, 2)))
    return out.view(len(products), TILE, TILE, c, c).permute(0, 1, 3, 2, 4)


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """torch on one CPU thread for the block (nothing changes for a CUDA device), then the previous count."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if device.type == "cpu":
            torch.set_num_threads(threads)


def tiled(model: nn.Module, rows: Batch, cols: Batch, formulas: list[str], rng: tuple[int, int],
          crng: tuple[int, int], row_batch: int, col_batch: int, binary: bool, mem_mb: float | None,
          put: Put) -> None:
    """The tiled path of :func:`lmft.kernels.compute.compute_shards`. One side's blocks of tiles are the outer loop, the
    other's the inner; the inner side's Jacobians are computed once per outer block, or once in all
    where they form one block (kept). The outer side is the one that computes fewer tiles.

    On the CPU it runs on one thread: the thread count changes the rounding of MKL's GEMMs (which
    split the inner dimension among threads) and of LayerNorm's backward, and so the bits. Shards
    are the unit of parallel work.
    """
    with one_thread(device_of(model)):
        layout = layout_of(model)
        coords = None
        if mem_mb is not None:
            held = sum(min(-(-size // TILE), -(-hi // TILE) - lo // TILE) * TILE
                       for (lo, hi), size in ((rng, row_batch), (crng, col_batch)))
            c = logits(model, take(rows, torch.tensor([rng[0]])), binary=binary).shape[1]  # C, from one forward
            coords = block_coords(model, mem_mb, held, c)
        blocks = dense_blocks(layout, coords)
        for b, block in enumerate(blocks):
            if len(blocks) > 1:
                log.info("kernel %s: dense block %d/%d, %d coordinates", "+".join(formulas), b + 1, len(blocks),
                         sum(p.numel() for p in block.dense))
            _tiled_on_one_thread(model, block, rows, cols, formulas, rng, crng, row_batch, col_batch, binary, put)


def _tiled_on_one_thread(model: nn.Module, layout: Layout, rows: Batch, cols: Batch, formulas: list[str],
                         rng: tuple[int, int], crng: tuple[int, int], row_batch: int, col_batch: int, binary: bool,
                         put: Put) -> None:
    sides = []
    for batch, (lo, hi), size in ((rows, rng, row_batch), (cols, crng, col_batch)):
        tiles = list(range(lo // TILE, -(-hi // TILE)))
        per = -(-size // TILE)
        sides.append((batch, lo, hi, [tiles[i:i + per] for i in range(0, len(tiles), per)]))

    def work(outer: int) -> int:
        """Tiles computed with side ``outer`` outside."""
        o, i = sides[outer][3], sides[1 - outer][3]
        return sum(map(len, o)) + sum(map(len, i)) * (1 if len(i) == 1 else len(o))

    outer = 1 if work(1) < work(0) else 0
    (obatch, olo, ohi, oblocks), (ibatch, ilo, ihi, iblocks) = sides[outer], sides[1 - outer]
    kept: list[Tile] = []
    for bi, ob in enumerate(oblocks):
        log.info("kernel %s rows %d:%d cols %d:%d: %s block %d/%d (%d tiles of %d)", "+".join(formulas), *rng, *crng,
                 ("row", "column")[outer], bi + 1, len(oblocks), len(ob), TILE)
        otiles = [tile_jacobians(model, layout, obatch, t, olo, ohi, binary) for t in ob]
        for ib in iblocks:
            if not kept:
                same = {t.index: t for t in otiles} if cols is rows else {}  # train x train: reuse equal tiles
                itiles = [same[t] if t in same and torch.equal(same[t].slots, slots_of(t, ilo, ihi))
                          else tile_jacobians(model, layout, ibatch, t, ilo, ihi, binary) for t in ib]
                if len(iblocks) == 1:
                    kept = itiles
            else:
                itiles = kept
            rt, ct = (otiles, itiles) if outer == 0 else (itiles, otiles)
            ridx, cidx = torch.cat([t.slots for t in rt]), torch.cat([t.slots for t in ct])
            for formula, block in tile_blocks(layout, rt, ct, formulas).items():
                put(block, formula, ridx, cidx)
            del itiles, rt, ct  # before the next block's Jacobians: held Jacobians are the memory budget
        del otiles
