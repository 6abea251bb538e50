"""k-shot splits exactly as LM-BFF's ``tools/generate_k_shot_data.py`` makes them.

Per seed: ``np.random.seed(seed)``, shuffle the training rows, group them by label in order of
first appearance; train = the first k of each label, dev = the next k of each label. The test set
is the task's test set; above ``test_cap`` rows it is capped to a fixed subset drawn once with
seed 42 (LM-BFF's ``k-shot-1k-test`` mode, used by the kernel and MeZO papers): GLUE-style tasks
shuffle with ``np.random.seed(42)`` and keep the first rows, CSV-style tasks take
``DataFrame.sample(n, random_state=42)``. A legacy ``RandomState(seed)`` draws the same stream as
the global ``np.random.seed(seed)``, without touching global state.

Balanced test sets (``kshot.test_balance``). The embedded tasks hold out their test set from
skewed package data (tweets-2's is 70% negative), where "always the majority class" beats a
method that learnt something. Their capped test set is balanced instead (style ``balanced``):
``test_cap // C`` rows of each of the C labels, drawn from each label's rows with its own
``RandomState(42)`` permutation, so the subset depends neither on the k-shot seed nor on the other
labels, and a smaller cap keeps a subset of a larger cap's. A label with fewer rows keeps all of
them (logged, and listed in the split's ``info.json``). Balancing applies whenever ``test_cap`` is
set, also to a test set smaller than the cap; ``test_cap: null`` keeps the whole test set. The
seeds' tasks keep their test sets as the papers have them; ``test_balance`` can name other tasks.

Each split also gets an ``info.json`` (:func:`split_info`): per-label counts of train, dev and
test, how the test subset was drawn, and the test set's majority-class accuracy, the trivial
baseline to read every test score against.

Generation tasks have no labels: their split takes k examples, not k per label
(:func:`kshot_examples`): per seed, ``np.random.RandomState(seed).permutation`` of the training
rows, train = its first k rows, dev = the next k. Their capped test set (:func:`cap_test_examples`)
is the first ``test_cap`` rows of one ``RandomState(42)`` permutation of the test rows, kept in
file order, the same for every k-shot seed; balancing does not apply. Their ``info.json``
(:func:`examples_info`) has the counts and how the test subset was drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from lmft.data.tasks import BUILTIN, EMBEDDED_TASKS, SEED_TASKS
from lmft.io import LmftError

TEST_SEED = 42
# Embedded classification tasks whose test set is a holdout of package data; snli's is the official
# test set, and a generation task has no labels to balance.
BALANCED_BY_DEFAULT = tuple(t for t in EMBEDDED_TASKS
                            if t not in SEED_TASKS and BUILTIN[t].kind == "classification")
# How cap_test_examples draws a generation task's test subset (recorded in info.json).
EXAMPLES_TEST_DRAW = ("the first test_cap rows of np.random.RandomState(42).permutation(n_test_source), in file order "
                      "(every row when test_cap is null or n_test_source is at most test_cap)")

log = logging.getLogger(__name__)


def balances_test(task: str, setting: bool | Sequence[str]) -> bool:
    """Whether ``task`` gets a balanced test set under ``kshot.test_balance`` (true: the embedded
    tasks of :data:`BALANCED_BY_DEFAULT`; false: none; a list: exactly the tasks it names)."""
    if isinstance(setting, bool):
        return setting and task in BALANCED_BY_DEFAULT
    return task in setting


def kshot_split(train: pd.DataFrame, k: int, seed: int, task: str = "task") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (train, dev) with k rows per label each; raises when a label has fewer than 2k rows.

    Rows keep their index in ``train`` in an ``idx`` column.
    """
    if k < 1:
        raise LmftError(f"k must be at least 1, got {k}")
    order = list(range(len(train)))
    np.random.RandomState(seed).shuffle(order)  # shuffling positions permutes exactly as shuffling the rows
    labels = train["label"].to_numpy()
    groups: dict[str, list[int]] = {}
    for i in order:
        groups.setdefault(labels[i], []).append(i)
    short = {lab: len(rows) for lab, rows in groups.items() if len(rows) < 2 * k}
    if short:
        counts = ", ".join(f"{lab}: {len(rows)}" for lab, rows in sorted(groups.items()))
        raise LmftError(f"task {task}: k={k} needs {2 * k} training examples per label ({k} train + {k} dev), but "
                        f"label(s) {sorted(short)} have fewer; counts per label: {counts}")
    take = {"train": [], "dev": []}
    for rows in groups.values():
        take["train"] += rows[:k]
        take["dev"] += rows[k:2 * k]
    return _rows(train, take["train"]), _rows(train, take["dev"])


def _rows(df: pd.DataFrame, positions: Sequence[int]) -> pd.DataFrame:
    """The rows at ``positions``, in that order, numbered by their position in an ``idx`` column."""
    out = df.iloc[list(positions)].copy()
    out.insert(0, "idx", list(positions))
    return out.reset_index(drop=True)


