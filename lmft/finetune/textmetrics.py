"""Metrics of generated text against references: ROUGE-1/2/L, exact match and token F1.

ROUGE is Google's ``rouge-score`` package (the reimplementation of ROUGE-1.5.5 that XSum and the
problem set report), F-measure with the Porter stemmer, averaged over examples. Exact match and
token F1 are SQuAD's: both texts lower-cased, punctuation and the articles a/an/the removed,
whitespace collapsed; F1 is over the bags of remaining tokens. Every score is a fraction in [0, 1].
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from lmft.io import LmftError

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
QA_KEYS = ("em", "f1")
# The score of each task metric that ranks runs (dev selection, tables) and is the run's test_metric.
PRIMARY = {"rouge": "rougeL", "qa": "f1"}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def _check(preds: Sequence[str], refs: Sequence[str], what: str) -> None:
    if len(preds) != len(refs):
        raise LmftError(f"{what}: {len(preds)} predictions but {len(refs)} references")
    if not refs:
        raise LmftError(f"{what}: no examples")


def rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, list[float]]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of each of ``preds`` against its one reference in ``refs``."""
    from rouge_score.rouge_scorer import RougeScorer  # imports nltk: only where text is scored

    _check(preds, refs, "rouge")
    scorer = RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    rows = [scorer.score(ref, pred) for pred, ref in zip(preds, refs)]
    return {key: [row[key].fmeasure for row in rows] for key in ROUGE_KEYS}


def normalise_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def token_f1(pred: str, ref: str) -> float:
    """F1 of the normalised token bags of one prediction and one reference (1.0 when both are empty)."""
    p, r = normalise_answer(pred).split(), normalise_answer(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def qa(preds: Sequence[str], refs: Sequence[str]) -> dict[str, list[float]]:
    """Exact match and token F1 of each answer of ``preds`` against its reference in ``refs``."""
    _check(preds, refs, "qa")
    return {"em": [float(normalise_answer(p) == normalise_answer(r)) for p, r in zip(preds, refs)],
            "f1": [token_f1(p, r) for p, r in zip(preds, refs)]}


def example_scores(preds: Sequence[str], refs: Sequence[str], metric: str) -> dict[str, list[float]]:
    """Each example's scores of a task metric: ``rouge`` -> rouge1/rouge2/rougeL, ``qa`` -> em/f1."""
    if metric == "rouge":
        return rouge(preds, refs)
    if metric == "qa":
        return qa(preds, refs)
    raise LmftError(f"unknown generation metric {metric!r}; one of {', '.join(PRIMARY)}")


def mean_scores(scores: dict[str, list[float]]) -> dict[str, float]:
    """The corpus scores: each example score averaged over the examples."""
    return {key: sum(values) / len(values) for key, values in scores.items()}
