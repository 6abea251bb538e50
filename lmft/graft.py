"""Skill localization by grafting (Panigrahi et al., ICML 2023).

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

Finding the mask, for a sparsity ``s`` (fraction of graftable entries kept) and ``k = round(s N)``:

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
   ``lerp(theta_0, theta_ft, gamma)`` in place of the grafted tensors, see :func:`lmft.substitute.substitute`);
3. rounding: the released code rounds ``gamma`` at 0.5, which lets the count drift; here the
   mask is the top ``k`` entries of ``u`` (the same order as ``gamma``), so every mask keeps
   exactly ``k`` entries. With ``select`` given (the workflow passes train + dev metric, as the
   released code does) the rounded mask of the best epoch is kept, else the last one.

Ties in any top-``k`` are broken by position (tensor order, then flat index), so masks are
deterministic. Memory: the model holds ``theta_0``; beside it live the fine-tuned values of the
graftable tensors and, while evaluating a graft, the grafted tensors (two copies of the
graftable part; masks are bool); the relaxation adds the scores ``S``, their gradient and the
soft graft of the forward pass. Loading a run briefly holds its fine-tuned classifier next to
the rebuilt one. ``bench/graft_memory.py`` measures the peaks.

``mask.safetensors`` stores, per graftable tensor, the sorted flat indices (int64) of the kept
entries, with the tensor shapes and the count in the metadata: at the sparsities the paper
studies (1e-5 to 1e-2) this is far smaller than a bool map.

The graft stage's ``metrics.json`` adds to the shared keys (whose ``dev_metric``/``test_metric``/
``test_ece`` are the graft's): ``sparsity``, ``count`` (entries kept), ``n_graftable``,
``graftable`` (tensor names), ``dev_loss``/``test_loss``, ``pre_is_pretrained`` (false when the
run tuned tensors outside the mask, e.g. embeddings: its "pre" then holds them fine-tuned), ``pre_dev_metric``/``pre_test_metric``/
``pre_test_ece``, ``ft_dev_metric``/``ft_test_metric``/``ft_test_ece``, ``base_dev_metric``/
``base_test_metric`` (the base patch), ``base_train_loss``/``graft_train_loss``, ``kept_fraction``
(``(graft - pre) / (ft - pre)`` on test, null when ft == pre), ``relax_epochs``,
``relax_chosen_epoch`` (0: no relaxation, at sparsity 0 or 1), ``relax_history`` (per epoch: the
soft training loss before the step and the selection score), ``ood`` (per OOD task: pre / ft /
graft test metric), ``options``, ``n_train``/``n_dev``/``n_test`` and ``device``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmft.checkpoint import apply_state
from lmft.evaluate import Evaluation, Split, evaluate
from lmft.io import (ArtifactError, LmftError, load_tensor_metadata, load_tensors, read_parquet, save_tensors,
                     write_json)
from lmft.runs import build_for_run, cap_rows, encode_split, load_run, peak_mem_mb, resolve_device
from lmft.substitute import Substituted, substitute
from lmft.tasks import Task

log = logging.getLogger(__name__)

# Embeddings (BERT/RoBERTa ``embeddings.``, Llama ``embed_tokens``, GPT-2 ``wte``/``wpe``) and
# heads (MLM/LM heads, linear classifiers); regexes searched in the parameter name.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    r"embed",
    r"(^|\.)(wte|wpe)\.",
    r"(^|\.)(lm_head|head|linear|classifier|cls|score)\.",
)
MASK_FORMAT = "lmft-graft-indices"

Batch = Mapping[str, Tensor]


def select_graftable(names: Iterable[str], exclude: Sequence[str] = DEFAULT_EXCLUDE) -> list[str]:
    """The names (in the given order) that match none of the ``exclude`` regexes."""
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


def split_state(state: Mapping[str, Tensor], exclude: Sequence[str] = DEFAULT_EXCLUDE
                ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a tuned state into (graftable, rest); ``rest`` is loaded into the reference model."""
    keep = set(select_graftable(state, exclude))
    return ({n: t for n, t in state.items() if n in keep}, {n: t for n, t in state.items() if n not in keep})


