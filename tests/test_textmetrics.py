"""ROUGE, exact match and token F1 on texts whose scores can be counted by hand."""

import pytest

from lmft.finetune.textmetrics import example_scores, mean_scores, normalise_answer, qa, rouge, token_f1
from lmft.io import LmftError


def test_rouge_by_hand():
    # 2 of 3 unigrams shared (P = R = 2/3), 1 of 2 bigrams, LCS "the cat" of length 2
    s = rouge(["the cat sat"], ["the cat ran"])
    assert s["rouge1"] == [pytest.approx(2 / 3)]
    assert s["rouge2"] == [pytest.approx(1 / 2)]
    assert s["rougeL"] == [pytest.approx(2 / 3)]
    assert rouge(["Cats are running."], ["cat is run"])["rouge1"][0] == pytest.approx(2 / 3)  # Porter stems
    assert rouge(["x"], ["y z"]) == {"rouge1": [0.0], "rouge2": [0.0], "rougeL": [0.0]}


def test_rougeL_counts_order():
    # the same bag of words, reversed: ROUGE-1 is perfect, the longest common subsequence is one word
    s = rouge(["sat cat the"], ["the cat sat"])
    assert s["rouge1"] == [pytest.approx(1.0)] and s["rougeL"] == [pytest.approx(1 / 3)]


def test_qa_scores():
    assert normalise_answer("  The Kitchen. ") == "kitchen"
    assert token_f1("in the kitchen", "kitchen") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert token_f1("", "") == 1.0 and token_f1("a", "kitchen") == 0.0  # "a" is an article: nothing left
    s = qa(["The kitchen.", "garden", "in the hallway"], ["kitchen", "bathroom", "hallway"])
    assert s["em"] == [1.0, 0.0, 0.0]
    assert s["f1"] == pytest.approx([1.0, 0.0, 2 / 3])


def test_means_and_errors():
    assert mean_scores(example_scores(["a b", "c"], ["a b", "d"], "rouge"))["rouge1"] == pytest.approx(0.5)
    with pytest.raises(LmftError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(LmftError, match="no examples"):
        qa([], [])
    with pytest.raises(LmftError, match="unknown generation metric 'bleu'"):
        example_scores(["a"], ["a"], "bleu")
