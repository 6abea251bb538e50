"""Task metrics and calibration: accuracy, binary F1, expected calibration error (ECE).

Predictions and labels are class indices ``[N]``; probabilities are ``[N, C]`` rows that sum to 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmft.io import LmftError


def _check(preds: Tensor, labels: Tensor, what: str) -> None:
    if preds.dim() != 1 or preds.shape != labels.shape:
        raise LmftError(f"{what}: predictions {tuple(preds.shape)} and labels {tuple(labels.shape)} must both be [N]")
    if preds.numel() == 0:
        raise LmftError(f"{what}: no examples")


def accuracy(preds: Tensor, labels: Tensor) -> float:
    """Fraction of ``preds`` equal to ``labels``."""
    _check(preds, labels, "accuracy")
    return float((preds == labels).double().mean())


def f1(preds: Tensor, labels: Tensor, positive: int = 1) -> float:
    """F1 of class ``positive`` (the GLUE F1 of MRPC/QQP): 2 TP / (2 TP + FP + FN), 0 when undefined."""
    _check(preds, labels, "f1")
    p, y = preds == positive, labels == positive
    tp = int((p & y).sum())
    denom = 2 * tp + int((p & ~y).sum()) + int((~p & y).sum())
    return 2 * tp / denom if denom else 0.0


def ece(probs: Tensor, labels: Tensor, bins: int = 10) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins ``(m-1)/bins, m/bins]``.

    The confidence is the largest probability of a row, correct means its argmax is the label;
    ECE = sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|.
    """
    if probs.dim() != 2 or probs.shape[0] != labels.shape[0] or labels.dim() != 1:
        raise LmftError(f"ece: probabilities {tuple(probs.shape)} and labels {tuple(labels.shape)} must be [N, C] and [N]")
    if probs.shape[0] == 0 or bins < 1:
        raise LmftError(f"ece: needs examples and at least one bin (got {probs.shape[0]} examples, {bins} bins)")
    conf, pred = probs.double().max(dim=1)
    correct = (pred == labels).double()
    edges = torch.arange(1, bins, dtype=torch.float64) / bins  # inner edges; bucketize puts edge values left
    which = torch.bucketize(conf, edges, right=False)
    total = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * (correct[sel].mean() - conf[sel].mean()).abs()
    return float(total / probs.shape[0])


def majority_share(labels: Tensor) -> float:
    """The most frequent class's share of ``labels`` ``[N]``: the accuracy of always predicting it."""
    if labels.dim() != 1 or labels.numel() == 0:
        raise LmftError(f"majority share: labels {tuple(labels.shape)} must be a non-empty [N]")
    return labels.bincount().max().item() / labels.numel()
