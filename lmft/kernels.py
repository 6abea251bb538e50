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
Jacobians) that :func:`merge_shards` assembles. Inside a shard, rows are taken in
blocks of ``row_batch`` examples whose Jacobians are kept while every column block of
``col_batch`` examples is computed and contracted against them (column Jacobians are recomputed
once per row block, so a large ``row_batch`` saves work). Jacobians come from ``torch.func``
(``method="vmap"``: ``vmap`` over examples of ``jacrev`` of one example's logits, through
``functional_call``), or from one ``torch.autograd.grad`` per (example, logit) (``method="naive"``,
the reference).

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

Reproducibility. On the CPU (``vmap_chunk=1`` or ``method="naive"``) the result is bit-identical
whatever the shard layout and the batch sizes, with any thread count: every example's Jacobian is
computed alone at its own length, and the float64 contraction multiplies each pair of examples on
its own, ``[C, k] @ [k, C]`` over fixed ``CHUNK``-wide slices of each parameter tensor, summed in a
fixed order (tensor by tensor, slice by slice), so no block size changes any entry's rounding (a
plain ``A @ B.T`` over a block would: a BLAS GEMM rounds an entry by its position in the output).

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from lmft.io import ArtifactError, LmftError, PathLike, torch_load, torch_save

log = logging.getLogger(__name__)

FORMULAS = ("sgd", "signgd", "asymmetric-signgd")
METHODS = ("vmap", "naive")
CHUNK = 1 << 16  # parameter coordinates per float64 slice
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
    if method not in METHODS:
        raise LmftError(f"unknown Jacobian method {method!r}; one of {', '.join(METHODS)}")
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
            ops = {"x": _stage(a[:, :, k:k + CHUNK], bufs["x"]), "y": _stage(b[:, :, k:k + CHUNK], bufs["y"])}
            for name in names - {"x", "y"}:
                ops[name] = torch.sign(ops[name[1]], out=bufs[name][: ops[name[1]].numel()].view(ops[name[1]].shape))
            for o, (left, right) in enumerate(products):
                u, vt = ops[left], ops[right].transpose(1, 2)  # [R, C, w], [S, w, C]
                for i in range(r):
                    acc[o, i] += torch.bmm(u[i].expand(s, c, u.shape[2]), vt)  # [S, C, C]
    out = acc.permute(0, 1, 3, 2, 4)  # [P, R, C, S, C]
    blocks, o = {}, 0
    for formula in formulas:
        n = len(_PRODUCTS[formula])
        blocks[formula] = (out[o:o + n] if n == 2 else out[o]).contiguous()  # own storage, not a view of all formulas
        o += n
    return blocks


def _stage(m: Tensor, buf: Tensor) -> Tensor:
    """``m`` as a contiguous float64 tensor in the storage of ``buf``."""
    return buf[: m.numel()].view(m.shape).copy_(m)


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
                   row_batch: int = 8, col_batch: int = 8, binary: bool = False, method: str = "vmap",
                   vmap_chunk: int | None = None) -> dict[str, KernelShard]:
    """The kernels of several formulas between ``rows[r0:r1]`` and ``cols[c0:c1]`` from one pass of
    Jacobians: formula -> :class:`KernelShard` (each bit-identical to computing it alone).

    ``rows``/``cols`` are whole splits as one batch each (see :func:`check_batch`); the ranges
    default to everything. Row Jacobians are computed once per block of ``row_batch`` examples
    and reused for every block of ``col_batch`` columns, and as the column Jacobians of a block
    with the same examples when ``cols is rows``; ``method`` and ``vmap_chunk`` are those of
    :func:`jacobians`. Runs where the model is (CPU or CUDA); the shards come back on the CPU.
    """
    formulas = list(dict.fromkeys(formulas))
    if not formulas:
        raise LmftError("compute_shards: no formula")
    for formula in formulas:
        if formula not in FORMULAS:
            raise LmftError(f"unknown kernel formula {formula!r}; one of {', '.join(FORMULAS)}")
    if row_batch < 1 or col_batch < 1:
        raise LmftError(f"row_batch and col_batch must be >= 1, got {row_batch} and {col_batch}")
    n, m = check_batch(rows, "rows"), check_batch(cols, "cols")
    r0, r1 = _range(row_range, n, "row range")
    c0, c1 = _range(col_range, m, "column range")
    row_blocks = _blocks(rows["attention_mask"], r0, r1, row_batch)
    col_blocks = _blocks(cols["attention_mask"], c0, c1, col_batch)
    kernels: dict[str, Tensor] = {}
    for bi, ridx in enumerate(row_blocks):
        log.info("kernel %s rows %d:%d cols %d:%d: row block %d/%d", "+".join(formulas), r0, r1, c0, c1, bi + 1,
                 len(row_blocks))
        jr = jacobians(model, _take(rows, ridx), binary=binary, method=method, vmap_chunk=vmap_chunk)
        for cidx in col_blocks:
            if cols is rows and torch.equal(cidx, ridx):  # a train x train diagonal block: the same Jacobians
                jc = jr
            else:
                jc = jacobians(model, _take(cols, cidx), binary=binary, method=method, vmap_chunk=vmap_chunk)
            for formula, block in kernel_blocks(jr, jc, formulas).items():  # [(2,) R, C, S, C]
                block = block.cpu()
                if formula not in kernels:
                    c = block.shape[-1]
                    lead = (2,) if formula == "asymmetric-signgd" else ()
                    kernels[formula] = torch.zeros(*lead, r1 - r0, c, c1 - c0, c, dtype=torch.float64)
                # kernel[..., i, :, j, :] = block[..., i', :, j', :] for the blocks' (sorted) indices
                kernels[formula].transpose(-3, -2)[..., (ridx - r0)[:, None], (cidx - c0)[None, :], :, :] = \
                    block.transpose(-3, -2)
            del jc
        del jr
    return {f: KernelShard(kernels[f], (r0, r1), (c0, c1), n, m, f) for f in formulas}


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
