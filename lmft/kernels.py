"""Empirical neural tangent kernels of a Classifier (Malladi et al., ICML 2023).

The kernel view of fine-tuning linearises the C class logits ``f(x)`` of a Classifier around the
pre-trained weights. With ``J_a(x) = d f_a(x) / d theta`` over the trainable parameters
(``requires_grad=True``, in ``named_parameters`` order, model in eval mode so dropout is off),
one kernel entry is, for a training (row) example ``x_i`` and an example ``y_j`` of any split::

    sgd                K[i, a, j, b] = <J_a(x_i), J_b(y_j)>
    signgd             K[i, a, j, b] = <sign J_a(x_i), sign J_b(y_j)>
    asymmetric-signgd  K[0, i, a, j, b] = <sign J_a(x_i), J_b(y_j)>
                       K[1, i, a, j, b] = <J_a(x_i), sign J_b(y_j)>   (the flipped kernel)

so a kernel is ``[N, C, M, C]`` float64 (``[2, N, C, M, C]`` for asymmetric-signgd, stacked as the
paper's released files are). ``binary=True`` replaces the two logits by the one logit
``f_1 - f_0`` (C = 1); the solvers then regress labels +-1.

Computation. A kernel is computed in shards (rows ``[r0, r1)`` x columns ``[c0, c1)``,
:func:`compute_shard`; :func:`compute_shards` makes the shards of several formulas from one pass of
Jacobians) that :func:`merge_shards` assembles. Three methods:

- ``tiled`` (the default). Examples fall into tiles of ``TILE`` on a grid fixed by the global
  example index. Each example's Jacobian comes from one forward and one backward per logit,
  alone at its own length; embedding tables (``nn.Embedding`` weights, with their tied decoders)
  are cut out of the graph and kept as the rows the example touches (its tokens, positions and
  the decoder's label words), the other tensors as dense gradients. A (row tile, column tile)
  pair is contracted with one float64 GEMM ``[TILE*C, w] @ [w, TILE*C]`` per ``SLICE``-wide slice
  of the dense coordinates (slots outside the shard are zero rows), plus, for the tables, the
  products of the rows two examples share. Jacobians are held for blocks of ``row_batch`` rows
  and ``col_batch`` columns rounded up to whole tiles; those of a side that forms one block are
  computed once. A memory budget (``mem_mb``) bounds the dense coordinates held at once: past it,
  the dense tensors go in blocks of whole tensors (:func:`block_coords`), each block a pass of its
  own over every example (forward and backward again, only the block's gradients requested), and
  the blocks' float64 partial kernels are summed. At SmolLM2-135M's size the dense Jacobian of one
  example and logit is 0.4 GB (106M coordinates; the 28M of the embedding table are rows).
- ``vmap`` and ``naive``, the per-pair reference: rows in blocks of ``row_batch`` examples whose
  dense Jacobians are kept while every column block of ``col_batch`` examples is computed and
  contracted against them (column Jacobians are recomputed once per row block). Jacobians come
  from ``torch.func`` (``vmap`` over examples of ``jacrev`` of one example's logits, through
  ``functional_call``) or from one ``torch.autograd.grad`` per (example, logit) (``naive``); the
  contraction multiplies each (row, column) pair on its own (:func:`kernel_blocks`).

vmap and transformers 5.x. Attention masks cannot be batched under ``vmap``: the mask builders of
transformers 5 (``masking_utils``) test ``padding_mask.all()`` to skip the mask, a data-dependent
branch that vmap refuses. With transformers 5.23 this fails for BERT and RoBERTa with eager or
sdpa attention and for GPT-2 and Llama with sdpa; only GPT-2 and Llama with eager attention take a
batched mask. So examples are grouped by identical attention mask, and each group is vmapped with
its mask shared (unbatched) and trimmed of its trailing padding; that works for all four
architectures with eager or sdpa attention (sdpa has no vmap batching rule on the CPU and falls
back to a slow loop, so prefer eager). Trimming trailing padding is exact: padded keys are masked,
and later positions never reach earlier ones in a causal model. Blocks are formed after sorting a
shard's examples by mask, so that equal masks share a vmap call.

``vmap_chunk`` caps the examples of one vmap call. Its default is 1 on the CPU and the whole mask
group on CUDA: on the CPU batching examples buys nothing at realistic sizes (a MiniLM-size BERT
takes as long per example in a vmap of 8 as alone), and it would make the float32 Jacobians depend
on which examples share a call (MKL's GEMM results change with the matrix shape). On a GPU,
batching is the point, and cuBLAS promises no bit-stability across shapes anyway.

Reproducibility. On the CPU the result is bit-identical whatever the shard layout and the batch
sizes: every example's Jacobian is computed alone at its own length, and no entry's rounding
depends on which other examples share a product. ``tiled``: an entry is always produced at the
same place (fixed by its examples' global indices) of GEMMs of the same shapes, and the table
rows of a pair are summed in ascending row id; it runs on one thread, whose count would change
the rounding of MKL's inner-dimension splits and of LayerNorm's backward. ``vmap``/``naive``
(``vmap_chunk=1``), with any thread count: the float64 contraction multiplies each pair of
examples on its own, ``[C, k] @ [k, C]`` over fixed ``CHUNK``-wide slices of each parameter
tensor, summed in a fixed order (a plain ``A @ B.T`` over a block would not do: a BLAS GEMM
rounds an entry by its position in the output).

Gradients that are zero in exact arithmetic but not in floating point, such as those of the
attention key biases (softmax ignores a shift of all scores), are rounding noise whose signs the
sign formulas count, as the paper's code does.

Files. A merged kernel is ``torch.save((kernel, labels))`` exactly as the paper's released
kernels: ``kernel`` float64 ``[N_train, C, N_x, C]`` (``[2, ...]`` for asymmetric-signgd) and
``labels`` the LongTensor ``[N_x]`` of the split's class indices (also when ``binary``, where
the paper's code stored +-1 floats, which :func:`lmft.solvers.load_kernel_set` maps back). The pre-trained logits f0 of a split go to a separate file, as the paper's code does:
``torch.save((f0, labels))`` with ``f0`` float64 ``[N_x, C]`` (:func:`save_logits`).
A shard file is a dict (:func:`save_shard`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.func import functional_call, jacrev, vmap

from lmft.io import ArtifactError, LmftError, PathLike, torch_load, torch_save

log = logging.getLogger(__name__)

FORMULAS = ("sgd", "signgd", "asymmetric-signgd")
METHODS = ("tiled", "vmap", "naive")  # of compute_shards; jacobians takes the last two
CHUNK = 1 << 16  # parameter coordinates per float64 slice of the per-pair contraction
TILE = 8  # examples per side of a tile of the tiled contraction, on a grid fixed by the global example index
SLICE = 1 << 15  # dense coordinates per float64 slice of the tiled contraction (measured best of 2^13..2^17)
BASE_MB = 1024  # of a memory budget: Python, torch, transformers and the float64 staging of the tiled contraction
Batch = Mapping[str, Tensor]


def trainable(model: nn.Module) -> dict[str, Tensor]:
    """The parameters the kernel differentiates: ``requires_grad=True``, in ``named_parameters`` order."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise LmftError(f"{type(model).__name__}: no trainable parameters (requires_grad=True), so no kernel")
    return params


