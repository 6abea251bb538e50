"""The classifier loss every optimiser minimises (AdamW, SGD, MeZO; the memory job's steps).

``label-words`` is the cross-entropy over the class logits ``[B, C]`` (the label words' scores,
MeZO's recipe); ``lm`` over the whole vocabulary at the mask or next-token position, the causal
LM loss with labels -100 everywhere but the label word (or the MLM loss at the mask).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmft.io import LmftError
from lmft.models.heads import Classifier

LOSSES = ("label-words", "lm")


def check_loss(model: nn.Module, loss: str) -> None:
    """Raise :class:`LmftError` unless :func:`classifier_loss` can compute ``loss`` for ``model``."""
    if loss not in LOSSES:
        raise LmftError(f"unknown loss {loss!r}; one of {', '.join(LOSSES)}")
    if loss == "lm":
        if not isinstance(model, Classifier):
            raise LmftError(f"the lm loss needs a lmft.models.heads.Classifier, got {type(model).__name__}")
        model.vocab_head()


def classifier_loss(model: nn.Module, batch: Mapping[str, Tensor], loss: str = "label-words") -> Tensor:
    """Mean training cross-entropy of a Classifier on a batch (``[B, L]`` inputs, ``mask_pos`` and ``labels`` ``[B]``).

    ``label-words``: over the class logits ``[B, C]`` (the label words' scores, MeZO's recipe).
    ``lm``: over the whole vocabulary at ``mask_pos`` (:meth:`Classifier.vocab_logits`
    ``[B, vocab]``), the target being the true class's label-word id: the causal LM loss with
    labels -100 everywhere but the label word (or the MLM loss at the mask). Computed in float32
    at least (half-precision logits are upcast), float64 for a float64 model.
    """
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "token_type_ids": batch.get("token_type_ids"), "mask_pos": batch.get("mask_pos")}
    check_loss(model, loss)
    if loss == "lm":
        logits, labels = model.vocab_logits(**inputs), model.label_ids[batch["labels"]]
    else:
        logits, labels = model(**inputs), batch["labels"]
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)
