"""Tokenising a k-shot table for a classifier: the :class:`~lmft.models.evaluate.Split` every stage scores.

The input follows the classifier: a causal LM reads the task's prompt, an encoder's prompt head the
task's template, an encoder's ``cls`` head the plain pair unless the run asked for the prompt. The
fine-tuning stage tokenises this way, and grafting, interpolation and the memory job the same way.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from lmft.data.tasks import Task
from lmft.data.templates import Encoded
from lmft.models.batching import encode_frame, label_ids, pad_id
from lmft.models.evaluate import Split
from lmft.models.heads import Classifier


def encode_plain(df: pd.DataFrame, tokenizer: Any, max_length: int) -> list[Encoded]:
    """No-prompt input ``[CLS] a [SEP] (b [SEP])`` (the tokenizer's own pair format), truncated longest first.

    ``mask_pos`` is 0: the ``cls`` head of an encoder reads the first token.
    """
    text_b = df["text_b"].tolist() if "text_b" in df.columns else [None] * len(df)
    out = []
    for a, b in zip(df["text_a"].tolist(), text_b):
        b = None if b is None or (isinstance(b, float) and math.isnan(b)) else str(b)
        enc = tokenizer(str(a), b, truncation=True, max_length=max_length)
        types = enc.get("token_type_ids") or [0] * len(enc["input_ids"])
        out.append(Encoded(list(enc["input_ids"]), list(types), 0))
    return out


def uses_prompt(clf: Classifier, prompt: bool | None) -> bool:
    """Whether inputs are rendered with the task's template (always, except a cls head on an encoder)."""
    if clf.head != "cls" or clf.causal:
        return True
    return bool(prompt)


def encode_split(df: pd.DataFrame, task: Task, tokenizer: Any, clf: Classifier, *, prompt: bool | None = None,
                 max_length: int | None = None, name: str = "split") -> Split:
    """Tokenise a k-shot table for ``clf`` the way the fine-tuning stage does (see :mod:`lmft.finetune.stage`)."""
    max_length = max_length or task.max_length
    if clf.causal:
        items = encode_frame(df, task, tokenizer, causal=True, max_length=max_length)
    elif uses_prompt(clf, prompt):
        items = encode_frame(df, task, tokenizer, max_length=max_length)
    else:
        items = encode_plain(df, tokenizer, max_length)
    return Split(items, label_ids(df, task), pad_id(tokenizer), name)
