"""Skill localization by grafting (Panigrahi et al., ICML 2023): finding the mask.

A graft keeps the fine-tuned value of a few parameters and the pre-trained value of the rest:
``graft = where(gamma, theta_ft, theta_0)`` for a binary mask ``gamma`` over the *graftable*
tensors: the run's tuned tensors minus those excluded by name (regexes; by default the
embeddings and the classification / LM head, which the paper keeps fixed). ``theta_0`` is each
tensor's value before fine-tuning, from the classifier rebuilt as the run built it (same head,
mode and seeded initialisation), so for a LoRA run it is the adapter at its start (``B = 0``)
and the graft picks adapter entries. Tuned tensors that are not graftable keep their fine-tuned
values in the graft *and* in the reference model (a linear head trained on [CLS] is the trained
one, as the released code loads it into every model); "pre" below is that reference, which is
the graft at sparsity 0.

Finding the mask, for a sparsity ``s`` (fraction of graftable entries kept) and ``k = round(s N)``
(at least 1 for ``s > 0``):

1. base patch ``gamma_0``: the top ``k`` entries of ``|theta_ft - theta_0|`` over all graftable
   tensors together;
2. continuous relaxation, as the released code does it: scores ``S ~ U[0, 1)`` (seeded),
   ``gamma = gamma_0 + (1 - 2 gamma_0) sigmoid(S - b)`` with ``b = 10``; equivalently
   ``gamma = sigmoid(u)`` with ``u = S - b`` outside the patch and ``u = b - S`` inside, so the
   start is the base patch up to ``sigmoid(-9) ~ 1e-4`` and gradient steps on ``S`` can flip an
   entry either way. Each epoch takes one plain gradient-descent step ``S -= lr * mean_batch_grad``
   on the cross-entropy of the k-shot training set (full batch, split in mini-batches whose
   gradients are averaged; no optimizer, no sparsity penalty; the model frozen in eval mode;
   the gradient reaches ``S`` through a functional forward with the soft graft
   ``lerp(theta_0, theta_ft, gamma)`` in place of the grafted tensors, see :func:`lmft.models.substitute.substitute`);
3. rounding: the released code rounds ``gamma`` at 0.5, which lets the count drift; here the
   mask is the top ``k`` entries of ``u`` (the same order as ``gamma``), so every mask keeps
   exactly ``k`` entries. With ``select`` given (the workflow passes train + dev metric, as the
   released code does) the rounded mask of the best epoch is kept, else the last one.

How far the mask moves: per epoch a score moves by ``lr * a * sigmoid'(u)``, where the entry's drive
``a = -/+ dL/dtheta * (theta_ft - theta_0)`` (outside / inside the patch; > 0 pushes it towards a flip)
and ``sigmoid'(u) ~ exp(S - b)`` is ~7.5e-5 at the start. While ``S`` is far below ``b`` the step grows
as ``exp(S)``, so an entry flips within ``E`` epochs about when ``lr * a * E >= exp(b - S_0) ~ 1.3e4``;
``lr * epochs`` sets how far the mask moves (the released code: 1e7 x 100 epochs; at the same product
more, smaller steps move it further, as the steps compound). A run whose
fine-tuning moved its weights little (few steps, small lr) drives no entry that far, and its graft
stays the base patch: the stage reports the share of the mask outside the base patch
(:func:`mask_moved`), per epoch too.

Ties in any top-``k`` are broken by position (tensor order, then flat index), so masks are
deterministic. Memory: the model holds ``theta_0``; beside it live the fine-tuned values of the
graftable tensors and, while evaluating a graft, the grafted tensors (two copies of the
graftable part; masks are bool); the relaxation adds the scores ``S``, their gradient and the
soft graft of the forward pass. Loading a run briefly holds its fine-tuned classifier next to
the rebuilt one. ``bench/graft_memory.py`` measures the peaks.

:mod:`lmft.graft.stage` runs it as a stage of the workflow (one fine-tuning run and sparsity a job).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmft.graft.topk import top_k_mask
from lmft.io import LmftError
from lmft.models.evaluate import Split
from lmft.models.substitute import substitute

Batch = Mapping[str, Tensor]


def select_graftable(names: Iterable[str], exclude: Sequence[str]) -> list[str]:
    """The names (in the given order) that match none of the ``exclude`` regexes (``graft.exclude``: by
    default the embeddings and heads, see the config schema)."""
    try:
        patterns = [re.compile(p) for p in exclude]
    except re.error as e:
        raise LmftError(f"graft: bad exclude pattern ({e}); patterns are Python regexes: {list(exclude)}") from e
    names = list(names)
    kept = [n for n in names if not any(p.search(n) for p in patterns)]
    if not kept:
        raise LmftError(f"graft: the exclude patterns {list(exclude)} leave no graftable tensor among the "
                        f"{len(names)} tuned ones ({names[:5]}...)")
    return kept


def split_state(state: Mapping[str, Tensor], exclude: Sequence[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a tuned state into (graftable, rest); ``rest`` is loaded into the reference model."""
    keep = set(select_graftable(state, exclude))
    return ({n: t for n, t in state.items() if n in keep}, {n: t for n, t in state.items() if n not in keep})


