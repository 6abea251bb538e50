"""Per-example Jacobians in tiles: the Jacobians of the tiled path of the kernel contraction (:mod:`lmft.kernels.compute`).

Examples fall into tiles of ``TILE`` on a grid fixed by the global example index. A tile's
Jacobians come from one batched forward of all of its examples (whatever part of it a shard
needs: the tile, not the shard, fixes the batch, so the bits do not depend on the shard layout)
and one batched backward per logit of the sum of its examples' logits. Examples do not interact
(eval mode), so every activation gradient is one example's; per-example parameter gradients are
read off the modules that hold the parameters (:data:`Layout.rules`):

- ``nn.Linear`` (LoRA's adapters too) and GPT-2's ``Conv1D``: a weight's per-example gradient is
  ``G_b^T X_b`` (Conv1D: ``X_b^T G_b``), from the module's input ``X_b`` ``[T, d_in]`` and output
  gradient ``G_b`` ``[T, d_out]`` (T: token positions). The weight is ``factored`` (kept as ``X``
  and ``G``, :mod:`lmft.kernels.tiled` contracts the factors) where ``width * (d_in + d_out)`` is
  below ``d_in * d_out``, else materialised; its bias's gradient is ``sum_t G_b[t]``;
- LayerNorm and RMSNorm (:data:`NORMS`, ``w * n(x) + b``): ``sum_t G_b[t] * n(x_b)[t]`` and ``sum_t G_b[t]``;
- embedding tables (``nn.Embedding`` weights, with their tied decoders): cut out of the graph and
  kept as the rows each example touches (its tokens, positions and the decoder's label words);
- a tied decoder's bias: the decoder's output gradient summed over positions.

Weight gradients are never formed by the backward passes (only activation gradients are asked
for). A model with a trainable tensor that no rule covers, or whose embedding table is read
otherwise (e.g. ``E[label_ids]``, the tied decoder of an MLM-less encoder), gets its Jacobians one
example at a time at its own length (:class:`NotSeparable`, ``Layout.batched`` False): one forward
and one backward per logit. At SmolLM2-135M's size the dense Jacobian of one example and logit is
0.4 GB (106M coordinates; the 28M of the embedding table are rows), its factors at 32 tokens 32 MB.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from lmft.kernels.capture import Factors, capture_tile
from lmft.kernels.jacobians import Batch, take
from lmft.kernels.layout import SLICE, TILE, Layout, NotSeparable, dense_blocks, layout_of  # noqa: F401  (re-exported)


@dataclass
class Tile:
    """The Jacobians of tile ``index`` of the global grid, examples ``TILE * index + s`` for slots ``s < TILE``.

    ``slots`` [TILE]: each slot's global example index, -1 for a slot outside the shard (its
    Jacobians are those of the example there, or zero past the split's end). ``dense[i]``: tensor
    i's Jacobians ``[C, TILE, numel]`` (None where all zero). ``factored``: the factored tensors in
    groups that share an input (e.g. the query, key and value projections), in order; slot s's
    Jacobian of factored tensor i is ``G[:, slot == s]^T X[slot == s]`` (:meth:`factors`).
    ``tables``: per table, ``(ids [K], owner [K], values [K, C, H] float64)``, the rows of every
    slot's Jacobian that can be nonzero, slot by slot (``owner``), ascending ids within a slot.
    ``logits`` ``[TILE, C]`` float64: the pass's logits, the examples' pre-trained logits f0 (zero
    past the split's end).
    """

    index: int
    slots: Tensor
    logits: Tensor
    dense: list[Tensor | None]
    factored: list[Factors]
    tables: list[tuple[Tensor, Tensor, Tensor]]

    @property
    def num_logits(self) -> int:
        return self.logits.shape[1]

    def factors(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(X [L, d_in], G [C, L, d_out], slot [L])`` of factored tensor ``i``."""
        for f in self.factored:
            for j, offset, d_out in f.members:
                if j == i:
                    return f.x, f.g[..., offset:offset + d_out], f.slot
        raise KeyError(i)


def tile_jacobians(model: nn.Module, layout: Layout, batch: Batch, index: int, lo: int, hi: int,
                   binary: bool) -> Tile:
    """Tile ``index``: the Jacobians of all of its examples in the split, slots outside ``lo..hi-1`` marked -1."""
    n = batch["input_ids"].shape[0]
    members = torch.arange(TILE * index, min(TILE * (index + 1), n))
    if layout.batched:
        part = take(batch, members)
        width = int(part["attention_mask"].any(0).nonzero().max()) + 1
        got = [capture_tile(model, layout, part, width, binary, True)]
    else:  # one example at a time, each at its own length
        got = []
        for g in members.tolist():
            part = take(batch, torch.tensor([g]))
            got.append(capture_tile(model, layout, part, int(part["attention_mask"][0].nonzero().max()) + 1, binary, False))
    c = got[0].logits.shape[1]
    logits = torch.cat([cap.logits for cap in got])
    logits = torch.cat([logits, logits.new_zeros(TILE - logits.shape[0], c)])
    if layout.batched:
        dense, factored = got[0].dense, got[0].factored
    else:
        dense, factored = [], []
        for i, p in enumerate(layout.dense):
            parts = [x.dense[i] for x in got]
            dense.append(None if all(x is None for x in parts) else
                         torch.stack([torch.zeros(c, p.numel(), dtype=p.dtype, device=p.device) if x is None else x
                                      for x in parts] + [torch.zeros(c, p.numel(), dtype=p.dtype, device=p.device)]
                                     * (TILE - len(parts)), 1))
    tables = []
    for t in range(len(layout.tables)):
        rows = [(ids, torch.full_like(ids, s), values.transpose(0, 1))
                for s, (ids, values) in enumerate(r for cap in got for r in cap.tables[t])]
        tables.append(tuple(torch.cat(part) for part in zip(*rows)))
    return Tile(index, slots_of(index, lo, hi), logits, dense, factored, tables)


def with_slots(tile: Tile, lo: int, hi: int) -> Tile:
    """``tile`` (the same Jacobians) with the slots of the range ``lo..hi-1``."""
    return replace(tile, slots=slots_of(tile.index, lo, hi))


def slots_of(index: int, lo: int, hi: int) -> Tensor:
    """``[TILE]``: the global example indices of tile ``index``'s slots, -1 outside ``lo..hi-1``."""
    slots = torch.arange(TILE * index, TILE * (index + 1))
    return torch.where((slots >= lo) & (slots < hi), slots, -1)
