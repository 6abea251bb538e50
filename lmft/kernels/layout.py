"""Which tensors of a model get their per-example Jacobians how, for the tiled kernel (:mod:`lmft.kernels.tile_jacobians`).

A :class:`Layout` sorts a model's trainable tensors into embedding tables (kept as rows), factored
weights (kept as input and output-gradient factors) and dense tensors, with the module rule that
reads each one's per-example gradient (:mod:`lmft.kernels.capture`); ``TILE`` and ``SLICE`` fix the
tiled contraction's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from lmft.io import LmftError
from lmft.kernels.jacobians import trainable

TILE = 8  # examples per side of a tile of the tiled contraction, on a grid fixed by the global example index
SLICE = 1 << 15  # dense coordinates per float64 slice of the tiled contraction (measured best of 2^13..2^17)
# Normalisation layers whose output is w * n(x) (+ b) with n(x) the output at w = 1, b = 0.
NORMS = (nn.LayerNorm, nn.RMSNorm)
NORM_NAMES = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "T5LayerNorm"})


class NotSeparable(Exception):
    """A batched pass cannot give this model's per-example gradients (see the module docstring)."""


@dataclass
class Table:
    """An embedding table of the tiled path, kept as rows: its ``nn.Embedding`` modules (``lookups``)
    and the ``nn.Linear`` modules that use it as their weight (``decoders``, a tied MLM/LM decoder)."""

    weight: Tensor
    lookups: list[nn.Embedding]
    decoders: list[nn.Linear]


@dataclass
class Layout:
    """How the tiled path splits a model's trainable tensors: ``dense`` ones, materialised per example;
    ``factored`` 2-D weights, kept as their module's input and output gradient; ``tables`` kept as
    rows; ``order``: the dense and factored tensors in ``named_parameters`` order. ``slices`` cut the
    dense tensors, flattened one after the other, into slices of at most ``SLICE`` coordinates: per
    slice, its pieces ``(tensor index, start, stop)``; ``fslices`` the factored ones likewise.
    ``rules``: id of each dense or factored tensor -> (``linear``, ``conv1d``, ``norm``, ``bias`` or
    ``decoder``, module); ``batched``: whether every such tensor has one (tiles in one batched pass)
    or not (one example at a time, no factored tensors). ``width``: the longest example of the
    kernel, which decided the factored tensors."""

    dense: list[Tensor]
    factored: list[Tensor]
    tables: list[Table]
    rules: dict[int, tuple[str, nn.Module]]
    batched: bool
    width: int
    order: list[Tensor]
    slices: list[list[tuple[int, int, int]]] = field(init=False)
    fslices: list[list[tuple[int, int, int]]] = field(init=False)

    def __post_init__(self) -> None:
        self.slices, self.fslices = _slice(self.dense), _slice(self.factored)
        self._factored = {id(p) for p in self.factored}

    def example_bytes(self, p: Tensor, logits: int) -> int:
        """Bytes one example's Jacobian of ``p`` holds for ``logits`` logits (factors at ``width`` tokens)."""
        if id(p) in self._factored:
            d_out, d_in = factor_dims(self.rules[id(p)][0], p)
            return self.width * (d_in + logits * d_out) * p.element_size()
        return p.numel() * logits * p.element_size()


def factor_dims(kind: str, p: Tensor) -> tuple[int, int]:
    """(output gradient width, input width) of a factored weight: Linear ``[out, in]``, Conv1D ``[in, out]``."""
    return (p.shape[0], p.shape[1]) if kind == "linear" else (p.shape[1], p.shape[0])


def is_norm(m: nn.Module) -> bool:
    return isinstance(m, NORMS) or type(m).__name__ in NORM_NAMES


def _rules(model: nn.Module, tables: Sequence[Table]) -> dict[int, tuple[str, nn.Module]]:
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
        elif is_norm(m):
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
    tables: dict[int, Table] = {}
    for module in model.modules():
        # max_norm renormalises rows in the forward, scale_grad_by_freq rescales the gradient: those stay dense
        if (isinstance(module, nn.Embedding) and module.weight.requires_grad and module.max_norm is None
                and not module.scale_grad_by_freq):
            tables.setdefault(id(module.weight), Table(module.weight, [], [])).lookups.append(module)
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
    chosen = {id(p) for p in factored}
    dense = [p for p in rest if id(p) not in chosen]
    return Layout(dense, factored, table_list, rules if batched else {}, batched, width, rest)


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
    for p in layout.order:
        need = layout.example_bytes(p, logits)
        if need > room:
            raise LmftError(f"a tensor whose Jacobian takes {need} bytes per example does not fit a block of {room}")
        if size + need > room:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += need
    factored = {id(p) for p in layout.factored}
    return [Layout([p for p in g if id(p) not in factored], [p for p in g if id(p) in factored],
                   layout.tables if b == 0 else [], layout.rules, layout.batched, layout.width, g)
            for b, g in enumerate(groups)]
