"""Linear mode connectivity of fine-tuned checkpoints (Qin et al., EMNLP 2022): the curves and barriers.

Two endpoints ``a`` and ``b`` are states of the same tuned tensors (the names and shapes of a
run's trainable state). Along ``theta(alpha) = (1 - alpha) a + alpha b`` for ``points`` values of
``alpha`` in ``linspace(0, 1)`` only those tensors move; the rest of the model stays as built.
``torch.lerp`` is used, which returns ``a`` at ``alpha = 0`` and ``b`` at ``alpha = 1`` exactly.

The pre-trained endpoint of a run is its tuned tensors at their values before training; for
LoRA it is the fine-tuned adapter with ``lora_B`` set to zero (which is the pre-trained model
exactly) and ``lora_A`` kept, so that the path moves the merged weight ``W0 + alpha B A``
linearly, as interpolating full weights would.

The curve records, per ``alpha`` and split, the mean cross-entropy, the task metric and the ECE,
and per example of each split its loss and correctness (what a bootstrap interval on the barrier
resamples); on request also per-example correctness on the training set (which examples are
forgotten between the ends). Barrier heights: for the loss ``max_alpha [L(alpha) - line(alpha)]`` with ``line``
the straight line between the end losses, for the metric ``max_alpha [line(alpha) - M(alpha)]``;
both are >= 0 and 0 for a path that never leaves the chord.

Distances. :func:`endpoint_distance` gives the L2 distance and cosine of the flattened tuned
tensors. A barrier says little about endpoints that hardly differ, so the endpoints are also
measured against where training started, theta0 (each run's tuned tensors as built, before
training: :func:`pretrained_endpoint`), in the space of the weights the tensors add to the model
(:func:`weight_distance`): the tensors themselves, except that a LoRA layer counts as its update
``scaling * B A`` (``B`` starts at 0, so theta0's update is 0 whatever the random ``A``; the two
adapters of a pair are compared through their updates, not their factors).

:mod:`lmft.interpolate.stage` runs it as a stage of the workflow (one pair of checkpoints a job).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmft.io import LmftError, atomic_path
from lmft.models.evaluate import Split, evaluate
from lmft.models.substitute import Substituted


def check_endpoints(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    """Raise unless ``a`` and ``b`` hold the same tensor names with the same shapes."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise LmftError(f"interpolate: endpoints tune different tensors (only in a: {only_a[:5]}, only in b: "
                        f"{only_b[:5]}); both must come from the same method")
    for n in a:
        if a[n].shape != b[n].shape:
            raise LmftError(f"interpolate: {n!r} is {tuple(a[n].shape)} in a but {tuple(b[n].shape)} in b")


def lerp_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) a + alpha b`` per tensor (exactly ``a`` at 0 and ``b`` at 1)."""
    return {n: torch.lerp(a[n], b[n].to(a[n]), alpha) for n in a}


def pretrained_endpoint(pre: Mapping[str, Tensor], ft: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The pre-trained endpoint for the tuned tensors of ``ft`` (see the module docstring).

    ``pre`` holds the tensors' values before training (the classifier as built); LoRA
    ``lora_B`` tensors become zero and ``lora_A`` keep their fine-tuned values.
    """
    out = {}
    for n, t in ft.items():
        if "lora_B" in n:
            out[n] = torch.zeros_like(t)
        elif "lora_A" in n:
            out[n] = t
        elif n not in pre:
            raise LmftError(f"interpolate: tuned tensor {n!r} has no pre-trained value")
        else:
            out[n] = pre[n]
    check_endpoints(out, ft)
    return out


def endpoint_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, float]:
    """L2 distance and cosine similarity of the flattened endpoints (accumulated in float64)."""
    check_endpoints(a, b)
    dot = na = nb = dist = 0.0
    for n in a:
        x, y = a[n].double(), b[n].to(a[n].device).double()
        dot += float((x * y).sum())
        na += float((x * x).sum())
        nb += float((y * y).sum())
        dist += float(((x - y) ** 2).sum())
    cosine = dot / math.sqrt(na * nb) if na > 0 and nb > 0 else float("nan")
    return {"l2": math.sqrt(dist), "cosine": cosine, "norm_a": math.sqrt(na), "norm_b": math.sqrt(nb)}