def mask_count(sparsity: float, n: int) -> int:
    """Number of entries a mask of ``sparsity`` (fraction kept, in [0, 1]) keeps out of ``n``: ``round(s n)``,
    but at least one for ``s > 0`` (a small model at the paper's 1e-4 would otherwise graft nothing)."""
    if not 0.0 <= sparsity <= 1.0:
        raise LmftError(f"graft: sparsity must be in [0, 1] (the fraction of graftable entries kept), got {sparsity}")
    return min(n, max(round(sparsity * n), 1 if sparsity > 0 else 0))


def mask_moved(mask: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> float:
    """Share of ``mask``'s entries outside the ``base`` patch (0: the mask is the base patch, or empty)."""
    kept = sum(int(m.sum()) for m in mask.values())
    outside = sum(int((m & ~base[n].to(m.device)).sum()) for n, m in mask.items())
    return outside / kept if kept else 0.0


class _AbsDelta(Mapping[str, Tensor]):
    """``|ft - theta_0|`` per tensor, computed on access (no stored copy)."""

    def __init__(self, theta0: Mapping[str, Tensor], ft: Mapping[str, Tensor]):
        self.theta0, self.ft = theta0, ft

    def __getitem__(self, name: str) -> Tensor:
        return (self.ft[name] - self.theta0[name]).abs_()

    def __iter__(self) -> Iterator[str]:
        return iter(self.ft)

    def __len__(self) -> int:
        return len(self.ft)


class _Logits(Mapping[str, Tensor]):
    """The relaxation's ranking ``u`` (``gamma = sigmoid(u)``) per tensor, computed on access."""

    def __init__(self, scores: Mapping[str, Tensor], base: Mapping[str, Tensor], bias: float):
        self.scores, self.base, self.bias = scores, base, bias

    def __getitem__(self, name: str) -> Tensor:
        return _mask_logits(self.scores[name].detach(), self.base[name], self.bias)

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)


