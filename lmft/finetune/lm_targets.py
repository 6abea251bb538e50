"""Prompts and targets of generation tasks for a causal LM: token ids, -100 labels, the target loss.

A generation example is a prompt (the task's ``prompt`` format string over ``text_a``/``text_b``)
followed by its target: ``" " + target`` and the task's first stop string (``"\\n"``), so that a
model trained on it ends its answer where greedy decoding stops; a task without stop strings ends
the target with the tokenizer's EOS token instead. Token ids are ``causal_prefix + tokens(prompt)``
and ``tokens(" " + target + end)``, tokenised apart so that the prompt's ids are the same with and
without the target (what decoding is given).

Long inputs are cut to the task's ``max_length`` prompt tokens by shortening ``text_a`` (an
article; the question and template words stay whole), keeping its first tokens: the lead of a
news article carries its summary.

Training labels are the input ids with -100 on every prompt and padding position, so the loss is
the cross-entropy of the target tokens alone (Hugging Face's convention): :func:`target_loss`
computes it from the hidden states at the target positions only, never a ``[B, L, vocab]`` tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tqdm.auto import tqdm

from lmft.data.tasks import GenerationTask
from lmft.data.templates import causal_prefix
from lmft.io import LmftError
from lmft.models.batching import pad_id
from lmft.models.evaluate import progress_disabled

IGNORE = -100
DEMO_SEPARATOR = "\n\n"


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_text(task: GenerationTask, tokenizer: Any, text_a: str, text_b: str | None = None,
                max_length: int | None = None) -> str:
    """The task's prompt for one input, ``text_a`` cut (from its end) so the prompt has at most
    ``max_length`` tokens (default the task's); raises when the template alone does not fit."""
    budget = task.max_length if max_length is None else max_length
    full = task.format_prompt(text_a, text_b)
    if len(_ids(tokenizer, full)) <= budget:
        return full
    fixed = len(_ids(tokenizer, task.format_prompt("", text_b)))
    keep = budget - fixed
    ids = _ids(tokenizer, text_a)
    while keep > 0:  # a cut can merge with its neighbours into other tokens: shrink until it fits
        text = task.format_prompt(tokenizer.decode(ids[:keep]).rstrip(), text_b)
        over = len(_ids(tokenizer, text)) - budget
        if over <= 0:
            return text
        keep -= over
    raise LmftError(f"task {task.name!r}: the prompt without its input already has {fixed} tokens, "
                    f"more than max_length {budget}; raise max_length")


def target_text(task: GenerationTask, target: str) -> str:
    """What follows the prompt in training and demonstrations: a space, the target, the first stop string."""
    return " " + target + (task.stop[0] if task.stop else "")


def target_ids(task: GenerationTask, tokenizer: Any, target: str) -> list[int]:
    """Token ids of :func:`target_text`, plus EOS for a task without stop strings."""
    ids = _ids(tokenizer, target_text(task, target))
    if not task.stop:
        if tokenizer.eos_token_id is None:
            raise LmftError(f"task {task.name!r} has no stop strings and the tokenizer no EOS token: "
                            "the model could not learn where an answer ends; give the task a stop string")
        ids.append(int(tokenizer.eos_token_id))
    return ids


def prompt_ids(task: GenerationTask, tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt as a causal LM starts a text (:func:`lmft.data.templates.causal_prefix`)."""
    return causal_prefix(tokenizer) + _ids(tokenizer, prompt)


def _texts(df: pd.DataFrame) -> list[tuple[str, str | None]]:
    text_b = df["text_b"] if "text_b" in df.columns else [None] * len(df)
    return [(a, b if isinstance(b, str) else None) for a, b in zip(df["text_a"], text_b)]


def prompts(df: pd.DataFrame, task: GenerationTask, tokenizer: Any) -> list[list[int]]:
    """Zero-shot prompt ids of every row of a k-shot table."""
    return [prompt_ids(task, tokenizer, prompt_text(task, tokenizer, a, b)) for a, b in _texts(df)]


def icl_prompts(df: pd.DataFrame, support: pd.DataFrame, task: GenerationTask, tokenizer: Any, n_demos: int,
                seed: int) -> list[list[int]]:
    """In-context prompts: per row, ``n_demos`` demonstrations of the support set (k-shot train), then the row.

    Each row draws its own order of the support set from one ``RandomState(seed)`` stream (the
    problem set's seeded permutation) and takes its first ``n_demos``; demonstrations are
    ``prompt + target`` (each input cut to the task's ``max_length``), separated by a blank line.
    """
    if not 1 <= n_demos <= len(support):
        raise LmftError(f"icl: demos must be between 1 and the {len(support)} support examples, got {n_demos}")
    demos = [prompt_text(task, tokenizer, a, b) + target_text(task, t).rstrip("\n")
             for (a, b), t in zip(_texts(support), support["target"])]
    rng = np.random.RandomState(seed)
    out = []
    for a, b in _texts(df):
        order = rng.permutation(len(support))[:n_demos]
        text = DEMO_SEPARATOR.join([demos[i] for i in order] + [prompt_text(task, tokenizer, a, b)])
        out.append(prompt_ids(task, tokenizer, text))
    return out


@dataclass
class LMSplit:
    """Prompt + target examples for teacher forcing: ``input_ids[i]`` with ``labels[i]`` (-100 on the prompt)."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    pad_id: int
    name: str = "split"

    def __post_init__(self) -> None:
        if not self.input_ids:
            raise LmftError(f"{self.name}: no examples")

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows: Sequence[int]) -> dict[str, Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` ``[B, L]`` (-100 on padding)."""
        width = max(len(self.input_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            n = len(self.input_ids[i])
            ids[j, :n] = torch.tensor(self.input_ids[i])
            labels[j, :n] = torch.tensor(self.labels[i])
            attn[j, :n] = 1
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def with_targets(prompt_ids: list[list[int]], df: pd.DataFrame, task: GenerationTask, tokenizer: Any,
                 name: str = "split") -> LMSplit:
    """The teacher-forcing split of prompts (one per row of ``df``), each followed by its row's target ids."""
    ids, labels = [], []
    for p, t in zip(prompt_ids, df["target"]):
        tgt = target_ids(task, tokenizer, t)
        ids.append(p + tgt)
        labels.append([IGNORE] * len(p) + tgt)
    return LMSplit(ids, labels, pad_id(tokenizer), name)


def lm_split(df: pd.DataFrame, task: GenerationTask, tokenizer: Any, name: str = "split") -> LMSplit:
    """The teacher-forcing split of a k-shot table: each row's zero-shot prompt ids, then its target ids."""
    return with_targets(prompts(df, task, tokenizer), df, task, tokenizer, name)


def target_logits(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """LM logits ``[T, vocab]`` at the T positions that predict a target token, and those tokens ``[T]``.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``labels`` ``[B, L]``; position t predicts
    token t + 1, so the logits come from the hidden states ``[:, :-1]`` where ``labels[:, 1:]`` is not -100.
    """
    hidden = model.base_model(input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"]).last_hidden_state  # [B, L, H]
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE  # [B, L - 1]
    if not where.any():
        raise LmftError("a batch without target tokens: every label is -100")
    logits = model.get_output_embeddings()(hidden[:, :-1][where])  # [T, vocab]
    return logits.to(torch.promote_types(logits.dtype, torch.float32)), targets[where]


def target_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean cross-entropy of the target tokens (labels -100 elsewhere), a scalar."""
    logits, targets = target_logits(model, batch)
    return F.cross_entropy(logits, targets)


def teacher_forced(model: nn.Module, split: LMSplit, batch_size: int, device: torch.device | str,
                   desc: str = "dev") -> tuple[float, float]:
    """(target-token accuracy, mean target-token cross-entropy) of a causal LM on ``split``.

    Accuracy counts the target tokens that are the argmax after their prefix. Eval mode, no
    gradients; the model's training flag is restored.
    """
    was_training = model.training
    model.eval()
    hits, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for start in tqdm(range(0, len(split), batch_size), desc=desc, leave=False, disable=progress_disabled()):
            rows = range(start, min(start + batch_size, len(split)))
            logits, targets = target_logits(model, {k: v.to(device) for k, v in split.batch(rows).items()})
            hits += int((logits.argmax(-1) == targets).sum())
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            total += targets.numel()
    model.train(was_training)
    return hits / total, loss_sum / total