# a LoRA layer's factor as peft names it: {module}.lora_A.{adapter}.weight ([r, in]) and lora_B ([out, r])
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.(?P<adapter>[^.]+)\.weight$")


def lora_scaling(model: nn.Module) -> dict[str, float]:
    """``{module name: scaling}`` of ``model``'s LoRA layers (peft adds ``scaling * B A x`` to a layer's output)."""
    out = {}
    for n, _ in model.named_parameters():
        m = _LORA.match(n)
        if m and m["part"] == "A":
            out[m["module"]] = float(model.get_submodule(m["module"]).scaling[m["adapter"]])
    return out


def weight_distance(x: Mapping[str, Tensor], y: Mapping[str, Tensor], scaling: Mapping[str, float]) -> float:
    """L2 distance of two states of the same tuned tensors as the weights they add to the model (module
    doc): each LoRA pair by its update ``scaling[module] * B A`` ``[out, in]``, every other tensor as it
    is (then the plain L2 distance). Accumulated in float64, one tensor at a time."""
    check_endpoints(x, y)
    total = 0.0
    for n in x:
        m = _LORA.match(n)
        if m is None:
            d = x[n].double() - y[n].to(x[n].device).double()
        elif m["part"] == "A":
            if m["module"] not in scaling:
                raise LmftError(f"interpolate: no LoRA scaling for {m['module']!r}")
            b = f"{m['module']}.lora_B.{m['adapter']}.weight"
            d = scaling[m["module"]] * (x[b].double() @ x[n].double()
                                        - y[b].to(x[b].device).double() @ y[n].to(x[n].device).double())
        else:
            continue  # a lora_B: in its lora_A's update
        total += float((d * d).sum())
    return math.sqrt(total)


def relative_distance(ab: float, a0: float, b0: float) -> dict[str, float | str | None]:
    """``distance_a0``, ``distance_b0`` (each endpoint's :func:`weight_distance` from theta0),
    ``distance_ab`` (between the endpoints) and ``relative_distance`` = ``ab / a0``, or ``ab / b0``
    when ``a`` is theta0 itself (a pre-trained endpoint; ``relative_to`` says which), None when
    both are."""
    to = "a" if a0 > 0 else "b" if b0 > 0 else None
    return {"distance_a0": a0, "distance_b0": b0, "distance_ab": ab,
            "relative_distance": None if to is None else ab / (a0 if to == "a" else b0), "relative_to": to}


