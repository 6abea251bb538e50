"""Per-example Jacobians in tiles: the Jacobians of the tiled path of the kernel contraction (:mod:`lmft.kernels.compute`).

Examples fall into tiles of ``TILE`` on a grid fixed by the global example index. Each example's
Jacobian comes from one forward and one backward per logit, alone at its own length; embedding
tables (``nn.Embedding`` weights, with their tied decoders) are cut out of the graph and kept as
the rows the example touches (its tokens, positions and the decoder's label words), the other
tensors as dense gradients (:class:`Layout`). At SmolLM2-135M's size the dense Jacobian of one
example and logit is 0.4 GB (106M coordinates; the 28M of the embedding table are rows).
:mod:`lmft.kernels.tiled` contracts the tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmft.io import LmftError
from lmft.kernels.jacobians import Batch, binary_logit, device_of, forward_logits, take, trainable

TILE = 8  # examples per side of a tile of the tiled contraction, on a grid fixed by the global example index
SLICE = 1 << 15  # dense coordinates per float64 slice of the tiled contraction (measured best of 2^13..2^17)


@dataclass
class _Table:
    """An embedding table of the tiled path, kept as rows: its ``nn.Embedding`` modules (``lookups``)
    and the ``nn.Linear`` modules that use it as their weight (``decoders``, a tied MLM/LM decoder)."""

    weight: Tensor
    lookups: list[nn.Embedding]
    decoders: list[nn.Linear]


@dataclass
class Layout:
    """How the tiled path splits a model's trainable tensors (``named_parameters`` order): ``dense``
    ones, and ``tables`` kept as rows. ``slices`` cut the dense tensors, flattened one after the
    other, into slices of at most ``SLICE`` coordinates: per slice, its pieces ``(tensor index, start, stop)``."""

    dense: list[Tensor]
    tables: list[_Table]
    slices: list[list[tuple[int, int, int]]]


def layout_of(model: nn.Module) -> Layout:
    params = trainable(model)
    tables: dict[int, _Table] = {}
    for module in model.modules():
        # max_norm renormalises rows in the forward, scale_grad_by_freq rescales the gradient: those stay dense
        if (isinstance(module, nn.Embedding) and module.weight.requires_grad and module.max_norm is None
                and not module.scale_grad_by_freq):
            tables.setdefault(id(module.weight), _Table(module.weight, [], [])).lookups.append(module)
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) in tables:
            tables[id(module.weight)].decoders.append(module)
    dense = [p for p in params.values() if id(p) not in tables]
    return Layout(dense, [tables[id(p)] for p in params.values() if id(p) in tables], _slice(dense))


def _slice(dense: Sequence[Tensor]) -> list[list[tuple[int, int, int]]]:
    """:attr:`Layout.slices` of the dense tensors ``dense``."""
    slices: list[list[tuple[int, int, int]]] = [[]]
    room = SLICE
    for i, p in enumerate(dense):
        start = 0
        while start < p.numel():
            if room == 0:
                slices.append([])
                room = SLICE
            stop = min(p.numel(), start + room)
            slices[-1].append((i, start, stop))
            room -= stop - start
            start = stop
    return [piece for piece in slices if piece]


def dense_blocks(layout: Layout, coords: int | None) -> list[Layout]:
    """Cut ``layout`` into blocks of whole dense tensors of at most ``coords`` coordinates together
    (None: one block), consecutive in ``named_parameters`` order; the tables go with the first block."""
    if coords is None:
        return [layout]
    groups: list[list[Tensor]] = [[]]
    size = 0
    for p in layout.dense:
        if p.numel() > coords:
            raise LmftError(f"a dense tensor of {p.numel()} coordinates does not fit a block of {coords}")
        if size + p.numel() > coords:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += p.numel()
    return [Layout(g, layout.tables if b == 0 else [], _slice(g)) for b, g in enumerate(groups)]


@dataclass
class Tile:
    """The Jacobians of tile ``index`` of the global grid, examples ``TILE * index + s`` for slots ``s < TILE``.

    ``slots`` [TILE]: each slot's global example index, -1 for a slot outside the shard (its
    Jacobians are zero). ``dense[s][a]``: slot s's gradients of logit a, one per dense tensor (None
    where zero), as the backward pass gave them (None for a slot outside the shard): a copy into one
    ``[TILE, C, P]`` tensor would cost as much memory traffic as the contraction's staging. ``tables``:
    per table, ``(ids [K], owner [K], values [K, C, H] float64)``, the rows of every slot's Jacobian
    that can be nonzero, slot by slot (``owner``), ascending ids within a slot.
    """

    index: int
    slots: Tensor
    dense: list[list[list[Tensor | None]] | None]
    tables: list[tuple[Tensor, Tensor, Tensor]]

    @property
    def num_logits(self) -> int:
        return next(len(d) for d in self.dense if d is not None)


def tile_jacobians(model: nn.Module, layout: Layout, batch: Batch, index: int, lo: int, hi: int,
                    binary: bool) -> Tile:
    """Tile ``index`` with the examples of ``lo..hi-1`` that fall into it, each computed alone at its own length."""
    slots = slots_of(index, lo, hi)
    dense: list[list[list[Tensor | None]] | None] = [None] * TILE
    rows: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in layout.tables]
    for s, g in enumerate(slots.tolist()):
        if g >= 0:
            dense[s], tables = _example_jacobian(model, layout, take(batch, torch.tensor([g])), binary)
            for t, (ids, values) in enumerate(tables):
                rows[t].append((ids, torch.full_like(ids, s), values.transpose(0, 1)))
    return Tile(index, slots, dense, [tuple(torch.cat(part) for part in zip(*r)) for r in rows])


class _Decode(torch.autograd.Function):
    """A tied decoder ``u @ W.T + b`` ([*, H] -> [*, V]) with W held constant. Its backward hands on
    ``g @ W`` over the columns where the output gradient g is nonzero only (a few label words:
    the full product would read all of W per logit), and records ``(u, g)`` in ``record``."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, weight: Tensor, bias: Tensor | None, record: list) -> Tensor:
        ctx.save_for_backward(u, weight)
        ctx.record = record
        ctx.has_bias = bias is not None
        return F.linear(u, weight, bias)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, Tensor | None, None]:
        u, weight = ctx.saved_tensors
        ctx.record.append((u.detach(), g))
        hit = g.reshape(-1, g.shape[-1]).any(0).nonzero().flatten()
        grad_u = g[..., hit] @ weight[hit] if ctx.needs_input_grad[0] else None
        grad_b = g.reshape(-1, g.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_u, None, grad_b, None


def _example_jacobian(model: nn.Module, layout: Layout, part: Mapping[str, Tensor | None], binary: bool
                      ) -> tuple[list[list[Tensor | None]], list[tuple[Tensor, Tensor]]]:
    """One example's Jacobian: per logit, the gradients of the dense tensors (None where unused), and
    per table the rows that can be nonzero, ``(ids [k] ascending, values [C, k, H] float64)``.

    One forward, then one backward per logit (batching the C backward passes with
    ``is_grads_batched`` was slower on the CPU). The tables are cut out of the graph, so that no
    backward pass writes a dense ``[V, H]`` gradient: a forward hook hands on each lookup's output
    as a leaf, whose gradient the rows of its tokens gather; each tied decoder runs as
    :class:`_Decode` for the pass (its ``forward`` swapped), whose output gradient ``g`` [n, V] gives
    the rows ``g.T @ input`` of its nonzero columns. What else reads a table still reaches its
    weight, and that gradient's nonzero rows join.
    """
    device = device_of(model)
    width = int(part["attention_mask"][0].nonzero().max()) + 1
    lookups: list[list[tuple[Tensor, Tensor]]] = [[] for _ in layout.tables]  # per table: (ids, output leaf)
    decoded: list[list[tuple[Tensor, Tensor]]] = [[] for _ in layout.tables]  # per table: (input, output grad)

    def cut(t: int) -> Callable[..., Tensor]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
            leaf = out.detach().requires_grad_()
            lookups[t].append((args[0] if args else kwargs["input"], leaf))
            return leaf
        return hook

    def decode(module: nn.Linear, record: list) -> Callable[[Tensor], Tensor]:
        return lambda u: _Decode.apply(u, module.weight.detach(), module.bias, record)

    handles = [m.register_forward_hook(cut(t), with_kwargs=True)
               for t, table in enumerate(layout.tables) for m in table.lookups]
    decoders = [m for table in layout.tables for m in table.decoders]
    for t, table in enumerate(layout.tables):
        for m in table.decoders:
            m.forward = decode(m, decoded[t])  # an instance attribute, deleted below
    try:
        with torch.enable_grad():
            y = forward_logits(model, part, width, device)[0]
            y = binary_logit(y) if binary else y
    finally:
        for h in handles:
            h.remove()
        for m in decoders:
            del m.forward
    leaves = [leaf for looked in lookups for _, leaf in looked]
    c, d, w = y.shape[0], len(layout.dense), len(layout.tables)
    inputs = layout.dense + [table.weight for table in layout.tables] + leaves
    dense: list[list[Tensor | None]] = []
    weight_grads, leaf_grads, decoder_grads = [], [], []  # per logit
    for a in range(c):
        grads = torch.autograd.grad(y[a], inputs, retain_graph=a + 1 < c, allow_unused=True)
        dense.append([None if g is None else g.reshape(-1) for g in grads[:d]])
        weight_grads.append(grads[d:d + w])
        leaf_grads.append(grads[d + w:])
        decoder_grads.append([list(record) for record in decoded])  # what this backward recorded
        for record in decoded:
            record.clear()
    tables, first = [], 0
    for t, table in enumerate(layout.tables):
        stop = first + len(lookups[t])
        tables.append(_table_rows(table, [g[t] for g in weight_grads],
                                  [list(zip((ids for ids, _ in lookups[t]), g[first:stop])) for g in leaf_grads],
                                  [g[t] for g in decoder_grads]))
        first = stop
    return dense, tables


def _table_rows(table: _Table, weight_grads: list[Tensor | None],
                lookups: list[list[tuple[Tensor, Tensor | None]]],
                decoders: list[list[tuple[Tensor, Tensor | None]]]) -> tuple[Tensor, Tensor]:
    """A table's Jacobian rows that can be nonzero, ``(ids [k] ascending, values [C, k, H] float64)``, per
    logit from the gradient that reached the weight (``[V, H]`` or None), the lookups' ``(ids,
    gradient [*ids.shape, H] or None)`` and the decoders' ``(input [*, H], output gradient [*, V] or None)``."""
    h = table.weight.shape[1]
    pad = table.lookups[0].padding_idx if table.lookups else None
    parts: list[list[tuple[Tensor, Tensor]]] = []  # per logit: (row ids [n], rows [n, H] float64)
    for g_w, looked, decoded in zip(weight_grads, lookups, decoders):
        mine = []
        for ids, g in looked:
            if g is not None:
                ids, g = ids.flatten(), g.reshape(-1, h)
                if pad is not None:  # the padding row gets no gradient from a lookup
                    ids, g = ids[ids != pad], g[ids != pad]
                mine.append((ids, g.double()))
        for u, g in decoded:
            if g is not None:
                g = g.reshape(-1, g.shape[-1])
                hit = g.any(0).nonzero().flatten()
                mine.append((hit, g[:, hit].double().T @ u.reshape(-1, h).double()))
        if g_w is not None:
            hit = g_w.any(1).nonzero().flatten()
            mine.append((hit, g_w[hit].double()))
        parts.append(mine)
    ids = [i for mine in parts for i, _ in mine]
    rows = torch.unique(torch.cat(ids)) if ids else torch.zeros(0, dtype=torch.long, device=table.weight.device)
    values = torch.zeros(len(parts), rows.numel(), h, dtype=torch.float64, device=table.weight.device)
    for a, mine in enumerate(parts):
        for i, v in mine:
            values[a].index_add_(0, torch.searchsorted(rows, i), v)
    return rows, values

def slots_of(index: int, lo: int, hi: int) -> Tensor:
    """``[TILE]``: the global example indices of tile ``index``'s slots, -1 outside ``lo..hi-1``."""
    slots = torch.arange(TILE * index, TILE * (index + 1))
    return torch.where((slots >= lo) & (slots < hi), slots, -1)
