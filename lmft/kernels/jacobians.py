"""Per-example Jacobians and logits of a Classifier: what the eNTK (:mod:`lmft.kernels.compute`) is made of.

``J_a(x) = d f_a(x) / d theta`` over the trainable parameters (``requires_grad=True``, in
``named_parameters`` order), model in eval mode so dropout is off; ``binary=True`` replaces the two
logits by the one logit ``f_1 - f_0`` (C = 1). A split is given as one padded batch
(:func:`check_batch`). :func:`jacobians` is the per-pair reference path's (``vmap`` or ``naive``);
the tiled path takes its own per tile of examples (:mod:`lmft.kernels.tile_jacobians`).

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from lmft.io import LmftError

JACOBIAN_METHODS = ("vmap", "naive")  # of jacobians (the per-pair reference path)
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


def take(batch: Batch, idx: Tensor) -> dict[str, Tensor | None]:
    return {k: None if batch.get(k) is None else batch[k][idx]
            for k in ("input_ids", "attention_mask", "token_type_ids", "mask_pos")}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off) for the block, then the model's previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def binary_logit(logits: Tensor) -> Tensor:
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
    device = device_of(model)
    if batch_size is None:
        batch_size = 1 if device.type == "cpu" else 32
    out = []
    with eval_mode(model):
        for start in range(0, n, batch_size):
            part = take(batch, torch.arange(start, min(start + batch_size, n)))
            width = int(part["attention_mask"].any(0).nonzero().max()) + 1
            f = forward_logits(model, part, width, device)
            out.append((binary_logit(f) if binary else f).double().cpu())
    return torch.cat(out)


def forward_logits(model: nn.Module, part: Mapping[str, Tensor | None], width: int, device: torch.device) -> Tensor:
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
    if method not in JACOBIAN_METHODS:
        raise LmftError(f"unknown Jacobian method {method!r}; one of {', '.join(JACOBIAN_METHODS)}")
    if vmap_chunk is not None and vmap_chunk < 1:
        raise LmftError(f"vmap_chunk must be >= 1 (or None for the default), got {vmap_chunk}")
    n = check_batch(batch, "jacobians")
    params = trainable(model)
    device = device_of(model)
    if vmap_chunk is None:
        vmap_chunk = 1 if device.type == "cpu" else n
    with eval_mode(model):
        if method == "naive":
            return _naive_jacobians(model, params, batch, binary)
        return _vmap_jacobians(model, params, batch, binary, vmap_chunk)


def _vmap_jacobians(model: nn.Module, params: dict[str, Tensor], batch: Batch, binary: bool,
                    chunk: int) -> list[Tensor]:
    device = device_of(model)
    detached = {k: p.detach() for k, p in params.items()}

    def f(p: dict[str, Tensor], ids: Tensor, mask: Tensor, pos: Tensor, tt: Tensor | None) -> Tensor:
        """Logits ``[C]`` of one example as a function of the trainable parameters ``p``."""
        y = functional_call(model, p, (ids[None], mask[None]),
                            {"token_type_ids": None if tt is None else tt[None], "mask_pos": pos[None]})[0]
        return binary_logit(y) if binary else y

    out: list[Tensor] | None = None
    for group, width in _mask_groups(batch["attention_mask"]):
        for idx in group.split(chunk):
            part = take(batch, idx)
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
    device = device_of(model)
    tensors = list(params.values())
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        part = take(batch, torch.tensor([i]))
        width = int(part["attention_mask"][0].nonzero().max()) + 1
        with torch.enable_grad():
            y = forward_logits(model, part, width, device)[0]
            y = binary_logit(y) if binary else y
            per_logit = []
            for a in range(y.shape[0]):
                grads = torch.autograd.grad(y[a], tensors, retain_graph=a + 1 < y.shape[0], allow_unused=True)
                per_logit.append([torch.zeros_like(p) if g is None else g for g, p in zip(grads, tensors)])
        rows.append([torch.stack(g) for g in zip(*per_logit)])  # per tensor [C, *shape]
    return [torch.stack(t) for t in zip(*rows)]
