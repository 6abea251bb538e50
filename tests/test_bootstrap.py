"""The paired bootstrap and the verdict rule behind every finding."""

import math

import numpy as np
import pytest
import torch

from lmft.aggregate import bootstrap as bs
from lmft.aggregate.verdicts import FAILS, HOLDS, INCONCLUSIVE, Rule
from lmft.models import metrics


def test_interval_of_a_mean_matches_the_normal_approximation():
    x = np.random.default_rng(0).random(400) < 0.7
    ci = bs.bootstrap([{"x": x.astype(float)}], lambda m: bs.seed_mean(m["x"]))
    se = math.sqrt(x.mean() * (1 - x.mean()) / x.size)
    assert ci.estimate == pytest.approx(x.mean())
    assert ci.low == pytest.approx(x.mean() - 1.96 * se, abs=0.01) and ci.high == pytest.approx(x.mean() + 1.96 * se, abs=0.01)
    assert (ci.n_examples, ci.n_seeds, ci.resamples) == (400, 1, bs.RESAMPLES)
    again = bs.bootstrap([{"x": x.astype(float)}], lambda m: bs.seed_mean(m["x"]))
    assert again == ci  # seeded: the same numbers every time


def test_pairing_removes_the_shared_noise():
    """Two sides that differ on 4 of 400 examples: the paired interval of the difference is narrow."""
    a = np.random.default_rng(1).random(400) < 0.5
    b = a.copy()
    b[:4] = ~b[:4]
    ci = bs.bootstrap([{"a": a.astype(float), "b": b.astype(float)}], lambda m: bs.seed_mean(m["a"] - m["b"]))
    assert ci.high - ci.low < 0.03


def test_several_seeds_resample_the_seeds_too():
    rng = np.random.default_rng(2)
    blocks = [{"x": (rng.random(200) < p).astype(float)} for p in (0.5, 0.9)]
    ci = bs.bootstrap(blocks, lambda m: bs.seed_mean(m["x"]))
    assert ci.n_seeds == 2 and ci.estimate == pytest.approx(np.mean([b["x"].mean() for b in blocks]))
    one = bs.bootstrap(blocks[:1], lambda m: bs.seed_mean(m["x"]))
    assert ci.high - ci.low > 2 * (one.high - one.low)  # the seeds disagree by 40 points


def test_metric_and_ece_columns_reproduce_the_metrics():
    rng = np.random.default_rng(3)
    labels, preds = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    probs = rng.dirichlet([1, 1], 300)
    for metric, fn in (("acc", metrics.accuracy), ("f1", metrics.f1)):
        cols = bs.metric_columns(labels, preds, metric)
        means = {c: np.asarray(v.mean()) for c, v in cols.items()}
        assert float(bs.metric_value(means, metric)) == pytest.approx(fn(torch.tensor(preds), torch.tensor(labels)))
    cols = bs.ece_columns(probs, labels)
    means = {c: np.asarray(v.mean()) for c, v in cols.items()}
    assert float(bs.ece_value(means)) == pytest.approx(metrics.ece(torch.tensor(probs), torch.tensor(labels)))


def test_undefined_resamples_are_dropped_and_too_many_give_no_interval():
    x = np.zeros(50)
    ci = bs.bootstrap([{"x": x}], lambda m: np.full(m["x"].shape[0], np.nan))
    assert math.isnan(ci.low) and math.isnan(ci.high)


@pytest.mark.parametrize("rule,low,high,want", [
    (Rule("above", 0.0), 0.01, 0.2, HOLDS), (Rule("above", 0.0), -0.2, -0.01, FAILS),
    (Rule("above", 0.0), -0.01, 0.2, INCONCLUSIVE), (Rule("below", 0.05), -0.1, 0.04, HOLDS),
    (Rule("below", 0.05), 0.06, 0.2, FAILS), (Rule("within", 0.05), -0.04, 0.04, HOLDS),
    (Rule("within", 0.05), 0.06, 0.1, FAILS), (Rule("within", 0.05), -0.1, -0.06, FAILS),
    (Rule("within", 0.05), 0.0, 0.1, INCONCLUSIVE)])
def test_the_verdict_rule(rule, low, high, want):
    ci = bs.Interval((low + high) / 2, low, high, 100, 1, 10)
    assert rule.verdict(ci) == want


@pytest.mark.parametrize("high", [0.05, 25 / 500, 0.01 + 0.04, 0.05 - 1e-12, 0.05 + 1e-12])
def test_an_interval_that_touches_the_margin_does_not_clear_it(high):
    """An end on the margin, up to float rounding of a 1/n lattice (25/500 vs 0.05), decides nothing."""
    assert Rule("below", 0.05).verdict(bs.Interval(0.01, -0.02, high, 500, 1, 10)) == INCONCLUSIVE
    assert Rule("above", -0.05).verdict(bs.Interval(0.0, -high, 0.02, 500, 1, 10)) == INCONCLUSIVE
    assert Rule("within", 0.05).verdict(bs.Interval(0.0, -0.01, high, 500, 1, 10)) == INCONCLUSIVE
    assert Rule("below", 0.05).verdict(bs.Interval(0.01, -0.02, 0.0498, 500, 1, 10)) == HOLDS


def test_inconclusive_says_how_many_examples_would_decide():
    rule = Rule("above", 0.0, "points", 100)
    ci = bs.Interval(0.02, -0.05, 0.09, 200, 1, 10)  # half-width 0.07 around 0.02: (0.07 / 0.02)^2 x 200
    assert rule.examples_needed(ci) == math.ceil(200 * 3.5 ** 2)
    assert rule.explain(ci) == ("2.0 [-5.0, 9.0]: the interval straddles the margin; the observed effect would "
                                "need ~2,450 test examples per seed (has 200)")
    assert rule.text("A - B") == "95% CI of A - B > 0 points"


def test_an_inconclusive_range_of_repeats_asks_for_no_test_examples():
    rule = Rule("below", 1.2, "x")
    ci = bs.Interval(1.34, 1.19, 1.35, 3, 1, 0, how="range over 3 repeated measurements: min/max against max/min")
    assert rule.explain(ci) == ("1.34 [1.19, 1.35]: the interval straddles the margin; the interval is the range "
                                "over 3 repeated measurements: min/max against max/min, which more test examples "
                                "do not narrow")
