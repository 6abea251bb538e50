"""Linear probe: a logistic regression on frozen features, its inverse L2 strength C chosen on dev.

Features are the hidden state that the classifier's head reads (:meth:`Classifier.features`):

- ``cls`` head: the input pooled as the head pools it (``Classifier.pooling``: [CLS], the mean
  over the non-padding tokens or the last token; by default as the model was trained, so
  MiniLM's probe reads its mean-pooled sentence embedding);
- ``prompt`` head: the mask position of the prompt (so the probe sees the same representation
  that the label words would score: MeZO's and the kernel paper's prompt-based probe);
- ``causal`` head: the last prompt token.

For the prompt and causal heads the probe is a new ``nn.Linear`` attached as ``clf.linear``,
which ``Classifier.forward`` uses in place of the label-word scores (reading the same position).
The regression is :func:`lmft.models.heads.fit_linear_head` on standardised features (each feature
centred and scaled by its training mean and standard deviation, so one C grid suits models whose
hidden states differ in scale); the scaling is then folded into the layer's weight and bias, so
the classifier takes raw inputs. C is the value of the grid with the best dev metric, ties going
to the lower dev loss and then to the smaller C (stronger regularisation).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lmft.io import LmftError
from lmft.models.evaluate import Evaluation, Split, model_inputs, progress_disabled, to_device
from lmft.models.heads import Classifier, fit_linear_head

log = logging.getLogger(__name__)

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


@torch.no_grad()
def extract_features(clf: Classifier, split: Split, batch_size: int = 32, device: torch.device | str = "cpu"
                     ) -> torch.Tensor:
    """Frozen features ``[N, H]`` (float32, CPU) of every example, in row order (eval mode)."""
    was_training = clf.training
    clf.eval()
    order = sorted(range(len(split)), key=lambda i: len(split.items[i].input_ids))
    out: list[torch.Tensor | None] = [None] * len(split)
    try:
        for s in tqdm(range(0, len(order), batch_size), desc=f"features {split.name}", leave=False,
                      disable=progress_disabled()):
            rows = order[s:s + batch_size]
            feats = clf.features(**model_inputs(to_device(split.batch(rows), device))).float().cpu()
            for r, f in zip(rows, feats):
                out[r] = f
    finally:
        clf.train(was_training)
    return torch.stack(out)  # type: ignore[arg-type]


def attach_linear(clf: Classifier) -> None:
    """Give a prompt or causal head a linear layer ``hidden -> C`` (zeros) and make it the only trainable part.

    A ``cls`` head already has one; it is kept. Every other parameter is frozen.
    """
    if clf.linear is None:
        hidden = clf.backbone.config.hidden_size
        p = next(clf.parameters())
        clf.linear = nn.Linear(hidden, clf.num_labels).to(device=p.device, dtype=p.dtype)
        nn.init.zeros_(clf.linear.weight)
        nn.init.zeros_(clf.linear.bias)
    for name, p in clf.named_parameters():
        p.requires_grad_(name.startswith("linear."))


@dataclass
class ProbeFit:
    """The chosen C and its dev scores; ``grid`` lists every C tried with its dev metric and loss."""

    C: float
    dev_metric: float
    dev_loss: float
    grid: list[dict[str, float]]


def fit_probe(clf: Classifier, train_x: torch.Tensor, train_y: torch.Tensor, dev_x: torch.Tensor,
              dev_y: torch.Tensor, metric_name: str, grid: tuple[float, ...] = C_GRID, max_iter: int = 1000
              ) -> ProbeFit:
    """Fit ``clf.linear`` on features ``train_x`` ``[N, H]`` / labels ``[N]`` for each C, keep the best on dev.

    Leaves ``clf.linear`` holding the chosen fit (taking raw, unstandardised features).
    """
    if clf.linear is None:
        raise LmftError("fit_probe needs a linear layer: call attach_linear first")
    if not grid or any(not c > 0 for c in grid):
        raise LmftError(f"probe C grid must be a non-empty list of positive numbers, got {list(grid)}")
    mean = train_x.double().mean(0)
    std = train_x.double().std(0, unbiased=False).clamp_min(1e-6)
    z_train = ((train_x.double() - mean) / std).float()
    rows, best = [], None
    for C in sorted(grid):
        _fit(clf, z_train, train_y, C, mean, std, max_iter)
        with torch.no_grad():
            ev = Evaluation(clf.linear(dev_x.to(clf.linear.weight)).float().cpu(), dev_y, metric_name)
        rows.append({"C": C, "dev_metric": ev.metric, "dev_loss": ev.loss})
        log.info("probe C=%g: dev loss %.4f %s %.4f", C, ev.loss, metric_name, ev.metric)
        if best is None or ev.metric > best["dev_metric"] or (ev.metric == best["dev_metric"]
                                                               and ev.loss < best["dev_loss"]):
            best = rows[-1]
    _fit(clf, z_train, train_y, best["C"], mean, std, max_iter)
    return ProbeFit(best["C"], best["dev_metric"], best["dev_loss"], rows)


def _fit(clf: Classifier, z: torch.Tensor, y: torch.Tensor, C: float, mean: torch.Tensor, std: torch.Tensor,
         max_iter: int) -> None:
    """Fit on standardised features ``z``, then fold the standardisation into ``clf.linear``."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # few-shot problems are often separable
        fit_linear_head(clf, z, y, l2=1.0 / C, max_iter=max_iter)
    with torch.no_grad():
        # w_z . (x - mean) / std + b_z = (w_z / std) . x + (b_z - (w_z / std) . mean)
        w = clf.linear.weight.double().cpu() / std  # [C, H]
        b = clf.linear.bias.double().cpu() - w @ mean
        clf.linear.weight.copy_(w)
        clf.linear.bias.copy_(b)
