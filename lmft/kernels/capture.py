"""One batched forward and backward pass of a tile's examples with hooks that read off per-example
parameter gradients (:mod:`lmft.kernels.tile_jacobians`; the rules per module are in its docstring).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lmft.kernels.jacobians import binary_logit, device_of, forward_logits
from lmft.kernels.layout import TILE, Layout, NotSeparable, Table, factor_dims, is_norm


@dataclass
class Factors:
    """Factored weights of a tile that share one input: ``x`` ``[L, d_in]``, the input at the L token
    positions of the tile's examples (``slot`` ``[L]``: whose), and ``g`` ``[C, L, sum d_out]``, the
    weights' output gradients there side by side, ``members`` ``(factored tensor index, offset, d_out)``."""

    x: Tensor
    g: Tensor
    slot: Tensor
    members: list[tuple[int, int, int]]


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
    """What one pass of ``size`` examples gave: its ``logits`` ``[size, C]`` float64, ``dense[i]``,
    ``[C, TILE, numel]`` (batched) or ``[C, numel]`` (one example), or None, the factored tensors
    (batched only), and per table per example ``(ids, values [C, k, H])``."""

    size: int
    logits: Tensor
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
        if is_norm(module):
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


def capture_tile(model: nn.Module, layout: Layout, part: Mapping[str, Tensor | None], width: int, binary: bool,
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
    return _Captured(size, y.detach().double(), dense, factored, tables)


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
        dims = [factor_dims(layout.rules[id(layout.factored[i])][0], layout.factored[i]) for i in members]
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


def _table_rows(table: Table, weight_grads: list[Tensor | None],
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
