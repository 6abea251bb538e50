"""The tiled path of the kernel contraction, the default (:mod:`lmft.kernels.compute`).

A (row tile, column tile) pair of :mod:`lmft.kernels.tile_jacobians` is contracted in float64:

- dense tensors: one GEMM ``[TILE*C, w] @ [w, TILE*C]`` per ``SLICE``-wide slice of their
  coordinates, accumulated slice by slice;
- factored weights (``J_b = G_b^T X_b``): the product of two examples' Jacobians is
  ``<G_i^T X_i, G_j^T X_j> = sum_{t,u} (X_i X_j^T)[t, u] (G_i G_j^T)[t, u]``, so a tile pair takes one
  Gram GEMM of the inputs per group of weights that share an input (query, key and value) and one
  of the output gradients per weight, over token positions, and never forms the Jacobians. The
  sign formulas need ``sign(J)``: for them (their products only) the factored Jacobians are
  formed slice by slice in float64 as the dense ones are staged;
- embedding tables: the products of the rows two examples share, in ascending row id.

Jacobians are held for blocks of ``row_batch`` rows and ``col_batch`` columns rounded up to whole
tiles; those of a side that forms one block are computed once. A memory budget (``mem_mb``) bounds
what is held: the side that is computed fewer times is held whole where that fits, and past the
budget the tensors go in blocks (:func:`block_room`), each block a pass of its own over every
example (forward and backward again, only the block's gradients taken), whose float64 partial
kernels are summed.

Reproducibility. On the CPU an entry is bit-identical whatever the shard layout and the batch
sizes: a tile's Jacobians come from one pass over the tile's examples whatever part of it the shard
needs, and an entry is always produced at the same place (fixed by its examples' global indices) of
products of the same shapes; the table rows of a pair are summed in ascending row id. Under a
memory budget the block layout (fixed by ``mem_mb``, the batch sizes and C) is part of the bits.
The path runs on one thread, whose count would change the rounding of MKL's inner-dimension splits
and of LayerNorm's backward.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmft.kernels.formulas import FORMULAS
from lmft.io import LmftError
from lmft.kernels.jacobians import Batch, device_of, eval_mode, logits, take
from lmft.kernels.pairs import Put, per_formula
from lmft.kernels.tile_jacobians import (TILE, Layout, NotSeparable, Tile, dense_blocks, layout_of, tile_jacobians,
                                 with_slots)

log = logging.getLogger(__name__)

BASE_MB = 1024  # of a memory budget: Python, torch, transformers and the float64 staging of the tiled contraction


def block_room(model: nn.Module, layout: Layout, mem_mb: float, held: int, logits: int) -> int:
    """Bytes one example's Jacobians may take in a block of the tiled path under a memory budget of
    ``mem_mb`` MB, when ``held`` examples' Jacobians of ``logits`` logits are kept at once.

    The budget pays first for the process's fixed part, :data:`BASE_MB` plus three copies of the
    weights (the weights, a batched pass's activations and working set), the rest for the held
    Jacobians. Raises LmftError naming ``kernels.mem_mb`` when that does not hold the largest tensor.
    """
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    room = int((mem_mb * 2**20 - BASE_MB * 2**20 - 3 * weights) // held)
    need = max((layout.example_bytes(p, logits) for p in layout.order), default=0)
    if room < need:
        least = BASE_MB + (3 * weights + need * held) / 2**20
        raise LmftError(f"kernels.mem_mb = {mem_mb} MB is too small: {held} examples' Jacobians of the largest "
                        f"tensor ({need} bytes each) need at least {least:.0f} MB")
    return room


def tile_blocks(layout: Layout, row_tiles: Sequence[Tile], col_tiles: Sequence[Tile],
                formulas: Sequence[str]) -> dict[str, Tensor]:
    """Contract row tiles with column tiles into a float64 ``[R, C, S, C]`` block per formula
    (``[P, R, C, S, C]`` for a stacked formula; R = TILE * len(row_tiles), S likewise, slots outside
    the shard included).

    Per product, in this order: the dense slices (per pair of tiles and slice one
    ``[TILE*C, w] @ [w, TILE*C]`` GEMM); for a product with a sign the factored tensors' slices
    likewise, for the plain product ``x.y`` their Gram products (:func:`_grams`); then the embedding
    tables, whose shared rows each pair sums in ascending row id (one ``[C, H] @ [H, C]`` per row).
    Every product a pair's entry comes from has the same shape whatever the shard, and the entry's
    place in it is fixed by its examples' global indices, so its bits depend neither on the shard
    layout nor on the batch sizes.
    """
    products = [p for f in formulas for p in FORMULAS[f].products]
    signed = {name for p in products for name in p if name.startswith("s")}
    nr, ns = len(row_tiles), len(col_tiles)
    c = row_tiles[0].num_logits
    device = (layout.dense + layout.factored + [t.weight for t in layout.tables])[0].device
    acc = torch.zeros(len(products), nr, ns, TILE * c, TILE * c, dtype=torch.float64, device=device)
    widest = max((sum(stop - start for _, start, stop in pieces) for pieces in layout.slices + layout.fslices), default=1)
    # float64 staging, allocated once: fresh multi-MB tensors per slice cost page faults
    bufs = {side: torch.empty(len(tiles), 2 if "s" + side in signed else 1, TILE, c, widest, dtype=torch.float64,
                              device=device) for side, tiles in (("x", row_tiles), ("y", col_tiles))}
    stages = [(layout.slices, _stage, range(len(products)))]
    if signed and layout.factored:
        stages.append((layout.fslices, _stage_factored, [o for o, p in enumerate(products) if p != ("x", "y")]))
    for slices, stage, which in stages:
        for pieces in slices:
            w = sum(stop - start for _, start, stop in pieces)
            ops: dict[str, list[Tensor]] = {}
            for side, tiles in (("x", row_tiles), ("y", col_tiles)):
                ops[side] = [stage(tile, pieces, buf[0, ..., :w], layout).view(TILE * c, w)
                             for tile, buf in zip(tiles, bufs[side])]
                if "s" + side in signed:
                    ops["s" + side] = [torch.sign(u, out=buf[1, ..., :w].view(TILE * c, w))
                                       for u, buf in zip(ops[side], bufs[side])]
            for o in which:
                left, right = products[o]
                for i, u in enumerate(ops[left]):
                    for j, v in enumerate(ops[right]):
                        acc[o, i, j].addmm_(u, v.T)
    plain = [o for o, p in enumerate(products) if p == ("x", "y")]
    if plain and layout.factored:
        grams = _grams(row_tiles, col_tiles)
        for o in plain:
            acc[o] += grams
    out = acc.view(len(products), nr, ns, TILE, c, TILE, c).permute(0, 1, 3, 4, 2, 5, 6)
    out = out.reshape(len(products), nr * TILE, c, ns * TILE, c)
    for t in range(len(layout.tables)):
        for i, rt in enumerate(row_tiles):
            for j, ct in enumerate(col_tiles):
                out[:, i * TILE:(i + 1) * TILE, :, j * TILE:(j + 1) * TILE, :] += \
                    _shared_rows(rt.tables[t], ct.tables[t], products)
    return per_formula(out, formulas)


def _stage(tile: Tile, pieces: Sequence[tuple[int, int, int]], buf: Tensor, layout: Layout) -> Tensor:
    """``buf`` ``[TILE, C, w]`` float64 filled with one slice of ``tile``'s dense Jacobians (zero for a
    tensor without gradient)."""
    offset = 0
    for i, start, stop in pieces:
        dst = buf[..., offset:offset + stop - start]
        j = tile.dense[i]
        dst.zero_() if j is None else dst.copy_(j[:, :, start:stop].transpose(0, 1))
        offset += stop - start
    return buf


def _stage_factored(tile: Tile, pieces: Sequence[tuple[int, int, int]], buf: Tensor, layout: Layout) -> Tensor:
    """``buf`` ``[TILE, C, w]`` float64 filled with one slice of ``tile``'s factored Jacobians, formed in
    float64 example by example from the rows of the weight that the slice covers."""
    offset = 0
    for i, start, stop in pieces:
        p = layout.factored[i]
        x, g, slot = tile.factors(i)  # [L, d_in], [C, L, d_out], [L]
        cols = p.shape[1]
        r0, r1 = start // cols, -(-stop // cols)
        dst = buf[..., offset:offset + stop - start]
        for s in range(TILE):
            mine = slot == s
            xs, gs = x[mine].double(), g[:, mine].double()
            if layout.rules[id(p)][0] == "linear":  # [d_out, d_in] = G^T X
                j = gs[..., r0:r1].transpose(-1, -2) @ xs
            else:  # Conv1D, [d_in, d_out] = X^T G
                j = xs[:, r0:r1].T @ gs
            dst[s] = j.flatten(1)[:, start - r0 * cols:stop - r0 * cols]
        offset += stop - start
    return buf


def _grams(row_tiles: Sequence[Tile], col_tiles: Sequence[Tile]) -> Tensor:
    """``[R, S, TILE*C, TILE*C]`` float64 per pair of tiles: the sums over the factored weights of
    ``<J(x_s, a), J(y_u, b)>`` at row ``s*C + a``, column ``u*C + b``, group by group of weights that share
    an input: ``sum_{t in s, t' in u} (X X'^T)[t, t'] (G G'^T)[t, t']`` over the token positions of the two
    examples, with G the group's output gradients side by side; the sums over positions are products
    with the positions' one-hot slots."""
    members = [f.members for f in row_tiles[0].factored]
    if any([f.members for f in t.factored] != members for t in [*row_tiles, *col_tiles]):
        raise LmftError("tiles of one model grouped their factored weights differently")
    c = row_tiles[0].num_logits
    device = row_tiles[0].factored[0].x.device
    out = torch.zeros(len(row_tiles), len(col_tiles), TILE * c, TILE * c, dtype=torch.float64, device=device)
    sizes = [(f.x.numel(), f.g.numel()) for t in [*row_tiles, *col_tiles] for f in t.factored]
    # float64 operands in buffers allocated once: fresh multi-MB tensors per group cost page faults
    scratch = [(torch.empty(max(x for x, _ in sizes), dtype=torch.float64, device=device),
                torch.empty(max(g for _, g in sizes), dtype=torch.float64, device=device))
               for _ in [*row_tiles, *col_tiles]]
    for k in range(len(members)):
        operands = []
        for t, (bx, bg) in zip([*row_tiles, *col_tiles], scratch):
            f = t.factored[k]
            operands.append((bx[:f.x.numel()].view(f.x.shape).copy_(f.x),
                             bg[:f.g.numel()].view(-1, f.g.shape[-1]).copy_(f.g.reshape(-1, f.g.shape[-1])),
                             F.one_hot(f.slot, TILE).double()))
        rows, cols = operands[:len(row_tiles)], operands[len(row_tiles):]
        for i, (xr, gr, er) in enumerate(rows):
            lr = xr.shape[0]
            for j, (xc, gc, ec) in enumerate(cols):
                lc = xc.shape[0]
                pair = (gr @ gc.T).view(c, lr, c, lc).mul_((xr @ xc.T).view(1, lr, 1, lc))
                pair = er.T @ (pair.view(-1, lc) @ ec).view(c, lr, c * TILE)  # [C, TILE, C*TILE]
                out[i, j] += pair.view(c, TILE, c, TILE).permute(1, 0, 3, 2).reshape(TILE * c, TILE * c)
    return out


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


def _width(batch: Batch) -> int:
    return int(batch["attention_mask"].any(0).nonzero().max()) + 1


PutLogits = Callable[[Tensor, Tensor], None]  # (a column tile's logits [TILE, C] float64, its slots [TILE])


def tiled(model: nn.Module, rows: Batch, cols: Batch, formulas: list[str], rng: tuple[int, int],
          crng: tuple[int, int], row_batch: int, col_batch: int, binary: bool, mem_mb: float | None,
          put: Put, put_logits: PutLogits) -> None:
    """The tiled path of :func:`lmft.kernels.compute.compute_shards`. One side's blocks of tiles are the outer loop, the
    other's the inner; the inner side's Jacobians are computed once per outer block, or once in all
    where they form one block (kept). The outer side is the one that computes fewer tiles. Every
    column tile's logits (its examples' f0) go to ``put_logits``.

    On the CPU it runs on one thread: the thread count changes the rounding of MKL's GEMMs (which
    split the inner dimension among threads) and of LayerNorm's backward, and so the bits. Shards
    are the unit of parallel work.
    """
    with one_thread(device_of(model)), eval_mode(model):
        width = max(_width(rows), _width(cols))
        done = [0]

        def counted(*args) -> None:
            done[0] += 1
            put(*args)

        try:
            _blocks(model, layout_of(model, width), rows, cols, formulas, rng, crng, row_batch, col_batch, binary,
                    mem_mb, counted, put_logits)
        except NotSeparable:
            if done[0]:
                raise LmftError("the kernel's tiles could not all be computed in batched passes") from None
            log.info("kernel %s: per-example gradients do not separate in a batched pass; one example at a time",
                     "+".join(formulas))
            _blocks(model, layout_of(model, width, batched=False), rows, cols, formulas, rng, crng, row_batch,
                    col_batch, binary, mem_mb, put, put_logits)


def _tiles(lo: int, hi: int) -> list[int]:
    return list(range(lo // TILE, -(-hi // TILE)))


def _work(row_tiles: int, col_tiles: int, row_per: int, col_per: int) -> tuple[int, int]:
    """(tiles computed, outer side: 0 rows, 1 columns) with blocks of ``row_per`` and ``col_per`` tiles."""
    best = None
    for outer, (o, o_per), (i, i_per) in ((0, (row_tiles, row_per), (col_tiles, col_per)),
                                          (1, (col_tiles, col_per), (row_tiles, row_per))):
        o_blocks, i_blocks = -(-o // o_per), -(-i // i_per)
        work = o + i * (1 if i_blocks == 1 else o_blocks)
        if best is None or work < best[0]:
            best = (work, outer)
    return best


def _blocks(model: nn.Module, layout: Layout, rows: Batch, cols: Batch, formulas: list[str], rng: tuple[int, int],
            crng: tuple[int, int], row_batch: int, col_batch: int, binary: bool, mem_mb: float | None,
            put: Put, put_logits: PutLogits) -> None:
    """Plan the held blocks of tiles and the tensor blocks, and run them. Under a memory budget each side
    is held whole instead of in batches where the budget allows it and that computes fewer tiles."""
    nr, nc = len(_tiles(*rng)), len(_tiles(*crng))
    given = (min(nr, -(-row_batch // TILE)), min(nc, -(-col_batch // TILE)))
    plan, blocks = given, [layout]
    if mem_mb is not None:
        c = logits(model, take(rows, torch.tensor([rng[0]])), binary=binary).shape[1]  # C, from one forward
        best = None
        for per in dict.fromkeys((given, (nr, given[1]), (given[0], nc), (nr, nc))):
            try:
                cut = dense_blocks(layout, block_room(model, layout, mem_mb, TILE * sum(per), c), c)
            except LmftError:
                if per == given:
                    raise
                continue
            work = len(cut) * _work(nr, nc, *per)[0]
            if best is None or work < best[0]:
                best = (work, per, cut)
        _, plan, blocks = best
    for b, block in enumerate(blocks):
        if len(blocks) > 1:
            log.info("kernel %s: block %d/%d of %d tensors", "+".join(formulas), b + 1, len(blocks), len(block.order))
        _run(model, block, rows, cols, formulas, rng, crng, plan, binary, put, put_logits if b == 0 else None)


def _run(model: nn.Module, layout: Layout, rows: Batch, cols: Batch, formulas: list[str], rng: tuple[int, int],
         crng: tuple[int, int], per: tuple[int, int], binary: bool, put: Put, put_logits: PutLogits | None) -> None:
    """One tensor block: the held blocks of ``per`` (rows, columns) tiles, contracted; the column tiles'
    logits to ``put_logits`` (None: not wanted)."""
    sides = []
    for batch, (lo, hi), n in ((rows, rng, per[0]), (cols, crng, per[1])):
        tiles = _tiles(lo, hi)
        sides.append((batch, lo, hi, [tiles[i:i + n] for i in range(0, len(tiles), n)]))
    outer = _work(len(_tiles(*rng)), len(_tiles(*crng)), *per)[1]
    (obatch, olo, ohi, oblocks), (ibatch, ilo, ihi, iblocks) = sides[outer], sides[1 - outer]
    kept: list[Tile] = []
    for bi, ob in enumerate(oblocks):
        log.info("kernel %s rows %d:%d cols %d:%d: %s block %d/%d (%d tiles of %d)", "+".join(formulas), *rng, *crng,
                 ("row", "column")[outer], bi + 1, len(oblocks), len(ob), TILE)
        otiles = [tile_jacobians(model, layout, obatch, t, olo, ohi, binary) for t in ob]
        for ib in iblocks:
            if not kept:
                same = {t.index: t for t in otiles} if cols is rows else {}  # train x train: the same Jacobians
                itiles = [with_slots(same[t], ilo, ihi) if t in same else
                          tile_jacobians(model, layout, ibatch, t, ilo, ihi, binary) for t in ib]
                if len(iblocks) == 1:
                    kept = itiles
            else:
                itiles = kept
            rt, ct = (otiles, itiles) if outer == 0 else (itiles, otiles)
            if put_logits is not None:
                for t in ct:
                    put_logits(t.logits, t.slots)
            ridx, cidx = torch.cat([t.slots for t in rt]), torch.cat([t.slots for t in ct])
            for formula, block in tile_blocks(layout, rt, ct, formulas).items():
                put(block, formula, ridx, cidx)
            del itiles, rt, ct  # before the next block's Jacobians: held Jacobians are the memory budget
        del otiles