def kshot_examples(train: pd.DataFrame, k: int, seed: int, task: str = "task") -> tuple[pd.DataFrame, pd.DataFrame]:
    """A generation task's (train, dev): k rows each (see the module doc); raises below 2k rows.

    Rows keep their index in ``train`` in an ``idx`` column.
    """
    if k < 1:
        raise LmftError(f"k must be at least 1, got {k}")
    if len(train) < 2 * k:
        raise LmftError(f"task {task}: k={k} needs {2 * k} training examples ({k} train + {k} dev), but the training "
                        f"set has {len(train)}")
    order = np.random.RandomState(seed).permutation(len(train)).tolist()
    return _rows(train, order[:k]), _rows(train, order[k:2 * k])


def cap_rows(n: int, cap: int | None) -> list[int]:
    """Positions of the rows kept of ``n`` under ``cap``: all, or ``cap`` drawn once with
    ``RandomState(42)``, in file order (a generation task's test cap, and every stage's ``eval_cap``)."""
    if cap is None or n <= cap:
        return list(range(n))
    return sorted(np.random.RandomState(TEST_SEED).permutation(n)[:cap].tolist())


def cap_test_examples(test: pd.DataFrame, cap: int | None) -> pd.DataFrame:
    """A generation task's fixed test subset (:data:`EXAMPLES_TEST_DRAW`), rows numbered in ``idx``."""
    return _rows(test, cap_rows(len(test), cap))


def examples_info(splits: Mapping[str, pd.DataFrame], test_cap: int | None, n_test_source: int) -> dict[str, Any]:
    """What a generation task's k-shot split holds: the rows of each split, how the test subset was
    drawn (``test_cap`` rows of the ``n_test_source`` the task has)."""
    return {"counts": {name: len(df) for name, df in splits.items()}, "test_cap": test_cap,
            "n_test_source": n_test_source, "test_draw": EXAMPLES_TEST_DRAW}


def cap_test(test: pd.DataFrame, cap: int | None, style: str = "glue",
             labels: Sequence[str] | None = None) -> pd.DataFrame:
    """The fixed test subset, rows numbered in ``idx``; ``cap`` None keeps every row.

    Styles ``glue`` and ``csv`` (LM-BFF): all rows up to ``cap``, else ``cap`` rows drawn with
    seed 42. Style ``balanced``: :func:`balanced_rows` over ``labels`` (default: the test set's).
    """
    test = test.copy()
    test.insert(0, "idx", range(len(test)))
    if cap is None:
        return test.reset_index(drop=True)
    if style == "balanced":
        labels = sorted(test["label"].unique()) if labels is None else labels
        return test.iloc[balanced_rows(test["label"], cap, labels)].reset_index(drop=True)
    if len(test) <= cap:
        return test.reset_index(drop=True)
    if style == "csv":
        return test.sample(n=cap, random_state=TEST_SEED).reset_index(drop=True)
    if style != "glue":
        raise LmftError(f"unknown test cap style {style!r}")
    order = list(range(len(test)))
    np.random.RandomState(TEST_SEED).shuffle(order)
    return test.iloc[order[:cap]].reset_index(drop=True)


def balanced_rows(labels_of_rows: pd.Series, cap: int, labels: Sequence[str]) -> list[int]:
    """Positions of the balanced subset (see the module doc), in test-set order."""
    per_label = cap // len(labels)
    if per_label < 1:
        raise LmftError(f"kshot.test_cap {cap} is below the {len(labels)} labels {list(labels)}: a balanced test "
                        "set needs at least one row per label; raise test_cap or turn kshot.test_balance off")
    values = labels_of_rows.to_numpy()
    keep: list[int] = []
    for lab in labels:
        rows = np.flatnonzero(values == lab)
        if len(rows) < per_label:
            log.warning("balanced test set: label %r has %d rows, fewer than test_cap // %d = %d; all of them kept",
                        lab, len(rows), len(labels), per_label)
        keep += rows[np.random.RandomState(TEST_SEED).permutation(len(rows))[:per_label]].tolist()
    return sorted(keep)


def split_info(splits: Mapping[str, pd.DataFrame], labels: Sequence[str], test_style: str,
               test_cap: int | None, n_test_source: int) -> dict[str, Any]:
    """What a k-shot split holds: per-label counts of each split, how the test subset was drawn
    (``test_style``, ``test_cap``, the ``n_test_source`` rows it was drawn from), the labels a
    balanced test set has too few rows of, and the test set's majority-class accuracy."""
    counts = {name: {lab: int((df["label"] == lab).sum()) for lab in labels} for name, df in splits.items()}
    test = counts["test"]
    per_label = test_cap // len(labels) if test_style == "balanced" and test_cap is not None else None
    return {"label_counts": counts, "test_style": test_style, "test_cap": test_cap, "n_test_source": n_test_source,
            "test_short_labels": sorted(lab for lab, n in test.items() if per_label and n < per_label),
            "majority_baseline": max(test.values()) / sum(test.values())}
