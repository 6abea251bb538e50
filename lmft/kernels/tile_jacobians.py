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
0.4 GB (106M coordinates; the 28M of the embedding table are rows), its factors at 32 tokens 35 MB.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from transformers.pytorch_utils import Conv1D

from lmft.io import LmftError
from lmft.kernels.jacobians import Batch, binary_logit, device_of, forward_logits, take, trainable

TILE = 8  # examples per side of a tile of the tiled contraction, on a grid fixed by the global example index
SLICE = 1 << 15  # dense coordinates per float64 slice of the tiled contraction (measured best of 2^13..2^17)
# Normalisation layers whose output is w * n(x) (+ b) with n(x) the output at w = 1, b = 0.
NORMS = (nn.LayerNorm, nn.RMSNorm)
NORM_NAMES = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "T5LayerNorm"})


class NotSeparable(Exception):
    """A batched pass cannot give this model's per-example gradients (see the module docstring)."""


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
    ones, materialised per example; ``factored`` 2-D weights, kept as their module's input and output
    gradient; ``tables`` kept as rows. ``slices`` cut the dense tensors, flattened one after the
    other, into slices of at most ``SLICE`` coordinates: per slice, its pieces ``(tensor index, start,
    stop)``; ``fslices`` the factored ones likewise. ``rules``: id of each dense or factored tensor ->
    (``linear``, ``conv1d``, ``norm``, ``bias`` or ``decoder``, module); ``batched``: whether every
    such tensor has one (tiles in one batched pass) or not (one example at a time, no factored
    tensors). ``width``: the longest example of the kernel, which decided the factored tensors."""

    dense: list[Tensor]
    factored: list[Tensor]
    tables: list[_Table]
    rules: dict[int, tuple[str, nn.Module]]
    batched: bool
    width: int
    slices: list[list[tuple[int, int, int]]] = field(init=False)
    fslices: list[list[tuple[int, int, int]]] = field(init=False)

    def __post_init__(self) -> None:
        self.slices, self.fslices = _slice(self.dense), _slice(self.factored)

    def tensors(self) -> list[Tensor]:
        """The dense and factored tensors, in ``named_parameters`` order."""
        mine = {id(p) for p in self.dense + self.factored}
        return [p for p in self._order if id(p) in mine]

    def example_bytes(self, p: Tensor, logits: int) -> int:
        """Bytes one example's Jacobian of ``p`` holds for ``logits`` logits (factors at ``width`` tokens)."""
        if any(p is q for q in self.factored):
            d_out, d_in = _factor_dims(self.rules[id(p)][0], p)
            return self.width * (d_in + logits * d_out) * p.element_size()
        return p.numel() * logits * p.element_size()

    _order: list[Tensor] = field(default_factory=list, repr=False)


def _factor_dims(kind: str, p: Tensor) -> tuple[int, int]:
    """(output gradient width, input width) of a factored weight: Linear ``[out, in]``, Conv1D ``[in, out]``."""
    return (p.shape[0], p.shape[1]) if kind == "linear" else (p.shape[1], p.shape[0])


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, NORMS) or type(m).__name__ in NORM_NAMES


def _rules(model: nn.Module, tables: Sequence[_Table]) -> dict[int, tuple[str, nn.Module]]:
    """id(param) -> (rule, module) for each trainable parameter exactly one covered module owns."""
    decoders = {id(m) for t in tables for m in t.decoders}
    claims: dict[int, list[tuple[str, nn.Module]]] = {}
    for m in model.modules():
        if id(m) in decoders:
            own = {"bias": "decoder"}
        elif isinstance(m, nn.Linear):
            own = {"weight": "linear", "bias": "bias"}
        elif isinstance(m, Conv1D):
            own = {"weight": "conv1d", "bias": "bias"}
        elif _is_norm(m):
            own = {"weight": "norm", "bias": "bias"}
        else:
            continue
        for name, kind in own.items():
            p = m._parameters.get(name)
            if p is not None and p.requires_grad:
                claims.setdefault(id(p), []).append((kind, m))
    return {k: v[0] for k, v in claims.items() if len(v) == 1}


