"""k-shot splits: LM-BFF's algorithm, exactly; generation tasks' k-example splits."""

import numpy as np
import pandas as pd
import pytest

from lmft.data.kshot import (BALANCED_BY_DEFAULT, balances_test, cap_test, cap_test_examples, examples_info,
                             kshot_examples, kshot_split, split_info)
from lmft.io import LmftError


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


def test_balanced_test_counts_and_order():
    test = frame({"neg": 700, "pos": 300})
    bal = cap_test(test, 200, "balanced", ["neg", "pos"])
    assert bal["label"].value_counts().to_dict() == {"neg": 100, "pos": 100}
    assert bal["idx"].is_monotonic_increasing and (test["label"].iloc[bal["idx"]].to_numpy() == bal["label"]).all()
    assert len(cap_test(test, 201, "balanced", ["neg", "pos"])) == 200  # cap // C per label, the rest unused
    assert len(cap_test(test, None, "balanced")) == 1000  # no cap: the whole test set


def test_balanced_test_is_fixed():
    test = frame({"a": 300, "b": 120, "c": 90})
    bal = cap_test(test, 150, "balanced", ["a", "b", "c"])
    assert bal.equals(cap_test(test, 150, "balanced", ["a", "b", "c"]))
    # each label drawn by its own RandomState(42) permutation of that label's rows
    rows_a = np.flatnonzero(test["label"] == "a")
    assert set(bal.loc[bal["label"] == "a", "idx"]) == set(rows_a[np.random.RandomState(42).permutation(300)[:50]])
    # a smaller cap keeps a subset of a larger one's; other labels' rows do not move a label's subset
    assert set(cap_test(test, 60, "balanced", ["a", "b", "c"])["idx"]) < set(bal["idx"])
    only_a = test[test["label"] == "a"].reset_index(drop=True)
    assert set(cap_test(only_a, 50, "balanced", ["a"])["text_a"]) == set(bal.loc[bal["label"] == "a", "text_a"])


def test_balanced_test_short_label_keeps_all(caplog):
    test = frame({"a": 500, "b": 30})
    bal = cap_test(test, 100, "balanced", ["a", "b"])
    assert bal["label"].value_counts().to_dict() == {"a": 50, "b": 30}
    assert "label 'b' has 30 rows, fewer than test_cap // 2 = 50" in caplog.text
    info = split_info({"train": test.head(4), "dev": test.head(4), "test": bal}, ["a", "b"], "balanced", 100, 530)
    assert info["test_short_labels"] == ["b"] and info["label_counts"]["test"] == {"a": 50, "b": 30}
    assert info["majority_baseline"] == pytest.approx(50 / 80)


def test_balanced_test_small_caps():
    test = frame({"a": 40, "b": 30, "c": 20})
    assert cap_test(test, 3, "balanced", ["a", "b", "c"])["label"].value_counts().to_dict() == {"a": 1, "b": 1, "c": 1}
    with pytest.raises(LmftError, match=r"test_cap 2 is below the 3 labels"):
        cap_test(test, 2, "balanced", ["a", "b", "c"])
    assert len(cap_test(test, 5, "glue")) == 5 and len(cap_test(test, 5, "csv")) == 5


def test_which_tasks_balance():
    assert balances_test("tweets-2", True) and balances_test("bbc-5", True)
    assert not balances_test("sst-2", True) and not balances_test("snli", True)  # the papers' test sets
    assert not balances_test("tweets-2", False)
    assert balances_test("sst-2", ["sst-2"]) and not balances_test("tweets-2", ["sst-2"])


def examples(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text_a": [f"doc {i}" for i in range(n)], "text_b": None,
                         "target": [f"summary {i}" for i in range(n)]})


def test_generation_split_exact_rows():
    train = examples(10)
    tr, dev = kshot_examples(train, 2, 13)
    # np.random.RandomState(13).permutation(10) = [3, 5, 6, 1, 4, 7, 8, 9, 0, 2]
    assert tr["idx"].tolist() == [3, 5] and dev["idx"].tolist() == [6, 1]
    assert tr.columns.tolist() == ["idx", "text_a", "text_b", "target"]
    assert tr["target"].tolist() == ["summary 3", "summary 5"]
    tr21, dev21 = kshot_examples(train, 3, 21)  # [1, 2, 7, 3, 5, 6, 0, 4, 8, 9]
    assert tr21["idx"].tolist() == [1, 2, 7] and dev21["idx"].tolist() == [3, 5, 6]
    assert kshot_examples(train, 2, 13)[0].equals(tr)


def test_generation_split_errors_say_the_counts():
    with pytest.raises(LmftError, match=r"task summ: k=4 needs 8 training examples \(4 train \+ 4 dev\), but the "
                                         r"training set has 7"):
        kshot_examples(examples(7), 4, 13, task="summ")
    assert len(kshot_examples(examples(8), 4, 13)[1]) == 4
    with pytest.raises(LmftError, match="k must be at least 1"):
        kshot_examples(examples(8), 0, 13)


def test_generation_test_subset_fixed_in_file_order():
    test = examples(20)
    capped = cap_test_examples(test, 5)
    assert capped["idx"].tolist() == [0, 1, 8, 15, 17]  # sorted(RandomState(42).permutation(20)[:5])
    assert capped["target"].tolist() == [f"summary {i}" for i in (0, 1, 8, 15, 17)]
    assert set(cap_test_examples(test, 3)["idx"]) < set(capped["idx"])  # a smaller cap keeps a subset
    assert cap_test_examples(test, None)["idx"].tolist() == list(range(20))
    assert cap_test_examples(test, 20)["idx"].tolist() == list(range(20))
    info = examples_info({"train": test.head(2), "dev": test.head(2), "test": capped}, 5, 20)
    assert info["counts"] == {"train": 2, "dev": 2, "test": 5} and info["n_test_source"] == 20
    assert info["test_cap"] == 5 and "RandomState(42)" in info["test_draw"] and "majority_baseline" not in info


def test_generation_tasks_are_not_balanced():
    assert BALANCED_BY_DEFAULT == ("tweets-2", "tweets-3", "rt-polarity", "bbc-5")
    assert not balances_test("bbc-summary", True) and not balances_test("xsum", True)