def base_patch(theta0: Mapping[str, Tensor], ft: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """The top ``round(sparsity N)`` entries of ``|ft - theta_0|`` over all tensors of ``ft``."""
    _check_pair(theta0, ft)
    n = sum(t.numel() for t in ft.values())
    return top_k_mask(_AbsDelta(theta0, ft), mask_count(sparsity, n))


def graft(theta0: Mapping[str, Tensor], ft: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The grafted tensors: ``ft`` where ``mask`` is set, ``theta_0`` elsewhere (exact values)."""
    _check_pair(theta0, ft)
    if set(mask) != set(ft):
        raise LmftError(f"graft: the mask covers {sorted(set(mask) ^ set(ft))} differently from the tuned tensors")
    out = {}
    for name, value in ft.items():
        if mask[name].shape != value.shape:
            raise LmftError(f"graft: mask of {name!r} has shape {tuple(mask[name].shape)}, "
                            f"the tensor {tuple(value.shape)}")
        out[name] = torch.where(mask[name].to(value.device), value, theta0[name])
    return out


def _check_pair(theta0: Mapping[str, Tensor], ft: Mapping[str, Tensor]) -> None:
    missing = [n for n in ft if n not in theta0]
    if missing:
        raise LmftError(f"graft: tuned tensors {missing[:5]} are not parameters of the pre-trained model "
                        "(a checkpoint of another model, head or mode?)")
    for n, t in ft.items():
        if theta0[n].shape != t.shape:
            raise LmftError(f"graft: {n!r} is {tuple(t.shape)} fine-tuned but {tuple(theta0[n].shape)} pre-trained")


def _mask_logits(scores: Tensor, base: Tensor, bias: float) -> Tensor:
    """``u`` with ``gamma = sigmoid(u) = gamma_0 + (1 - 2 gamma_0) sigmoid(S - b)``."""
    return torch.where(base, bias - scores, scores - bias)


class _SoftGraft(torch.autograd.Function):
    """``lerp(theta_0, ft, sigmoid(u(S)))`` whose backward recomputes gamma instead of saving it."""

    @staticmethod
    def forward(ctx, scores: Tensor, theta0: Tensor, ft: Tensor, base: Tensor, bias: float) -> Tensor:
        ctx.save_for_backward(scores, theta0, ft, base)
        ctx.bias = bias
        return torch.lerp(theta0, ft, torch.sigmoid(_mask_logits(scores, base, bias)).to(theta0.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        scores, theta0, ft, base = ctx.saved_tensors
        gamma = torch.sigmoid(_mask_logits(scores, base, ctx.bias))
        d_u = grad.float() * (ft - theta0).float() * gamma * (1 - gamma)
        return torch.where(base, -d_u, d_u), None, None, None, None


def soft_graft(scores: Tensor, theta0: Tensor, ft: Tensor, base: Tensor, bias: float) -> Tensor:
    """The relaxed graft of one tensor; differentiable in ``scores`` (same shape as the tensor)."""
    return _SoftGraft.apply(scores, theta0, ft, base, bias)


def _inputs(batch: Batch, device: torch.device) -> dict[str, Tensor | None]:
    keys = ("input_ids", "attention_mask", "token_type_ids", "mask_pos")
    return {k: (batch[k].to(device) if batch.get(k) is not None else None) for k in keys}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Within the block every parameter of ``model`` is frozen and the model in eval mode."""
    flags = [p.requires_grad for p in model.parameters()]
    training = model.training
    model.requires_grad_(False).eval()
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(training)


@dataclass
class Relaxed:
    """Result of :func:`relax_mask`: the rounded mask and what happened per epoch."""

    mask: dict[str, Tensor]
    epoch: int  # the epoch whose rounded mask was kept (1-based)
    history: list[dict[str, float]] = field(default_factory=list)


def relax_mask(model: nn.Module, ft: Mapping[str, Tensor], base: Mapping[str, Tensor], train: Split,
               *, epochs: int, lr: float, sigmoid_bias: float, seed: int = 0, batch_size: int = 8,
               select: Callable[[dict[str, Tensor]], float] | None = None) -> Relaxed:
    """Optimise the relaxed mask from ``base`` on the training split (see the module docstring).

    Each epoch averages the gradients of the batches of ``batch_size`` rows (in row order) and
    takes one step. ``model`` holds ``theta_0`` for the tensors named in ``ft`` (its other tuned tensors already
    at their fine-tuned values) and is not modified. Returns the mask rounded to exactly as many
    entries as ``base`` keeps: the last epoch's, or with ``select`` (mask -> score, higher is
    better) the best epoch's, earliest on ties. ``history`` has per epoch ``soft_train_loss`` (before
    the step), ``max_step`` (the largest step of a score ``S`` towards a flip, i.e. up; 0 if none), ``moved`` (:func:`mask_moved` of the
    epoch's rounded mask) and, with ``select``, ``select``.
    """
    if epochs < 1:
        raise LmftError(f"graft: relaxation epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise LmftError(f"graft: relaxation batch size must be >= 1, got {batch_size}")
    rows = list(range(len(train)))
    batches = [train.batch(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    params = dict(model.named_parameters())
    _check_pair(params, ft)
    theta0 = {n: params[n].detach() for n in ft}
    k = sum(int(m.sum()) for m in base.values())
    gen = torch.Generator().manual_seed(seed)
    # Drawn on the CPU in tensor order, so the same seed gives the same scores on any device.
    scores = {n: torch.rand(t.shape, generator=gen).to(t.device) for n, t in ft.items()}
    device = _device(model)
    best: tuple[float, int, dict[str, Tensor]] = (-math.inf, 0, {})
    history = []
    with _frozen(model):
        for epoch in range(1, epochs + 1):
            for s in scores.values():
                s.requires_grad_(True)
                s.grad = None
            total = 0.0
            # S is fixed within an epoch, so the soft graft is made once and the batches' gradients
            # gather on a detached copy of it; one backward through the relaxation ends the epoch.
            soft = {n: soft_graft(scores[n], theta0[n], ft[n], base[n], sigmoid_bias) for n in ft}
            leaves = {n: t.detach().requires_grad_(True) for n, t in soft.items()}
            for batch in batches:
                with substitute(model, leaves):
                    logits = model(**_inputs(batch, device))
                loss = F.cross_entropy(logits.float(), batch["labels"].to(device))
                loss.backward()
                total += loss.item()
            used = [n for n in soft if leaves[n].grad is not None]  # a tensor the forward never reads has none
            torch.autograd.backward([soft[n] for n in used], [leaves[n].grad for n in used])
            del soft, leaves
            step = 0.0
            with torch.no_grad():
                for s in scores.values():
                    s.sub_(s.grad, alpha=lr / len(batches))
                    if s.numel():  # S up: towards a flip, inside the patch or outside
                        step = max(step, float(-s.grad.min()) * lr / len(batches))
                    s.grad = None
                    s.requires_grad_(False)
            mask = top_k_mask(_Logits(scores, base, sigmoid_bias), k)
            entry = {"epoch": epoch, "soft_train_loss": total / len(batches), "max_step": step,
                     "moved": mask_moved(mask, base)}
            if select is None:
                best = (-math.inf, epoch, mask)
            else:
                entry["select"] = float(select(mask))
                if entry["select"] > best[0] or not best[2]:
                    best = (entry["select"], epoch, mask)
            history.append(entry)
    return Relaxed(mask=best[2], epoch=best[1], history=history)


def kept_fraction(graft_metric: float, pre_metric: float, ft_metric: float) -> float | None:
    """``(graft - pre) / (ft - pre)``: how much of fine-tuning's gain the graft keeps (None if no gain)."""
    gain = ft_metric - pre_metric
    return None if gain == 0 else (graft_metric - pre_metric) / gain