def layout_of(model: nn.Module, width: int, batched: bool = True) -> Layout:
    """The layout of ``model``'s trainable tensors for a kernel whose longest example has ``width``
    tokens; ``batched`` False: one example at a time, every non-table tensor dense."""
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
    table_list = [tables[id(p)] for p in params.values() if id(p) in tables]
    rest = [p for p in params.values() if id(p) not in tables]
    rules = _rules(model, table_list)
    batched = batched and all(id(p) in rules for p in rest)
    factored = []
    if batched:
        for p in rest:
            kind = rules[id(p)][0]
            if kind in ("linear", "conv1d") and width * sum(p.shape) < p.numel():
                factored.append(p)
    dense = [p for p in rest if not any(p is q for q in factored)]
    return Layout(dense, factored, table_list, rules if batched else {}, batched, width, _order=list(rest))


def _slice(dense: Sequence[Tensor]) -> list[list[tuple[int, int, int]]]:
    """:attr:`Layout.slices` of the tensors ``dense``."""
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


def dense_blocks(layout: Layout, room: int | None, logits: int) -> list[Layout]:
    """Cut ``layout`` into blocks of whole tensors (dense and factored, consecutive in
    ``named_parameters`` order) whose Jacobians of one example take at most ``room`` bytes together
    (None: one block); the tables go with the first block."""
    if room is None:
        return [layout]
    groups: list[list[Tensor]] = [[]]
    size = 0
    for p in layout.tensors():
        need = layout.example_bytes(p, logits)
        if need > room:
            raise LmftError(f"a tensor whose Jacobian takes {need} bytes per example does not fit a block of {room}")
        if size + need > room:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += need
    return [Layout([p for p in g if any(p is q for q in layout.dense)], [p for p in g if any(p is q for q in layout.factored)],
                   layout.tables if b == 0 else [], layout.rules, layout.batched, layout.width, _order=g)
            for b, g in enumerate(groups)]


@dataclass
class Factors:
    """Factored weights of a tile that share one input: ``x`` ``[L, d_in]``, the input at the L token
    positions of the tile's examples (``slot`` ``[L]``: whose), and ``g`` ``[C, L, sum d_out]``, the
    weights' output gradients there side by side, ``members`` ``(factored tensor index, offset, d_out)``."""

    x: Tensor
    g: Tensor
    slot: Tensor
    members: list[tuple[int, int, int]]


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
    """

    index: int
    slots: Tensor
    num_logits: int
    dense: list[Tensor | None]
    factored: list[Factors]
    tables: list[tuple[Tensor, Tensor, Tensor]]

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
        got = [_capture(model, layout, part, width, binary, True)]
    else:  # one example at a time, each at its own length
        got = []
        for g in members.tolist():
            part = take(batch, torch.tensor([g]))
            got.append(_capture(model, layout, part, int(part["attention_mask"][0].nonzero().max()) + 1, binary, False))
    c = got[0].logits
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
    return Tile(index, slots_of(index, lo, hi), c, dense, factored, tables)


def with_slots(tile: Tile, lo: int, hi: int) -> Tile:
    """``tile`` (the same Jacobians) with the slots of the range ``lo..hi-1``."""
    return replace(tile, slots=slots_of(tile.index, lo, hi))


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


class _Tap(torch.autograd.Function):
    """The identity on a module's output; its backward appends the output's gradient to ``grads``.
    ``anchor`` is an empty leaf: asking autograd for the anchors' gradients runs every tap's backward
    and nothing that only parameter gradients need."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, anchor: Tensor, grads: list) -> Tensor:
        ctx.grads = grads
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        ctx.grads.append(g)
        return g, None, None


@dataclass
class _Call:
    """One call of a covered module in a batched pass: its input ``x`` ``[B, *, d]``, ``n(x)`` of a
    norm, and per logit the output gradient (None where the logit does not reach it)."""

    x: Tensor
    normed: Tensor | None
    grads: list[Tensor | None]


