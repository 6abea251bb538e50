"""k-shot splits: LM-BFF's algorithm, exactly."""

import numpy as np
import pandas as pd
import pytest

from lmft.io import LmftError
from lmft.kshot import cap_test, kshot_split


def frame(n_per_label: dict[str, int], seed: int = 0) -> pd.DataFrame:
    labels = [lab for lab, n in n_per_label.items() for _ in range(n)]
    np.random.RandomState(seed).shuffle(labels)
    return pd.DataFrame({"text_a": [f"text {i}" for i in range(len(labels))], "text_b": None, "label": labels})


def lmbff_reference(train: pd.DataFrame, k: int, seed: int):
    """LM-BFF's generate_k_shot_data.py on a list of lines (global numpy seeding, as it does)."""
    lines = train.values.tolist()
    np.random.seed(seed)
    np.random.shuffle(lines)
    groups = {}
    for line in lines:
        groups.setdefault(line[2], []).append(line)
    tr = [line for g in groups.values() for line in g[:k]]
    dev = [line for g in groups.values() for line in g[k:2 * k]]
    return [r[0] for r in tr], [r[0] for r in dev]


@pytest.mark.parametrize("seed", [13, 21, 42, 87, 100])
def test_matches_lmbff(seed):
    train = frame({"pos": 40, "neg": 55, "neu": 33})
    tr, dev = kshot_split(train, 16, seed)
    ref_tr, ref_dev = lmbff_reference(train, 16, seed)
    assert tr["text_a"].tolist() == ref_tr
    assert dev["text_a"].tolist() == ref_dev


def test_k_per_label_disjoint_and_seeded():
    train = frame({"a": 50, "b": 60})
    tr, dev = kshot_split(train, 8, 13)
    assert tr["label"].value_counts().to_dict() == {"a": 8, "b": 8}
    assert dev["label"].value_counts().to_dict() == {"a": 8, "b": 8}
    assert not set(tr["idx"]) & set(dev["idx"])
    assert kshot_split(train, 8, 13)[0].equals(tr)
    assert not kshot_split(train, 8, 21)[0]["idx"].equals(tr["idx"])


def test_k_too_large_names_counts():
    train = frame({"a": 50, "b": 20})
    with pytest.raises(LmftError, match=r"k=16 needs 32 .* \['b'\] .*a: 50, b: 20"):
        kshot_split(train, 16, 13, task="toy")


def test_test_cap_is_fixed_subset():
    test = frame({"a": 700, "b": 800})
    glue = cap_test(test, 1000, "glue")
    assert len(glue) == 1000 and glue.equals(cap_test(test, 1000, "glue"))
    order = list(range(len(test)))
    np.random.seed(42)
    np.random.shuffle(order)
    assert glue["idx"].tolist() == order[:1000]
    csv = cap_test(test, 1000, "csv")
    assert csv["idx"].tolist() == test.sample(n=1000, random_state=42).index.tolist()
    assert len(cap_test(test, None)) == 1500 and len(cap_test(test.head(10), 1000)) == 10