def check_batch(batch: Batch, name: str = "batch") -> int:
    """Check a split given as one batch (``input_ids``, ``attention_mask`` ``[N, L]``, ``mask_pos`` ``[N]``,
    optional ``token_type_ids`` ``[N, L]`` and ``labels`` ``[N]``); return N."""
    for key in ("input_ids", "attention_mask", "mask_pos"):
        if key not in batch:
            raise LmftError(f"{name}: missing {key!r}; a batch has input_ids, attention_mask, token_type_ids, mask_pos")
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["mask_pos"]
    if ids.dim() != 2 or mask.shape != ids.shape:
        raise LmftError(f"{name}: input_ids {tuple(ids.shape)} and attention_mask {tuple(mask.shape)} must be the same [N, L]")
    n, width = ids.shape
    if n == 0:
        raise LmftError(f"{name}: no examples")
    if pos.shape != (n,):
        raise LmftError(f"{name}: mask_pos has shape {tuple(pos.shape)}, expected [{n}]")
    types = batch.get("token_type_ids")
    if types is not None and types.shape != ids.shape:
        raise LmftError(f"{name}: token_type_ids {tuple(types.shape)} differs from input_ids {tuple(ids.shape)}")
    labels = batch.get("labels")
    if labels is not None and labels.shape != (n,):
        raise LmftError(f"{name}: labels has shape {tuple(labels.shape)}, expected [{n}]")
    bad = ((pos < 0) | (pos >= width)).nonzero().flatten()
    if bad.numel() == 0:
        bad = (mask.gather(1, pos[:, None]).flatten() == 0).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise LmftError(f"{name}: example {i} has mask_pos {int(pos[i])} outside its attended tokens")
    return n


def _take(batch: Batch, idx: Tensor) -> dict[str, Tensor | None]:
    return {k: None if batch.get(k) is None else batch[k][idx]
            for k in ("input_ids", "attention_mask", "token_type_ids", "mask_pos")}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off) for the block, then the model's previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _binary(logits: Tensor) -> Tensor:
    """``[..., 2]`` class logits -> ``[..., 1]`` logit difference ``f_1 - f_0``."""
    if logits.shape[-1] != 2:
        raise LmftError(f"binary kernels need a two-class model, this one has {logits.shape[-1]} logits")
    return (logits[..., 1] - logits[..., 0]).unsqueeze(-1)


