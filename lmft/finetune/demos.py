"""In-context learning: prompts with demonstrations drawn from the k-shot training set, no training.

Sampling. For every query (a dev or test example) and every label, ``demos_per_label`` training
examples of that label are drawn without replacement from a ``numpy`` generator seeded with
``[seed, split]`` (one stream per split, so the test prompts do not depend on the dev set's size),
query by query in row order. Masked LMs list the demonstrations in label order (LM-BFF); causal
LMs in a random order from the same generator (so the last one is not always the same label).

Format. Each demonstration is the task's template with the label word (with a leading space, the
token that ``label_word_ids`` scores) in place of ``*mask*``:

- masked LMs (LM-BFF): the query's template, then the demonstrations' templates without ``*cls*``,
  each sentence part tokenised separately; a demonstration's ``*sep+*`` is a plain ``*sep*``, so
  the query is segment 0 and every demonstration segment 1 (BERT has two token types only);
- causal LMs: the demonstrations with the causal template, one per line, then the query up to
  its mask (``encode(causal=True)``): ``[prefix] demo_1 \\n demo_2 \\n ... \\n query``.

Truncation to ``max_length`` (default: the model's maximum input length): while the prompt is too
long, drop the last demonstration of the list; with none left, the query's sentences are
shortened as :func:`lmft.data.templates.encode` does (from their ends, longest first). Template words,
label words and the mask are never cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lmft.data.tasks import Task
from lmft.data.templates import Encoded, Part, encode, parse
from lmft.io import LmftError

SPLIT_STREAM = {"train": 0, "dev": 1, "test": 2}
UNBOUNDED = 10**9


def _part_str(p: Part, offset: int) -> str:
    """Write a parsed part back in template syntax, sentence index shifted by ``offset``."""
    if p.kind == "special":
        return p.value
    if p.kind == "sent":
        return f"{'+' if p.space else ''}sent{p.case}{'-' if p.drop_last else ''}_{p.sent + offset}"
    return p.value.replace(" ", "_")


def demo_parts(template: str, word: str, offset: int, causal: bool) -> list[str]:
    """Template parts of one demonstration: ``*mask*`` -> `` word``, sentences shifted by ``offset``.

    Masked LMs: ``*cls*`` dropped and ``*sep+*`` -> ``*sep*``; causal LMs: cut after the label word
    (as :func:`encode` cuts the query at its mask), ``*cls*`` and ``*sep*`` dropped.
    """
    if "*" in word or "_" in word:
        raise LmftError(f"label word {word!r}: '*' and '_' cannot appear in a demonstration's template")
    out = []
    for p in parse(template):
        if p.kind == "special" and p.value == "mask":
            out.append("_" + word)
            if causal:
                break
        elif p.kind == "special" and (p.value == "cls" or causal):
            continue
        elif p.kind == "special" and p.value == "sep+":
            out.append("sep")
        else:
            out.append(_part_str(p, offset))
    return out


def n_sentences(template: str) -> int:
    return max((p.sent for p in parse(template) if p.kind == "sent"), default=-1) + 1


def prompt_template(template: str, words: list[str], causal: bool) -> str:
    """The combined template of a query (sentences ``0..n-1``) and demonstrations with label ``words``.

    Demonstration ``j`` uses sentences ``(j + 1) n .. (j + 2) n - 1``.
    """
    n = n_sentences(template)
    demos = [demo_parts(template, w, (j + 1) * n, causal) for j, w in enumerate(words)]
    if causal:
        parts = [p for p in template.split("*") if p]
        if parts and parts[0] == "cls":
            head, query = ["cls"], parts[1:]
        else:
            head, query = [], parts
        body = [x for demo in demos for x in [*demo, "\n"]]
        return "*" + "*".join(head + body + query) + "*"
    return template + "*" + "*".join(x for demo in demos for x in demo) + "*" if demos else template


@dataclass
class Prompt:
    """One query's prompt: its encoding and how many demonstrations survived truncation."""

    encoded: Encoded
    n_demos: int
    n_sampled: int


def build_prompt(template: str, query: list[str | None], demos: list[tuple[list[str | None], str]], tokenizer: Any,
                 max_length: int, causal: bool) -> Prompt:
    """Encode ``query`` (its sentences) with ``demos`` (sentences, label word) under the truncation rule."""
    n = len(demos)
    while True:
        kept = demos[:n]
        texts = list(query) + [t for sents, _ in kept for t in sents]
        tpl = prompt_template(template, [w for _, w in kept], causal)
        if n == 0:
            return Prompt(encode(tpl, texts, tokenizer, max_length, causal=causal), 0, len(demos))
        enc = encode(tpl, texts, tokenizer, UNBOUNDED, causal=causal)
        if len(enc.input_ids) <= max_length:
            return Prompt(enc, n, len(demos))
        n -= 1


def sample_demos(labels: list[int], num_labels: int, per_label: int, rng: np.random.Generator,
                 shuffle: bool) -> list[int]:
    """Row indices of ``per_label`` demonstrations of each label (label order, or shuffled)."""
    rows = []
    for c in range(num_labels):
        pool = [i for i, lab in enumerate(labels) if lab == c]
        if len(pool) < per_label:
            raise LmftError(f"ICL: {per_label} demonstration(s) per label needed but label {c} has {len(pool)} "
                            "training example(s)")
        rows += [pool[i] for i in rng.choice(len(pool), size=per_label, replace=False)]
    if shuffle:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    return rows


def _texts(df: pd.DataFrame, n: int) -> list[list[str | None]]:
    cols = [df["text_a"].tolist(), df["text_b"].tolist() if "text_b" in df.columns else [None] * len(df)]
    return [[cols[j][i] for j in range(n)] if n else [] for i in range(len(df))]


def icl_encode(df: pd.DataFrame, train: pd.DataFrame, train_labels: list[int], task: Task, tokenizer: Any,
               causal: bool, max_length: int, per_label: int, seed: int, split: str) -> list[Prompt]:
    """Prompts of every row of ``df`` with demonstrations from ``train`` (class indices ``train_labels``)."""
    if per_label < 1:
        raise LmftError(f"ICL: demos_per_label must be at least 1, got {per_label}")
    if split not in SPLIT_STREAM:
        raise LmftError(f"ICL: unknown split {split!r}")
    template = task.causal_template if causal else task.template
    n = n_sentences(template)
    rng = np.random.default_rng([seed, SPLIT_STREAM[split]])
    pool = _texts(train, n)
    prompts = []
    for query in _texts(df, n):
        rows = sample_demos(train_labels, task.num_labels, per_label, rng, shuffle=causal)
        demos = [(pool[r], task.label_words[train_labels[r]]) for r in rows]
        prompts.append(build_prompt(template, query, demos, tokenizer, max_length, causal))
    return prompts