def mask_count(sparsity: float, n: int) -> int:
    """Number of entries a mask of ``sparsity`` (fraction kept, in [0, 1]) keeps out of ``n``."""
    if not 0.0 <= sparsity <= 1.0:
        raise LmftError(f"graft: sparsity must be in [0, 1] (the fraction of graftable entries kept), got {sparsity}")
    return min(n, round(sparsity * n))


def _order_keys(x: Tensor) -> Tensor:
    """int32 keys whose integer order is the order of the float32 values of ``x``."""
    bits = x.detach().to(torch.float32).contiguous().view(torch.int32)
    # Positive floats order as their bit patterns; negative ones in reverse, so flip their magnitude bits.
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def top_k_mask(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Bool masks (shapes of ``scores``) with ``True`` at exactly the ``k`` highest scores overall.

    Ties are broken by position: tensor order, then flat index. ``scores`` may be a lazy mapping
    that computes each tensor on access; the k-th value is found by bisection on the float bit
    patterns, so no concatenated copy of all scores is ever made.
    """
    names = list(scores)
    n = sum(scores[m].numel() for m in names)
    if not 0 <= k <= n:
        raise LmftError(f"graft: cannot keep {k} of {n} entries")
    for m in names:
        if torch.isnan(scores[m]).any():
            raise LmftError(f"graft: scores of {m!r} contain NaN (a diverged checkpoint or relaxation?)")
    if k == 0 or k == n:
        return {m: torch.full(scores[m].shape, k == n, dtype=torch.bool, device=scores[m].device) for m in names}

    def count_at_least(t: int) -> int:
        return sum(int((_order_keys(scores[m]) >= t).sum()) for m in names)

    lo, hi = -(2**31), 2**31 - 1  # count_at_least(lo) = n >= k; find the largest t with count >= k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_at_least(mid) >= k:
            lo = mid
        else:
            hi = mid - 1
    masks: dict[str, Tensor] = {}
    above = {m: _order_keys(scores[m]) > lo for m in names}
    room = k - sum(int(a.sum()) for a in above.values())
    for m in names:
        tie = (_order_keys(scores[m]) == lo).flatten()
        take = tie & (tie.cumsum(0) <= room)
        room -= int(take.sum())
        masks[m] = above[m] | take.view(above[m].shape)
    return masks


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
               *, epochs: int = 10, lr: float = 1e7, sigmoid_bias: float = 10.0, seed: int = 0,
               batch_size: int = 8, select: Callable[[dict[str, Tensor]], float] | None = None) -> Relaxed:
    """Optimise the relaxed mask from ``base`` on the training split (see the module docstring).

    Each epoch averages the gradients of the batches of ``batch_size`` rows (in row order) and
    takes one step. ``model`` holds ``theta_0`` for the tensors named in ``ft`` (its other tuned tensors already
    at their fine-tuned values) and is not modified. Returns the mask rounded to exactly as many
    entries as ``base`` keeps: the last epoch's, or with ``select`` (mask -> score, higher is
    better) the best epoch's, earliest on ties.
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
            for batch in batches:
                soft = {n: soft_graft(scores[n], theta0[n], ft[n], base[n], sigmoid_bias) for n in ft}
                with substitute(model, soft):
                    logits = model(**_inputs(batch, device))
                loss = F.cross_entropy(logits.float(), batch["labels"].to(device))
                loss.backward()
                total += loss.item()
            with torch.no_grad():
                for s in scores.values():
                    s.sub_(s.grad, alpha=lr / len(batches))
                    s.grad = None
                    s.requires_grad_(False)
            mask = top_k_mask(_Logits(scores, base, sigmoid_bias), k)
            entry = {"epoch": epoch, "soft_train_loss": total / len(batches)}
            if select is None:
                best = (-math.inf, epoch, mask)
            else:
                entry["select"] = float(select(mask))
                if entry["select"] > best[0] or not best[2]:
                    best = (entry["select"], epoch, mask)
            history.append(entry)
    return Relaxed(mask=best[2], epoch=best[1], history=history)


