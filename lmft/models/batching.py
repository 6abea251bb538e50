"""From k-shot tables to padded tensor batches for the Classifier.

A batch is a dict of ``input_ids``, ``attention_mask``, ``token_type_ids`` (LongTensor
``[B, L]``, right-padded), ``mask_pos`` ``[B]`` and ``labels`` ``[B]`` (class index).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import torch

from lmft.data.tasks import Task
from lmft.data.templates import Encoded, encode
from lmft.io import LmftError


def encode_frame(df: pd.DataFrame, task: Task, tokenizer: Any, causal: bool = False,
                 max_length: int | None = None, template: str | None = None, head: str | None = None) -> list[Encoded]:
    """Tokenise every row (``text_a``, ``text_b``) of a k-shot table with the task's template.

    ``head`` (prompt, cls, causal), when given, picks the template and ``causal`` (see
    :meth:`Task.template_for`); the cls head of a causal LM reads the last token of the no-prompt input.
    """
    if head is not None:
        template, head_causal = task.template_for(head)
        causal = causal or head_causal
    template = template or (task.causal_template if causal else task.template)
    max_length = max_length or task.max_length
    text_b = df["text_b"] if "text_b" in df.columns else [None] * len(df)
    return [encode(template, [a, b], tokenizer, max_length, causal=causal) for a, b in zip(df["text_a"], text_b)]


def label_ids(df: pd.DataFrame, task: Task) -> list[int]:
    """Class indices of the rows' labels; raises on a label the task does not know."""
    index = task.label_index()
    out = []
    for row, lab in enumerate(df["label"].astype(str)):
        if lab not in index:
            raise LmftError(f"task {task.name!r}: row {row} has label {lab!r}, not one of {list(task.labels)}")
        out.append(index[lab])
    return out


def collate(items: list[Encoded], labels: list[int] | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into one batch."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(items), width), dtype=torch.long)
    attn = torch.zeros((len(items), width), dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        types[i, :n] = torch.tensor(e.token_type_ids)
        attn[i, :n] = 1
    batch = {"input_ids": ids, "attention_mask": attn, "token_type_ids": types,
             "mask_pos": torch.tensor([e.mask_pos for e in items], dtype=torch.long)}
    if labels is not None:
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
    return batch


def batches(items: list[Encoded], labels: list[int] | None, batch_size: int, pad_id: int,
            order: list[int] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches of ``batch_size`` examples in ``order`` (default: as given)."""
    order = list(range(len(items))) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield collate([items[i] for i in idx], None if labels is None else [labels[i] for i in idx], pad_id)


def pad_id(tokenizer: Any) -> int:
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return int(pid)