def _mask_groups(mask: Tensor) -> list[tuple[Tensor, int]]:
    """Indices of examples sharing one attention-mask row, and that mask's length without trailing padding."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(mask.tolist()):
        groups.setdefault(tuple(row), []).append(i)
    out = []
    for row, idx in groups.items():
        nonzero = [k for k, v in enumerate(row) if v]
        out.append((torch.tensor(idx, dtype=torch.long), nonzero[-1] + 1))
    return out


@torch.no_grad()
def logits(model: nn.Module, batch: Batch, *, binary: bool = False, batch_size: int | None = None) -> Tensor:
    """Pre-trained logits f0 ``[N, C]`` float64 (``[N, 1]`` when ``binary``) of a split given as one batch.

    Runs in eval mode in slices of ``batch_size`` examples, each slice trimmed of the padding that
    all its examples share. ``batch_size`` defaults to 1 on the CPU, so that an example's logits
    do not depend on which examples share its forward pass (a GEMM's bits depend on its shape) and
    column shards of any size give the same f0 bit for bit, as the Jacobians do; 32 on CUDA.
    """
    n = check_batch(batch, "logits")
    device = _device(model)
    if batch_size is None:
        batch_size = 1 if device.type == "cpu" else 32
    out = []
    with _eval(model):
        for start in range(0, n, batch_size):
            part = _take(batch, torch.arange(start, min(start + batch_size, n)))
            width = int(part["attention_mask"].any(0).nonzero().max()) + 1
            f = _forward(model, part, width, device)
            out.append((_binary(f) if binary else f).double().cpu())
    return torch.cat(out)


def _forward(model: nn.Module, part: Mapping[str, Tensor | None], width: int, device: torch.device) -> Tensor:
    types = part["token_type_ids"]
    return model(part["input_ids"][:, :width].to(device), part["attention_mask"][:, :width].to(device),
                 token_type_ids=None if types is None else types[:, :width].to(device),
                 mask_pos=part["mask_pos"].to(device))


def jacobians(model: nn.Module, batch: Batch, *, binary: bool = False, method: str = "vmap",
              vmap_chunk: int | None = None) -> list[Tensor]:
    """Per-example Jacobians of the logits w.r.t. the trainable parameters.

    Returns one tensor per trainable parameter (``named_parameters`` order), ``[B, C, *param.shape]``
    in the model's dtype on its device (C = 1 when ``binary``). ``method`` is ``vmap``
    (``torch.func``: vmap over at most ``vmap_chunk`` examples sharing an attention mask, jacrev
    inside; default 1 on the CPU, unlimited on CUDA) or ``naive`` (one ``torch.autograd.grad``
    per example and logit).
    """
    if method not in METHODS[1:]:
        raise LmftError(f"unknown Jacobian method {method!r}; one of {', '.join(METHODS[1:])}")
    if vmap_chunk is not None and vmap_chunk < 1:
        raise LmftError(f"vmap_chunk must be >= 1 (or None for the default), got {vmap_chunk}")
    n = check_batch(batch, "jacobians")
    params = trainable(model)
    device = _device(model)
    if vmap_chunk is None:
        vmap_chunk = 1 if device.type == "cpu" else n
    with _eval(model):
        if method == "naive":
            return _naive_jacobians(model, params, batch, binary)
        return _vmap_jacobians(model, params, batch, binary, vmap_chunk)


def _vmap_jacobians(model: nn.Module, params: dict[str, Tensor], batch: Batch, binary: bool,
                    chunk: int) -> list[Tensor]:
    device = _device(model)
    detached = {k: p.detach() for k, p in params.items()}

    def f(p: dict[str, Tensor], ids: Tensor, mask: Tensor, pos: Tensor, tt: Tensor | None) -> Tensor:
        """Logits ``[C]`` of one example as a function of the trainable parameters ``p``."""
        y = functional_call(model, p, (ids[None], mask[None]),
                            {"token_type_ids": None if tt is None else tt[None], "mask_pos": pos[None]})[0]
        return _binary(y) if binary else y

    out: list[Tensor] | None = None
    for group, width in _mask_groups(batch["attention_mask"]):
        for idx in group.split(chunk):
            part = _take(batch, idx)
            types = part["token_type_ids"]
            # the group's mask enters unbatched (in_dims None): see the module docstring
            jac = vmap(jacrev(f), in_dims=(None, 0, None, 0, None if types is None else 0))(
                detached, part["input_ids"][:, :width].to(device), part["attention_mask"][0, :width].to(device),
                part["mask_pos"].to(device), None if types is None else types[:, :width].to(device))
            if out is None:
                n = batch["input_ids"].shape[0]
                out = [torch.zeros(n, *jac[k].shape[1:], dtype=jac[k].dtype, device=device) for k in params]
            for o, k in zip(out, params):
                o[idx.to(device)] = jac[k]
    assert out is not None
    return out


def _naive_jacobians(model: nn.Module, params: dict[str, Tensor], batch: Batch, binary: bool) -> list[Tensor]:
    device = _device(model)
    tensors = list(params.values())
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        part = _take(batch, torch.tensor([i]))
        width = int(part["attention_mask"][0].nonzero().max()) + 1
        with torch.enable_grad():
            y = _forward(model, part, width, device)[0]
            y = _binary(y) if binary else y
            per_logit = []
            for a in range(y.shape[0]):
                grads = torch.autograd.grad(y[a], tensors, retain_graph=a + 1 < y.shape[0], allow_unused=True)
                per_logit.append([torch.zeros_like(p) if g is None else g for g, p in zip(grads, tensors)])
        rows.append([torch.stack(g) for g in zip(*per_logit)])  # per tensor [C, *shape]
    return [torch.stack(t) for t in zip(*rows)]


def kernel_block(rows: Sequence[Tensor], cols: Sequence[Tensor], formula: str) -> Tensor:
    """Contract row Jacobians ``[R, C, *shape]`` with column Jacobians ``[S, C, *shape]`` (one per
    parameter tensor, same order) into a float64 ``[R, C, S, C]`` block (``[2, R, C, S, C]`` for
    asymmetric-signgd), on the Jacobians' device. See :func:`kernel_blocks`."""
    return kernel_blocks(rows, cols, [formula])[formula]


# the (row, column) operands of each formula's products: plain Jacobian or its sign
_PRODUCTS = {"sgd": (("x", "y"),), "signgd": (("sx", "sy"),), "asymmetric-signgd": (("sx", "y"), ("x", "sy"))}


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
    formulas = list(dict.fromkeys(formulas))
    for formula in formulas:
        if formula not in FORMULAS:
            raise LmftError(f"unknown kernel formula {formula!r}; one of {', '.join(FORMULAS)}")
    if not formulas:
        raise LmftError("kernel_blocks: no formula")
    if len(rows) != len(cols) or not rows:
        raise LmftError(f"kernel_block: {len(rows)} row and {len(cols)} column Jacobian tensors")
    r, c = rows[0].shape[:2]
    s = cols[0].shape[0]
    products = [p for f in formulas for p in _PRODUCTS[f]]
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
    return _per_formula(acc.permute(0, 1, 3, 2, 4), formulas)  # [P, R, C, S, C]


def _per_formula(out: Tensor, formulas: Sequence[str]) -> dict[str, Tensor]:
    """Split ``out`` ``[P, R, C, S, C]`` (the products of ``formulas`` in order) into each formula's block:
    ``[R, C, S, C]``, or ``[2, R, C, S, C]`` for a formula of two products; each in its own storage."""
    blocks, o = {}, 0
    for formula in formulas:
        n = len(_PRODUCTS[formula])
        blocks[formula] = (out[o:o + n] if n == 2 else out[o]).clone(memory_format=torch.contiguous_format)
        o += n
    return blocks


def _as_float64(m: Tensor, buf: Tensor) -> Tensor:
    """``m`` as a contiguous float64 tensor in the storage of ``buf``."""
    return buf[: m.numel()].view(m.shape).copy_(m)


# --- the tiled path: the default ---------------------------------------------------------------


@dataclass
class _Table:
    """An embedding table of the tiled path, kept as rows: its ``nn.Embedding`` modules (``lookups``)
    and the ``nn.Linear`` modules that use it as their weight (``decoders``, a tied MLM/LM decoder)."""

    weight: Tensor
    lookups: list[nn.Embedding]
    decoders: list[nn.Linear]


@dataclass
class _Layout:
    """How the tiled path splits a model's trainable tensors (``named_parameters`` order): ``dense``
    ones, and ``tables`` kept as rows. ``slices`` cut the dense tensors, flattened one after the
    other, into slices of at most ``SLICE`` coordinates: per slice, its pieces ``(tensor index, start, stop)``."""

    dense: list[Tensor]
    tables: list[_Table]
    slices: list[list[tuple[int, int, int]]]


def _layout(model: nn.Module) -> _Layout:
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
    return _Layout(dense, [tables[id(p)] for p in params.values() if id(p) in tables], _slice(dense))


def _slice(dense: Sequence[Tensor]) -> list[list[tuple[int, int, int]]]:
    """:attr:`_Layout.slices` of the dense tensors ``dense``."""
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


def _dense_blocks(layout: _Layout, coords: int | None) -> list[_Layout]:
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
    return [_Layout(g, layout.tables if b == 0 else [], _slice(g)) for b, g in enumerate(groups)]


def block_coords(model: nn.Module, mem_mb: float, held: int, logits: int) -> int:
    """Dense coordinates per block of the tiled path under a memory budget of ``mem_mb`` MB, when
    ``held`` examples' Jacobians of ``logits`` logits are kept at once.

    The budget pays first for the process's fixed part, :data:`BASE_MB` plus three copies of the
    weights (the weights, one backward pass's gradients, its graph's activations at most), the
    rest for the held Jacobians in the model's dtype. Raises LmftError naming ``kernels.mem_mb``
    when that does not hold the largest dense tensor.
    """
    layout = _layout(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    itemsize = layout.dense[0].element_size() if layout.dense else 4
    coords = int((mem_mb * 2**20 - BASE_MB * 2**20 - 3 * weights) // (held * logits * itemsize))
    need = max((p.numel() for p in layout.dense), default=0)
    if coords < need:
        least = BASE_MB + (3 * weights + need * held * logits * itemsize) / 2**20
        raise LmftError(f"kernels.mem_mb = {mem_mb} MB is too small: {held} examples' Jacobians of the largest "
                        f"dense tensor ({need} coordinates) need at least {least:.0f} MB")
    return coords


@dataclass
class _Tile:
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


def _tile_jacobians(model: nn.Module, layout: _Layout, batch: Batch, index: int, lo: int, hi: int,
                    binary: bool) -> _Tile:
    """Tile ``index`` with the examples of ``lo..hi-1`` that fall into it, each computed alone at its own length."""
    slots = _slots(index, lo, hi)
    dense: list[list[list[Tensor | None]] | None] = [None] * TILE
    rows: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in layout.tables]
    for s, g in enumerate(slots.tolist()):
        if g >= 0:
            dense[s], tables = _example_jacobian(model, layout, _take(batch, torch.tensor([g])), binary)
            for t, (ids, values) in enumerate(tables):
                rows[t].append((ids, torch.full_like(ids, s), values.transpose(0, 1)))
    return _Tile(index, slots, dense, [tuple(torch.cat(part) for part in zip(*r)) for r in rows])


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


def _example_jacobian(model: nn.Module, layout: _Layout, part: Mapping[str, Tensor | None], binary: bool
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
    device = _device(model)
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
            y = _forward(model, part, width, device)[0]
            y = _binary(y) if binary else y
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


def _tile_blocks(layout: _Layout, row_tiles: Sequence[_Tile], col_tiles: Sequence[_Tile],
                 formulas: Sequence[str]) -> dict[str, Tensor]:
    """Contract row tiles with column tiles into a float64 ``[R, C, S, C]`` block per formula
    (``[2, R, C, S, C]`` for asymmetric-signgd; R = TILE * len(row_tiles), S likewise, slots outside
    the shard included).

    Dense tensors: per (row tile, column tile) pair and slice of the layout, one
    ``[TILE*C, w] @ [w, TILE*C]`` float64 GEMM, accumulated slice by slice. Each pair's GEMM of a
    slice has the same shape whatever the shard, and an entry's place in it is fixed by its
    examples' global indices (a slot outside the shard is a zero row), so an entry's bits depend
    neither on the shard layout nor on the batch sizes.
    Embedding tables: each pair of examples sums the products of the rows both hold, ascending in
    row id (one ``[C, H] @ [H, C]`` per shared row), added after the dense sum, table by table.
    """
    products = [p for f in formulas for p in _PRODUCTS[f]]
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
    return _per_formula(out, formulas)


def _stage(tile: _Tile, pieces: Sequence[tuple[int, int, int]], buf: Tensor) -> Tensor:
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
def _one_thread(device: torch.device) -> Iterator[None]:
    """torch on one CPU thread for the block (nothing changes for a CUDA device), then the previous count."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if device.type == "cpu":
            torch.set_num_threads(threads)


@dataclass
class KernelShard:
    """One shard: ``kernel`` float64 ``[r1-r0, C, c1-c0, C]`` (``[2, ...]`` for asymmetric-signgd) of a
    full ``[n_rows, C, n_cols, C]`` kernel."""

    kernel: Tensor
    rows: tuple[int, int]
    cols: tuple[int, int]
    n_rows: int
    n_cols: int
    formula: str

    @property
    def num_logits(self) -> int:
        return int(self.kernel.shape[-1])

    def describe(self) -> str:
        return f"rows {self.rows[0]}:{self.rows[1]} x cols {self.cols[0]}:{self.cols[1]}"


def _range(rng: tuple[int, int] | None, n: int, what: str) -> tuple[int, int]:
    lo, hi = (0, n) if rng is None else (int(rng[0]), int(rng[1]))
    if not 0 <= lo < hi <= n:
        raise LmftError(f"{what} {lo}:{hi} is empty or outside 0:{n}")
    return lo, hi


def _blocks(mask: Tensor, lo: int, hi: int, size: int) -> list[Tensor]:
    """Indices ``lo..hi-1`` sorted by attention mask (equal masks adjacent), cut into blocks of ``size``."""
    rows = mask[lo:hi].tolist()
    order = sorted(range(hi - lo), key=lambda i: (sum(rows[i]), rows[i], i))
    idx = torch.tensor(order, dtype=torch.long) + lo
    return list(idx.split(size))


def compute_shard(model: nn.Module, rows: Batch, cols: Batch, formula: str, **kwargs) -> KernelShard:
    """The kernel of one formula between ``rows[r0:r1]`` (training examples) and ``cols[c0:c1]`` (any
    split); keyword arguments as :func:`compute_shards`."""
    return compute_shards(model, rows, cols, [formula], **kwargs)[formula]


def compute_shards(model: nn.Module, rows: Batch, cols: Batch, formulas: Sequence[str], *,
                   row_range: tuple[int, int] | None = None, col_range: tuple[int, int] | None = None,
                   row_batch: int = 8, col_batch: int = 8, binary: bool = False, method: str = "tiled",
                   vmap_chunk: int | None = None, mem_mb: float | None = None) -> dict[str, KernelShard]:
    """The kernels of several formulas between ``rows[r0:r1]`` and ``cols[c0:c1]`` from one pass of
    Jacobians: formula -> :class:`KernelShard` (each bit-identical to computing it alone).

    ``rows``/``cols`` are whole splits as one batch each (see :func:`check_batch`); the ranges
    default to everything. ``method`` ``tiled`` (the default) holds the Jacobians of blocks of
    ``row_batch`` rows and ``col_batch`` columns, rounded up to whole tiles of the global grid, and
    contracts them with :func:`_tile_blocks`. ``vmap`` and ``naive`` (the per-pair reference) take
    :func:`jacobians` of blocks of ``row_batch`` rows, reused for every block of ``col_batch``
    columns (and as the column Jacobians of a block with the same examples when ``cols is rows``),
    and contract them with :func:`kernel_blocks`; ``vmap_chunk`` is :func:`jacobians`'.
    ``mem_mb`` (tiled only; None: no bound) is a memory budget in MB: where the held Jacobians of
    all dense tensors would not fit (:func:`block_coords`), the dense tensors are cut into blocks,
    each one a pass of its own over every example (forward and backward again, only the block's
    gradients kept), and the partial float64 kernels are summed. The result then differs from the
    unblocked one by float64 rounding only; like the tile grid, the block layout (fixed by
    ``mem_mb``, the batch sizes and C) is part of its bits.
    Runs where the model is (CPU or CUDA); the shards come back on the CPU.
    """
    formulas = list(dict.fromkeys(formulas))
    if not formulas:
        raise LmftError("compute_shards: no formula")
    for formula in formulas:
        if formula not in FORMULAS:
            raise LmftError(f"unknown kernel formula {formula!r}; one of {', '.join(FORMULAS)}")
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
            lead = (2,) if formula == "asymmetric-signgd" else ()
            kernels[formula] = torch.zeros(*lead, r1 - r0, c, c1 - c0, c, dtype=torch.float64)
        ri, ci = (ridx >= 0).nonzero().flatten(), (cidx >= 0).nonzero().flatten()
        kernels[formula].transpose(-3, -2)[..., (ridx[ri] - r0)[:, None], (cidx[ci] - c0)[None, :], :, :] += \
            block.transpose(-3, -2)[..., ri[:, None], ci[None, :], :, :]

    if method == "tiled":
        _tiled(model, rows, cols, formulas, (r0, r1), (c0, c1), row_batch, col_batch, binary, mem_mb, put)
    else:
        _per_pair(model, rows, cols, formulas, (r0, r1), (c0, c1), row_batch, col_batch, binary, method,
                  vmap_chunk, put)
    return {f: KernelShard(kernels[f], (r0, r1), (c0, c1), n, m, f) for f in formulas}


Put = Callable[[Tensor, str, Tensor, Tensor], None]


def _per_pair(model: nn.Module, rows: Batch, cols: Batch, formulas: list[str], rng: tuple[int, int],
              crng: tuple[int, int], row_batch: int, col_batch: int, binary: bool, method: str,
              vmap_chunk: int | None, put: Put) -> None:
    row_blocks = _blocks(rows["attention_mask"], *rng, row_batch)
    col_blocks = _blocks(cols["attention_mask"], *crng, col_batch)
    for bi, ridx in enumerate(row_blocks):
        log.info("kernel %s rows %d:%d cols %d:%d: row block %d/%d", "+".join(formulas), *rng, *crng, bi + 1,
                 len(row_blocks))
        jr = jacobians(model, _take(rows, ridx), binary=binary, method=method, vmap_chunk=vmap_chunk)
        for cidx in col_blocks:
            if cols is rows and torch.equal(cidx, ridx):  # a train x train diagonal block: the same Jacobians
                jc = jr
            else:
                jc = jacobians(model, _take(cols, cidx), binary=binary, method=method, vmap_chunk=vmap_chunk)
            for formula, block in kernel_blocks(jr, jc, formulas).items():  # [(2,) R, C, S, C]
                put(block, formula, ridx, cidx)
            del jc
        del jr


def _tiled(model: nn.Module, rows: Batch, cols: Batch, formulas: list[str], rng: tuple[int, int],
           crng: tuple[int, int], row_batch: int, col_batch: int, binary: bool, mem_mb: float | None,
           put: Put) -> None:
    """The tiled path of :func:`compute_shards`. One side's blocks of tiles are the outer loop, the
    other's the inner; the inner side's Jacobians are computed once per outer block, or once in all
    where they form one block (kept). The outer side is the one that computes fewer tiles.

    On the CPU it runs on one thread: the thread count changes the rounding of MKL's GEMMs (which
    split the inner dimension among threads) and of LayerNorm's backward, and so the bits. Shards
    are the unit of parallel work.
    """
    with _one_thread(_device(model)):
        layout = _layout(model)
        coords = None
        if mem_mb is not None:
            held = sum(min(-(-size // TILE), -(-hi // TILE) - lo // TILE) * TILE
                       for (lo, hi), size in ((rng, row_batch), (crng, col_batch)))
            c = logits(model, _take(rows, torch.tensor([rng[0]])), binary=binary).shape[1]  # C, from one forward
            coords = block_coords(model, mem_mb, held, c)
        blocks = _dense_blocks(layout, coords)
        for b, block in enumerate(blocks):
            if len(blocks) > 1:
                log.info("kernel %s: dense block %d/%d, %d coordinates", "+".join(formulas), b + 1, len(blocks),
                         sum(p.numel() for p in block.dense))
            _tiled_on_one_thread(model, block, rows, cols, formulas, rng, crng, row_batch, col_batch, binary, put)


def _tiled_on_one_thread(model: nn.Module, layout: _Layout, rows: Batch, cols: Batch, formulas: list[str],
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
    kept: list[_Tile] = []
    for bi, ob in enumerate(oblocks):
        log.info("kernel %s rows %d:%d cols %d:%d: %s block %d/%d (%d tiles of %d)", "+".join(formulas), *rng, *crng,
                 ("row", "column")[outer], bi + 1, len(oblocks), len(ob), TILE)
        otiles = [_tile_jacobians(model, layout, obatch, t, olo, ohi, binary) for t in ob]
        for ib in iblocks:
            if not kept:
                same = {t.index: t for t in otiles} if cols is rows else {}  # train x train: reuse equal tiles
                itiles = [same[t] if t in same and torch.equal(same[t].slots, _slots(t, ilo, ihi))
                          else _tile_jacobians(model, layout, ibatch, t, ilo, ihi, binary) for t in ib]
                if len(iblocks) == 1:
                    kept = itiles
            else:
                itiles = kept
            rt, ct = (otiles, itiles) if outer == 0 else (itiles, otiles)
            ridx, cidx = torch.cat([t.slots for t in rt]), torch.cat([t.slots for t in ct])
            for formula, block in _tile_blocks(layout, rt, ct, formulas).items():
                put(block, formula, ridx, cidx)
            del itiles, rt, ct  # before the next block's Jacobians: held Jacobians are the memory budget
        del otiles


def _slots(index: int, lo: int, hi: int) -> Tensor:
    """``[TILE]``: the global example indices of tile ``index``'s slots, -1 outside ``lo..hi-1``."""
    slots = torch.arange(TILE * index, TILE * (index + 1))
    return torch.where((slots >= lo) & (slots < hi), slots, -1)


def split_range(n: int, parts: int) -> list[tuple[int, int]]:
    """Cut ``0..n`` into ``parts`` contiguous ranges of near-equal size (for laying out shards)."""
    if not 1 <= parts <= n:
        raise LmftError(f"cannot cut {n} examples into {parts} shards")
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def save_shard(shard: KernelShard, path: PathLike) -> None:
    torch_save({"kernel": shard.kernel, "rows": list(shard.rows), "cols": list(shard.cols),
                "n_rows": shard.n_rows, "n_cols": shard.n_cols, "formula": shard.formula}, path)


def load_shard(path: PathLike) -> KernelShard:
    obj = torch_load(path)
    keys = {"kernel", "rows", "cols", "n_rows", "n_cols", "formula"}
    if not isinstance(obj, dict) or set(obj) != keys:
        raise ArtifactError(f"{path}: not a kernel shard (expected a dict with keys {sorted(keys)})")
    return KernelShard(obj["kernel"], tuple(obj["rows"]), tuple(obj["cols"]), obj["n_rows"], obj["n_cols"], obj["formula"])


def merge_shards(shards: Sequence[KernelShard]) -> Tensor:
    """Assemble shards into the full float64 ``[N, C, M, C]`` kernel (``[2, N, C, M, C]`` for
    asymmetric-signgd), checking that they tile it exactly: no gap, no overlap, one formula and shape."""
    if not shards:
        raise LmftError("merge_shards: no shards")
    first = shards[0]
    n, m, formula, c = first.n_rows, first.n_cols, first.formula, first.num_logits
    lead = (2,) if formula == "asymmetric-signgd" else ()
    for s in shards:
        if (s.n_rows, s.n_cols, s.formula, s.num_logits) != (n, m, formula, c):
            raise LmftError(f"shard {s.describe()} is of a {s.formula} kernel {s.n_rows}x{s.n_cols} with {s.num_logits} "
                            f"logits, shard {first.describe()} of a {formula} kernel {n}x{m} with {c} logits")
        (r0, r1), (c0, c1) = s.rows, s.cols
        if not (0 <= r0 < r1 <= n and 0 <= c0 < c1 <= m):
            raise LmftError(f"shard {s.describe()} lies outside the {n}x{m} kernel")
        if tuple(s.kernel.shape) != (*lead, r1 - r0, c, c1 - c0, c):
            raise LmftError(f"shard {s.describe()}: kernel has shape {tuple(s.kernel.shape)}, "
                            f"expected {(*lead, r1 - r0, c, c1 - c0, c)}")
    _check_tiling(shards, n, m)
    kernel = torch.empty(*lead, n, c, m, c, dtype=torch.float64)
    for s in shards:
        kernel[..., s.rows[0]:s.rows[1], :, s.cols[0]:s.cols[1], :] = s.kernel
    return kernel


def _check_tiling(shards: Sequence[KernelShard], n: int, m: int) -> None:
    """Raise naming the first overlapping pair of shards, or the cells no shard covers."""
    row_cuts = sorted({0, n, *(x for s in shards for x in s.rows)})
    col_cuts = sorted({0, m, *(x for s in shards for x in s.cols)})
    owner: dict[tuple[int, int], KernelShard] = {}
    for s in shards:
        for i in range(row_cuts.index(s.rows[0]), row_cuts.index(s.rows[1])):
            for j in range(col_cuts.index(s.cols[0]), col_cuts.index(s.cols[1])):
                if (i, j) in owner:
                    raise LmftError(f"shards {owner[i, j].describe()} and {s.describe()} overlap on rows "
                                    f"{row_cuts[i]}:{row_cuts[i + 1]} x cols {col_cuts[j]}:{col_cuts[j + 1]}")
                owner[i, j] = s
    missing = [f"rows {row_cuts[i]}:{row_cuts[i + 1]} x cols {col_cuts[j]}:{col_cuts[j + 1]}"
               for i in range(len(row_cuts) - 1) for j in range(len(col_cuts) - 1) if (i, j) not in owner]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise LmftError(f"no shard covers {'; '.join(missing[:5])}{more} of the {n}x{m} kernel")


def save_kernel(path: PathLike, kernel: Tensor, labels: Tensor) -> None:
    """Write ``(kernel, labels)`` as the paper's kernel files (``labels`` LongTensor ``[N_x]``)."""
    if kernel.dtype != torch.float64 or kernel.dim() not in (4, 5) or kernel.shape[-2] != labels.shape[0]:
        raise LmftError(f"save_kernel: kernel {tuple(kernel.shape)} {kernel.dtype} does not fit labels {tuple(labels.shape)}")
    torch_save((kernel, labels.long().cpu()), path)


def load_kernel(path: PathLike) -> tuple[Tensor, Tensor]:
    """Read ``(kernel float64 [N, C, M, C] or [2, N, C, M, C], labels [M])``."""
    obj = torch_load(path)
    if not (isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj)):
        raise ArtifactError(f"{path}: not a (kernel, labels) tuple")
    kernel, labels = obj
    if kernel.dim() not in (4, 5) or kernel.shape[-2] != labels.shape[0] or kernel.shape[-1] != kernel.shape[-3]:
        raise ArtifactError(f"{path}: kernel {tuple(kernel.shape)} and labels {tuple(labels.shape)} do not fit")
    return kernel, labels


def save_logits(path: PathLike, f0: Tensor, labels: Tensor) -> None:
    """Write ``(f0 float64 [N, C], labels [N])``, the pre-trained logits of a split."""
    if f0.dim() != 2 or f0.shape[0] != labels.shape[0]:
        raise LmftError(f"save_logits: logits {tuple(f0.shape)} do not fit labels {tuple(labels.shape)}")
    torch_save((f0.double().cpu(), labels.long().cpu()), path)


def load_logits(path: PathLike) -> tuple[Tensor, Tensor]:
    obj = torch_load(path)
    if not (isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj)
            and obj[0].dim() == 2 and obj[0].shape[0] == obj[1].shape[0]):
        raise ArtifactError(f"{path}: not an (f0 [N, C], labels [N]) tuple")
    return obj