def save_mask(mask: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a bool mask as sorted flat int64 indices per tensor, shapes and count in the metadata."""
    shapes = {n: list(m.shape) for n, m in mask.items()}
    idx = {n: m.detach().flatten().nonzero().squeeze(1).to(torch.int64) for n, m in mask.items()}
    meta = {"format": MASK_FORMAT, "shapes": json.dumps(shapes), "count": str(sum(t.numel() for t in idx.values()))}
    save_tensors(idx, path, metadata={**meta, **{k: str(v) for k, v in (metadata or {}).items()}})


def load_mask(path: str | Path) -> dict[str, Tensor]:
    """Read a mask written by :func:`save_mask` back as bool tensors (in the saved tensor order)."""
    meta = load_tensor_metadata(path)
    if meta.get("format") != MASK_FORMAT:
        raise ArtifactError(f"{path}: not a graft mask (metadata format {meta.get('format')!r}, "
                            f"expected {MASK_FORMAT!r})")
    shapes = json.loads(meta["shapes"])
    idx = load_tensors(path)
    if set(idx) != set(shapes):
        raise ArtifactError(f"{path}: tensors {sorted(idx)} do not match the shapes listed in its metadata")
    out = {}
    for name, shape in shapes.items():
        flat = torch.zeros(math.prod(shape), dtype=torch.bool)
        if idx[name].numel() and (idx[name].min() < 0 or idx[name].max() >= flat.numel()):
            raise ArtifactError(f"{path}: indices of {name!r} fall outside its shape {shape}")
        flat[idx[name]] = True
        out[name] = flat.view(shape)
    return out


def kept_fraction(graft_metric: float, pre_metric: float, ft_metric: float) -> float | None:
    """``(graft - pre) / (ft - pre)``: how much of fine-tuning's gain the graft keeps (None if no gain)."""
    gain = ft_metric - pre_metric
    return None if gain == 0 else (graft_metric - pre_metric) / gain


# --- the graft stage: one (model, task, k, seed, method, sparsity) job ---------------------------

DEFAULTS: dict[str, Any] = {
    # The released code: 10 epochs (100 in its README) of plain gradient descent at lr 1e7, bias 10.
    "epochs": 10, "lr": 1e7, "sigmoid_bias": 10.0, "batch_size": 8, "mask_seed": 0, "select": "best",
    "exclude": list(DEFAULT_EXCLUDE), "eval_batch_size": 32,
}


def resolve_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The graft settings with defaults filled in; raises on an unknown key or a bad value."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise LmftError(f"graft: unknown option(s) {unknown}; known: {sorted(DEFAULTS)}")
    out = DEFAULTS | options
    if out["select"] not in ("best", "last"):
        raise LmftError(f"graft: select must be 'best' (train + dev metric, as the released code) or 'last', "
                        f"got {out['select']!r}")
    return out


def _load_frame(path: str | Path, eval_cap: int | None = None) -> pd.DataFrame:
    df = read_parquet(path, ["text_a", "label"])
    return df.iloc[cap_rows(len(df), eval_cap)].reset_index(drop=True)


def run_graft(model_json: str | Path, task: Task, run_dir: str | Path, splits: Mapping[str, str | Path],
              out_dir: str | Path, *, model: str, k: int, seed: int, method: str, sparsity: float,
              options: Mapping[str, Any] | None = None, ood: Mapping[str, tuple[Task, str | Path]] | None = None,
              eval_cap: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Graft one fine-tuning run at one sparsity; writes ``mask.safetensors`` and ``metrics.json``.

    ``splits`` maps train/dev/test to the run's k-shot parquet files; ``ood`` maps a task name to
    (task, test parquet) of tasks with the same label words. Test sets are capped at ``eval_cap``
    rows as the finetune stage caps them. Returns the metrics (see the module docstring).
    """
    started = time.perf_counter()
    opts = resolve_options(options)
    dev_ = resolve_device(device)
    if dev_.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev_)
    run = load_run(model_json, task, run_dir)
    info, tokenizer = run.info, run.tokenizer
    tuned = {n: p.detach() for n, p in run.clf.named_parameters() if p.requires_grad}
    if not tuned:
        raise LmftError(f"graft: {run_dir} is a {info['type']} run that tuned no parameters; nothing to graft")
    graftable, rest = split_state(tuned, opts["exclude"])
    if rest:  # then "pre" is not the pre-trained model: fine-tune with freeze_embeddings (and a frozen head)
        log.warning("graft: %s tuned tensors outside the mask (%s); they keep their fine-tuned values in the "
                    "reference ('pre') model, which is then not the pre-trained one", run_dir, ", ".join(list(rest)[:4]))
    pre_is_pretrained = not rest
    ref, _ = build_for_run(model_json, task, info)  # the same head, mode and seeded init, before training
    apply_state(ref, rest)
    del run, tuned, rest  # of the fine-tuned classifier only the graftable tensors stay
    ref.to(dev_).eval()
    ft = {n: t.to(dev_) for n, t in graftable.items()}
    del graftable
    theta0 = {n: p.detach() for n, p in ref.named_parameters() if n in ft}
    n_graftable = sum(t.numel() for t in ft.values())
    log.info("graft %s %s k=%d seed=%d %s: %d graftable tensors, %d entries, sparsity %g", model, task.name, k, seed,
             method, len(ft), n_graftable, sparsity)

    def encode(df: pd.DataFrame, t: Task, name: str) -> Split:
        return encode_split(df, t, tokenizer, ref, prompt=info["prompt"], max_length=info["max_length"], name=name)

    data = {s: encode(_load_frame(splits[s], eval_cap if s == "test" else None), task, s)
            for s in ("train", "dev", "test")}
    ood_data = {}
    for name, (ood_task, path) in (ood or {}).items():
        if tuple(ood_task.label_words) != tuple(task.label_words):
            raise LmftError(f"graft: OOD task {name!r} has label words {ood_task.label_words}, {task.name!r} has "
                            f"{task.label_words}; OOD evaluation needs the same label space")
        ood_data[name] = encode(_load_frame(path, eval_cap), ood_task, f"ood-{name}")
    bs = int(opts["eval_batch_size"])

    def scores(params: Mapping[str, Tensor] | None, names: Iterable[str]) -> dict[str, Evaluation]:
        clf = ref if params is None else Substituted(ref, params)
        return {s: evaluate(clf, data[s] if s in data else ood_data[s], task.metric, bs, dev_, desc=s) for s in names}

    def grafted(mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return graft(theta0, ft, mask)

    everything = ("train", "dev", "test", *ood_data)
    pre, fine = scores(None, everything), scores(ft, everything)
    base = base_patch(theta0, ft, sparsity)
    count = sum(int(m.sum()) for m in base.values())
    if 0 < count < n_graftable:
        def select(mask: dict[str, Tensor]) -> float:
            ev = scores(grafted(mask), ("train", "dev"))
            return ev["train"].metric + ev["dev"].metric

        relaxed = relax_mask(ref, ft, base, data["train"], epochs=int(opts["epochs"]), lr=float(opts["lr"]),
                             sigmoid_bias=float(opts["sigmoid_bias"]), seed=int(opts["mask_seed"]),
                             batch_size=int(opts["batch_size"]), select=select if opts["select"] == "best" else None)
        mask, history, chosen = relaxed.mask, relaxed.history, relaxed.epoch
    else:  # sparsity 0 or 1: the top-k is the only mask there is
        mask, history, chosen = base, [], 0
    at_base = scores(grafted(base), ("train", "dev", "test"))
    at_graft = scores(grafted(mask), everything)
    test = at_graft["test"]
    log.info("graft test %s %.4f (pre %.4f, ft %.4f, base patch %.4f), ECE %.4f", task.metric, test.metric,
             pre["test"].metric, fine["test"].metric, at_base["test"].metric, test.ece)

    out = Path(out_dir)
    save_mask({n: m.cpu() for n, m in mask.items()}, out / "mask.safetensors",
              {"sparsity": sparsity, "count": count, "n_graftable": n_graftable, "model": model, "task": task.name,
               "k": k, "seed": seed, "method": method})
    metrics = {
        "stage": "graft", "task": task.name, "k": k, "seed": seed, "model": model, "method": method,
        "metric": task.metric, "dev_metric": at_graft["dev"].metric, "test_metric": test.metric,
        "test_ece": test.ece, "dev_loss": at_graft["dev"].loss, "test_loss": test.loss,
        "sparsity": sparsity, "count": count, "n_graftable": n_graftable, "graftable": list(ft),
        "pre_is_pretrained": pre_is_pretrained,
        "pre_dev_metric": pre["dev"].metric, "pre_test_metric": pre["test"].metric, "pre_test_ece": pre["test"].ece,
        "ft_dev_metric": fine["dev"].metric, "ft_test_metric": fine["test"].metric, "ft_test_ece": fine["test"].ece,
        "base_dev_metric": at_base["dev"].metric, "base_test_metric": at_base["test"].metric,
        "base_train_loss": at_base["train"].loss, "graft_train_loss": at_graft["train"].loss,
        "kept_fraction": kept_fraction(test.metric, pre["test"].metric, fine["test"].metric),
        "relax_epochs": len(history), "relax_chosen_epoch": chosen, "relax_history": history,
        "ood": {name: {"pre": pre[name].metric, "ft": fine[name].metric, "graft": at_graft[name].metric}
                for name in ood_data},
        "options": opts, "n_train": len(data["train"]), "n_dev": len(data["dev"]), "n_test": len(data["test"]),
        "device": str(dev_), "wall_time_s": time.perf_counter() - started, "peak_mem_mb": peak_mem_mb(dev_),
    }
    write_json(metrics, out / "metrics.json")
    return metrics


def graft_methods(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``graft.methods`` (name -> entry), default every ``ft``/``mezo`` method of ``finetune.methods``."""
    section = config.get("graft") or {}
    methods = (config.get("finetune") or {}).get("methods") or {}
    chosen = section.get("methods")
    if chosen is None:
        chosen = {m: {} for m, spec in methods.items() if spec.get("type") in ("ft", "mezo")}
    for method in chosen:
        if method not in methods:
            raise LmftError(f"config: graft.methods names {method!r}, not one of finetune.methods: {sorted(methods)}")
        if methods[method].get("type") not in ("ft", "mezo"):
            raise LmftError(f"config: graft.methods: {method!r} is a {methods[method].get('type')} method; grafting "
                            "needs a method that trains (ft or mezo)")
    return {m: dict(entry or {}) for m, entry in chosen.items()}


def graft_options(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The graft settings of ``method``'s jobs: the section's, overridden by the method's entry (see DEFAULTS)."""
    section = config.get("graft") or {}
    entry = graft_methods(config).get(method) or {}
    return {key: value for key, value in {**section, **entry}.items() if key in DEFAULTS}


def graft_jobs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The graft jobs of a config: every (model, task, k, seed, method, sparsity) its ``graft`` section asks for.

    Each method of :func:`graft_methods` on its models (the entry's ``models``, else the fine-tuning
    method's, else all), for ``graft.tasks``/``k``/``seeds`` (default the config's tasks and k-shot
    settings) and ``graft.sparsities``.
    """
    section = config.get("graft") or {}
    ft_methods = (config.get("finetune") or {}).get("methods") or {}
    kshot = config.get("kshot") or {}
    jobs = []
    for method, entry in graft_methods(config).items():
        models = entry.get("models") or ft_methods[method].get("models") or list(config.get("models") or {})
        jobs += [{"model": model, "task": task, "k": k, "seed": seed, "method": method, "sparsity": float(s)}
                 for model in models
                 for task in section.get("tasks") or config.get("tasks") or []
                 for k in section.get("k") or kshot.get("k", [16])
                 for seed in section.get("seeds") or kshot.get("seeds", [13, 21, 42, 87, 100])
                 for s in section.get("sparsities", [1e-4, 1e-3, 1e-2])]
    return jobs

