"""Evaluate a Classifier on a split: class logits, cross-entropy loss, the task metric and ECE.

A :class:`Split` is a tokenised k-shot table: one :class:`~lmft.data.templates.Encoded` example and one
class index per row. Evaluation runs in eval mode without gradients, in batches of examples
sorted by length (less padding, same result: the attention mask hides the padding), and returns
the logits in the split's row order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmft.data.templates import Encoded
from lmft.io import LmftError
from lmft.models import metrics
from lmft.models.batching import collate

ECE_BINS = 10
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "mask_pos")


@dataclass
class Split:
    """A tokenised split: ``items[i]`` is row i, ``labels[i]`` its class index."""

    items: list[Encoded]
    labels: list[int]
    pad_id: int
    name: str = "split"

    def __post_init__(self) -> None:
        if len(self.items) != len(self.labels):
            raise LmftError(f"{self.name}: {len(self.items)} examples but {len(self.labels)} labels")
        if not self.items:
            raise LmftError(f"{self.name}: no examples")

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """The padded batch of ``rows`` (see :mod:`lmft.models.batching`)."""
        return collate([self.items[i] for i in rows], [self.labels[i] for i in rows], self.pad_id)


@dataclass
class Evaluation:
    """Scores of a classifier on a split. ``logits`` ``[N, C]`` float32, ``labels`` ``[N]``."""

    logits: torch.Tensor
    labels: torch.Tensor
    metric_name: str
    loss: float = field(init=False)
    metric: float = field(init=False)
    ece: float = field(init=False)

    def __post_init__(self) -> None:
        self.loss = float(F.cross_entropy(self.logits, self.labels))
        self.metric = score(self.preds, self.labels, self.metric_name)
        self.ece = float(metrics.ece(self.probs, self.labels, bins=ECE_BINS))

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(-1)

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    def predictions(self, rows: Sequence[int], **tags: str) -> pd.DataFrame:
        """The per-example table every scored run leaves beside its metrics.json (``predictions.parquet``):
        the ``tags`` as constant leading columns (e.g. ``model``, ``split``), then ``index`` (int64: the
        row of the split's file that each scored example ``[N]`` is), ``label`` and ``pred`` (int64) and
        ``probs`` (a list of C float64: the softmax of the logits)."""
        if len(rows) != len(self.labels):
            raise LmftError(f"predictions: {len(rows)} row indices for {len(self.labels)} scored examples")
        return pd.DataFrame({**{k: [v] * len(rows) for k, v in tags.items()},
                             "index": pd.array(rows, dtype="int64"), "label": self.labels.numpy().astype("int64"),
                             "pred": self.preds.numpy().astype("int64"), "probs": list(self.probs.double().numpy())})


def score(preds: torch.Tensor, labels: torch.Tensor, metric_name: str) -> float:
    """The task metric (``acc`` or binary ``f1`` of class 1) of predictions ``[N]`` against ``labels`` ``[N]``."""
    if metric_name == "acc":
        return float(metrics.accuracy(preds, labels))
    if metric_name == "f1":
        return float(metrics.f1(preds, labels))
    raise LmftError(f"unknown metric {metric_name!r}; expected acc or f1")


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of ``Classifier.forward`` (a batch without its labels)."""
    return {k: batch[k] for k in MODEL_INPUTS}


def progress_disabled() -> bool:
    """tqdm bars are off when ``TQDM_DISABLE`` is set to a true value (tests set it)."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


@torch.no_grad()
def predict(clf: torch.nn.Module, split: Split, batch_size: int = 32, device: torch.device | str = "cpu",
            desc: str | None = None) -> torch.Tensor:
    """Class logits ``[N, C]`` (float32, on the CPU) of every example of ``split``, in row order.

    The module is put in eval mode for the pass and back in its previous mode after it.
    """
    if batch_size < 1:
        raise LmftError(f"eval batch size must be at least 1, got {batch_size}")
    was_training = clf.training
    clf.eval()
    order = sorted(range(len(split)), key=lambda i: len(split.items[i].input_ids))
    out: list[torch.Tensor | None] = [None] * len(split)
    try:
        starts = range(0, len(order), batch_size)
        for s in tqdm(starts, desc=desc or f"eval {split.name}", leave=False, disable=progress_disabled()):
            rows = order[s:s + batch_size]
            logits = clf(**model_inputs(to_device(split.batch(rows), device))).float().cpu()
            for r, row in zip(rows, logits):
                out[r] = row
    finally:
        clf.train(was_training)
    return torch.stack(out)  # type: ignore[arg-type]


def evaluate(clf: torch.nn.Module, split: Split, metric_name: str, batch_size: int = 32,
             device: torch.device | str = "cpu", desc: str | None = None) -> Evaluation:
    """Logits, mean cross-entropy, metric and ECE (10 equal-width bins) of ``clf`` on ``split``."""
    logits = predict(clf, split, batch_size, device, desc)
    return Evaluation(logits, torch.tensor(split.labels, dtype=torch.long), metric_name)