def barrier(alphas: Sequence[float], values: Sequence[float], higher_is_better: bool = False) -> float:
    """Signed height of the curve above (loss) or below (``higher_is_better``, a metric) the chord between
    its ends: the largest at the interior points (at least 3 points), negative where the whole curve lies
    on the good side of the chord (how far shows; a clip at 0 would hide it)."""
    x, y = np.asarray(alphas, dtype=float), np.asarray(values, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 3:
        raise LmftError(f"interpolate: barrier needs >= 3 matching alphas and values (an interior point), "
                        f"got {x.shape} and {y.shape}")
    if not np.all(np.diff(x) > 0):
        raise LmftError(f"interpolate: alphas must increase, got {x.tolist()}")
    line = y[0] + (x - x[0]) / (x[-1] - x[0]) * (y[-1] - y[0])
    gap = line - y if higher_is_better else y - line
    return float(gap[1:-1].max())


@dataclass
class Curve:
    """Output of :func:`interpolation_curve`."""

    curve: pd.DataFrame  # alpha, split, loss, metric, ece
    losses: pd.DataFrame  # alpha, split, index, loss, correct: per example of each split
    examples: pd.DataFrame | None  # alpha, example, correct (training set), when tracked


def alphas(points: int) -> list[float]:
    """``points`` values of alpha from 0 to 1 inclusive, evenly spaced."""
    if points < 2:
        raise LmftError(f"interpolate: points must be >= 2 (both ends), got {points}")
    return [float(x) for x in np.linspace(0.0, 1.0, points)]


def interpolation_curve(model: nn.Module, a: Mapping[str, Tensor], b: Mapping[str, Tensor],
                        splits: Mapping[str, Split], metric_name: str, points: int = 11,
                        track: Split | None = None, batch_size: int = 32,
                        rows: Mapping[str, Sequence[int]] | None = None) -> Curve:
    """Loss and metric (``acc``/``f1``) on each split along the path from ``a`` to ``b``.

    ``model`` is a Classifier whose tuned tensors are named as in ``a``/``b``; it is not modified
    (each point is a functional forward). ``track`` (the training split) adds per-example correctness.
    ``rows`` numbers each split's examples in ``losses`` (``index``: the row of the split's parquet
    file; by default their positions).
    """
    check_endpoints(a, b)
    params = dict(model.named_parameters())
    missing = [n for n in a if n not in params]
    if missing:
        raise LmftError(f"interpolate: {missing[:5]} are not parameters of the model")
    device = next(iter(params.values())).device
    a = {n: t.to(device) for n, t in a.items()}
    b = {n: t.to(device) for n, t in b.items()}
    index = {name: list(rows[name]) if rows is not None else list(range(len(split))) for name, split in splits.items()}
    for name, split in splits.items():
        if len(index[name]) != len(split):
            raise LmftError(f"interpolate: {len(index[name])} row indices for the {len(split)} {name} examples")
    curve, losses, examples = [], [], []
    for alpha in alphas(points):
        m = Substituted(model, lerp_state(a, b, alpha))
        for name, split in splits.items():
            ev = evaluate(m, split, metric_name, batch_size=batch_size, device=device)
            curve.append({"alpha": alpha, "split": name, "loss": ev.loss, "metric": ev.metric, "ece": ev.ece})
            losses.append(pd.DataFrame({
                "alpha": alpha, "split": name, "index": pd.array(index[name], dtype="int64"),
                "loss": F.cross_entropy(ev.logits.double(), ev.labels, reduction="none").numpy(),
                "correct": (ev.preds == ev.labels).numpy()}))
        if track is not None:
            ev = evaluate(m, track, metric_name, batch_size=batch_size, device=device)
            correct = (ev.preds == ev.labels).tolist()
            examples += [{"alpha": alpha, "example": i, "correct": c} for i, c in enumerate(correct)]
    return Curve(curve=pd.DataFrame(curve), losses=pd.concat(losses, ignore_index=True),
                 examples=pd.DataFrame(examples) if track is not None else None)


def curve_metrics(curve: pd.DataFrame) -> dict[str, float]:
    """Barrier heights and end values per split of a curve table (see the module docstring)."""
    out: dict[str, float] = {}
    for split, part in curve.groupby("split", sort=False):
        part = part.sort_values("alpha")
        x = part["alpha"].to_numpy()
        out[f"{split}_loss_barrier"] = barrier(x, part["loss"].to_numpy())
        out[f"{split}_metric_barrier"] = barrier(x, part["metric"].to_numpy(), higher_is_better=True)
        for end, row in (("a", part.iloc[0]), ("b", part.iloc[-1])):
            out[f"{split}_loss_{end}"] = float(row["loss"])
            out[f"{split}_metric_{end}"] = float(row["metric"])
        mid = part.iloc[int(np.argmin(np.abs(x - 0.5)))]  # the first of two equally near: the lower alpha
        out[f"{split}_metric_mid"] = float(mid["metric"])
        if "ece" in part.columns:
            out[f"{split}_ece_mid"] = float(mid["ece"])
    return out


def forgetting(examples: pd.DataFrame) -> dict[str, int]:
    """Training examples right at both ends of the path, and those of them wrong somewhere between."""
    table = examples.pivot(index="example", columns="alpha", values="correct").sort_index(axis=1)
    ends = table.iloc[:, 0].astype(bool) & table.iloc[:, -1].astype(bool)
    inner = table.iloc[:, 1:-1].astype(bool)
    forgotten = ends & ~inner.all(axis=1)
    return {"train_right_both_ends": int(ends.sum()), "train_forgotten": int(forgotten.sum())}


def plot_curve(curve: pd.DataFrame, path: str | Path, title: str, metric_name: str = "metric") -> None:
    """Two panels, loss and metric vs alpha, one line per split; written atomically as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    ax_loss, ax_metric = fig.subplots(1, 2)
    for split, part in curve.groupby("split", sort=False):
        part = part.sort_values("alpha")
        ax_loss.plot(part["alpha"], part["loss"], marker="o", ms=3, label=split)
        ax_metric.plot(part["alpha"], part["metric"], marker="o", ms=3, label=split)
    for ax, name in ((ax_loss, "loss"), (ax_metric, metric_name)):
        ax.set_xlabel("alpha")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_metric.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