@dataclass
class _Captured:
    """What one pass of ``size`` examples gave: ``dense[i]``, ``[C, TILE, numel]`` (batched) or ``[C, numel]``
    (one example), or None, the factored tensors (batched only), and per table per example ``(ids, values [C, k, H])``."""

    size: int
    logits: int
    dense: list[Tensor | None]
    factored: list[Factors]
    tables: list[list[tuple[Tensor, Tensor]]]


@contextlib.contextmanager
def _hooked(model: nn.Module, layout: Layout, batched: bool, size: int) -> Iterator[tuple[dict, list, list, list]]:
    """The model with its tables cut out (lookup outputs as leaves, tied decoders as :class:`_Decode`)
    and, ``batched``, the modules of the layout's rules tapped. Yields ``(calls: id(module) -> [_Call],
    anchors, lookups: per table [(ids, leaf)], decoded: per table [(input, output grad)])``."""
    calls: dict[int, list[_Call]] = {}
    anchors: list[Tensor] = []
    lookups: list[list[tuple[Tensor, Tensor]]] = [[] for _ in layout.tables]
    decoded: list[list[tuple[Tensor, Tensor]]] = [[] for _ in layout.tables]
    inside = [False]  # set while a norm's n(x) is computed through the module itself

    def cut(t: int) -> Callable[..., Tensor]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
            ids = args[0] if args else kwargs["input"]
            if out.shape[0] != size:  # e.g. position ids [1, L] broadcast over the batch
                if out.shape[0] != 1:
                    raise NotSeparable
                out, ids = out.expand(size, *out.shape[1:]), ids.expand(size, *ids.shape[1:])
            leaf = out.detach().clone(memory_format=torch.contiguous_format).requires_grad_()
            lookups[t].append((ids, leaf))
            return leaf
        return hook

    def tap(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        if inside[0]:
            return None
        x = args[0]
        if x.shape[0] != size or out.shape[0] != size:
            raise NotSeparable
        normed = None
        if _is_norm(module):
            inside[0] = True
            try:
                with torch.no_grad():
                    unit = {k: torch.ones_like(v) if k == "weight" else torch.zeros_like(v)
                            for k, v in module.named_parameters(recurse=False)}
                    normed = functional_call(module, unit, (x,))
            finally:
                inside[0] = False
        call = _Call(x.detach(), normed, [])
        calls.setdefault(id(module), []).append(call)
        anchors.append(torch.zeros(0, device=out.device, requires_grad=True))
        return _Tap.apply(out, anchors[-1], call.grads)

    def decode(module: nn.Linear, record: list) -> Callable[[Tensor], Tensor]:
        return lambda u: _Decode.apply(u, module.weight.detach(), module.bias, record)

    handles = [m.register_forward_hook(cut(t), with_kwargs=True)
               for t, table in enumerate(layout.tables) for m in table.lookups]
    if batched:
        # a tied decoder's bias comes from its _Decode records where the block holds the table
        swapped = {id(m) for table in layout.tables for m in table.decoders}
        modules = {id(m): m for p in layout.dense + layout.factored for _, m in [layout.rules[id(p)]]
                   if id(m) not in swapped}
        handles += [m.register_forward_hook(tap) for m in modules.values()]
    decoders = [m for table in layout.tables for m in table.decoders]
    for t, table in enumerate(layout.tables):
        for m in table.decoders:
            m.forward = decode(m, decoded[t])  # an instance attribute, deleted below
    try:
        yield calls, anchors, lookups, decoded
    finally:
        for h in handles:
            h.remove()
        for m in decoders:
            del m.forward


def _capture(model: nn.Module, layout: Layout, part: Mapping[str, Tensor | None], width: int, binary: bool,
             batched: bool) -> _Captured:
    """The Jacobians of the examples of ``part``, trimmed to ``width`` tokens, from one forward and one
    backward per logit. ``batched``: all examples in one pass, per-example gradients from the
    layout's rules; else one example (B = 1), the dense tensors' gradients asked of autograd."""
    device = device_of(model)
    size = part["input_ids"].shape[0]
    with _hooked(model, layout, batched, size) as (calls, anchors, lookups, decoded):
        with torch.enable_grad():
            y = forward_logits(model, part, width, device)
            y = binary_logit(y) if binary else y
    c = y.shape[1]
    leaves = [leaf for looked in lookups for _, leaf in looked]
    weights = [table.weight for table in layout.tables]
    asked = anchors if batched else layout.dense
    dense_grads: list[tuple[Tensor | None, ...]] = []
    weight_grads: list[tuple[Tensor | None, ...]] = []  # per logit, per table
    leaf_grads: list[tuple[Tensor | None, ...]] = []
    decoder_grads: list[list[list[tuple[Tensor, Tensor]]]] = []
    for a in range(c):
        grads = torch.autograd.grad(y[:, a].sum(), asked + weights + leaves, retain_graph=a + 1 < c, allow_unused=True)
        dense_grads.append(grads[:len(asked)])
        weight_grads.append(grads[len(asked):len(asked) + len(weights)])
        leaf_grads.append(grads[len(asked) + len(weights):])
        decoder_grads.append([list(record) for record in decoded])  # what this backward recorded
        for record in decoded:
            record.clear()
        for mine in calls.values():
            for call in mine:
                if len(call.grads) == a:  # the logit did not reach this call
                    call.grads.append(None)
    if batched and any(g is not None for per in weight_grads for g in per):
        raise NotSeparable  # a table read otherwise than by its lookups and tied decoders: a sum over the batch
    if batched:
        dense = [_per_example(layout, p, calls, size, c, decoded_grads=decoder_grads, table_of=_table_index(layout, p))
                 for p in layout.dense]
        factored = _factors(layout, calls, part["attention_mask"][:, :width].bool(), c)
    else:
        dense = [None if all(g[i] is None for g in dense_grads) else
                 torch.stack([torch.zeros_like(p) if g[i] is None else g[i] for g in dense_grads]).reshape(c, -1)
                 for i, p in enumerate(layout.dense)]
        factored = []
    tables = []
    first = 0
    for t, table in enumerate(layout.tables):
        stop = first + len(lookups[t])
        per_example = []
        for b in range(size):
            per_example.append(_table_rows(
                table, [g[t] for g in weight_grads],
                [[(ids[b], None if lg is None else lg[b]) for (ids, _), lg in zip(lookups[t], g[first:stop])]
                 for g in leaf_grads],
                [[(u[b], None if dg is None else dg[b]) for u, dg in d[t]] for d in decoder_grads]))
        tables.append(per_example)
        first = stop
    return _Captured(size, c, dense, factored, tables)


def _table_index(layout: Layout, p: Tensor) -> int | None:
    """The table whose tied decoder's bias ``p`` is, where this block holds the table and so decodes with
    :class:`_Decode` (None for other tensors)."""
    kind, module = layout.rules[id(p)]
    if kind != "decoder":
        return None
    return next((t for t, table in enumerate(layout.tables) if any(module is m for m in table.decoders)), None)


def _per_example(layout: Layout, p: Tensor, calls: Mapping[int, list[_Call]], size: int, c: int,
                 decoded_grads: list[list[list[tuple[Tensor, Tensor]]]], table_of: int | None) -> Tensor | None:
    """``[C, TILE, numel]``: the per-example gradients of dense tensor ``p`` from its module's calls, for
    the first ``size`` slots (None where all are zero)."""
    kind, module = layout.rules[id(p)]
    out = None
    for a in range(c):
        if table_of is not None:  # the bias of a tied decoder: its output gradient summed over positions
            records = [(None, g) for _, g in decoded_grads[a][table_of]]
        else:
            records = [(call, call.grads[a]) for call in calls.get(id(module), [])]
        for call, g in records:
            if g is None:
                continue
            if out is None:
                out = torch.zeros(c, TILE, p.numel(), dtype=p.dtype, device=p.device)
            positions = tuple(range(1, g.dim() - 1))  # summed without a copy of a non-contiguous g
            if kind in ("bias", "decoder"):
                out[a, :size] += g.sum(positions) if positions else g
            elif kind == "norm":
                out[a, :size] += (g * call.normed).sum(positions).reshape(size, -1) if positions else \
                    (g * call.normed).reshape(size, -1)
            else:
                x = call.x.reshape(size, -1, call.x.shape[-1])
                g = g.reshape(size, -1, g.shape[-1])
                j = g.transpose(1, 2) @ x if kind == "linear" else x.transpose(1, 2) @ g
                out[a, :size] += j.reshape(size, -1)
    return out


def _factors(layout: Layout, calls: Mapping[int, list[_Call]], mask: Tensor, c: int) -> list[Factors]:
    """The factored tensors in groups by shared input, over the token positions their modules saw that
    are the examples' own (``mask`` ``[B, W]``; an input of another length, e.g. the states at
    ``mask_pos``, keeps all of its rows), example by example, several calls of a module one after the
    other. A position outside an example's attention mask gets an exactly zero output gradient:
    dropping it changes nothing."""
    size, width = mask.shape
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(layout.factored):
        mine = calls.get(id(layout.rules[id(p)][1]), [])
        key = tuple((m.x.data_ptr(), tuple(m.x.shape), m.x.stride()) for m in mine) or ("not called", i)
        groups.setdefault(key, []).append(i)
    out = []
    for members in groups.values():
        dims = [_factor_dims(layout.rules[id(layout.factored[i])][0], layout.factored[i]) for i in members]
        first = layout.factored[members[0]]
        d_in = dims[0][1]
        mine = calls.get(id(layout.rules[id(first)][1]), [])
        if not mine:  # not called: a zero Jacobian
            mine = [_Call(torch.zeros(size, 1, d_in, dtype=first.dtype, device=first.device), None, [None] * c)]
        keeps = []  # per call: the (example, position) indices of the kept rows of its [B, T, d] input
        for m in mine:
            t = m.x.reshape(size, -1, d_in).shape[1]
            keep = mask if t == width else torch.ones(size, t, dtype=torch.bool)
            keeps.append(tuple(k.to(m.x.device) for k in keep.nonzero(as_tuple=True)))
        x = torch.cat([m.x.reshape(size, -1, d_in)[keep] for m, keep in zip(mine, keeps)])
        slot = torch.cat([keep[0] for keep in keeps])
        g = x.new_empty(c, x.shape[0], sum(d_out for d_out, _ in dims))
        offset, placed = 0, []
        for i, (d_out, _) in zip(members, dims):
            calls_i = calls.get(id(layout.rules[id(layout.factored[i])][1]), [])
            for a in range(c):
                start = 0
                for k, keep in enumerate(keeps):
                    n = keep[0].numel()
                    grad = calls_i[k].grads[a] if calls_i else None
                    g[a, start:start + n, offset:offset + d_out] = 0 if grad is None else \
                        grad.reshape(size, -1, d_out)[keep]
                    start += n
            placed.append((i, offset, d_out))
            offset += d_out
        out.append(Factors(x, g, slot, placed))
    return out


def _table_rows(table: _Table, weight_grads: list[Tensor | None],
                lookups: list[list[tuple[Tensor, Tensor | None]]],
                decoders: list[list[tuple[Tensor, Tensor | None]]]) -> tuple[Tensor, Tensor]:
    """One example's Jacobian rows of a table that can be nonzero, ``(ids [k] ascending, values [C, k, H]
    float64)``, per logit from the gradient that reached the weight (``[V, H]`` or None), the lookups'
    ``(ids, gradient [*ids.shape, H] or None)`` and the decoders' ``(input [*, H], output gradient [*, V] or None)``."""
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
