"""k-shot splits exactly as LM-BFF's ``tools/generate_k_shot_data.py`` makes them.

Per seed: ``np.random.seed(seed)``, shuffle the training rows, group them by label in order of
first appearance; train = the first k of each label, dev = the next k of each label. The test set
is the task's test set; above ``test_cap`` rows it is capped to a fixed subset drawn once with
seed 42 (LM-BFF's ``k-shot-1k-test`` mode, used by the kernel and MeZO papers): GLUE-style tasks
shuffle with ``np.random.seed(42)`` and keep the first rows, CSV-style tasks take
``DataFrame.sample(n, random_state=42)``. A legacy ``RandomState(seed)`` draws the same stream as
the global ``np.random.seed(seed)``, without touching global state.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lmft.io import LmftError

TEST_SEED = 42


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
    out = []
    for split in ("train", "dev"):
        df = train.iloc[take[split]].copy()
        df.insert(0, "idx", take[split])
        out.append(df.reset_index(drop=True))
    return out[0], out[1]


def cap_test(test: pd.DataFrame, cap: int | None, style: str = "glue") -> pd.DataFrame:
    """The fixed test subset: all rows up to ``cap``, else ``cap`` rows drawn with seed 42."""
    test = test.copy()
    test.insert(0, "idx", range(len(test)))
    if cap is None or len(test) <= cap:
        return test.reset_index(drop=True)
    if style == "csv":
        return test.sample(n=cap, random_state=TEST_SEED).reset_index(drop=True)
    if style != "glue":
        raise LmftError(f"unknown test cap style {style!r}")
    order = list(range(len(test)))
    np.random.RandomState(TEST_SEED).shuffle(order)
    return test.iloc[order[:cap]].reset_index(drop=True)
