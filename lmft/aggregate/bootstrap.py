"""Paired bootstrap over seeds x test examples: the interval behind every comparative finding.

A comparison is paired: both sides were scored on the same test examples (matched by the row
``index`` of the split), and, where a cell has several data seeds, on the seeds both sides share.
Each side contributes per-example *columns* (correctness, a ROUGE score, a loss, ECE terms), and
the statistic is a function of the columns' means per seed, so one resample is a weighted mean:

- seeds: with S >= 2 shared seeds, S seeds drawn with replacement (seed-to-seed variation);
- examples: within each drawn seed, its N examples drawn with replacement (multinomial counts).

Accuracy is the mean of ``correct``; binary F1 is ``2 tp / (2 tp + fp + fn)`` of the means of the
``tp``/``fp``/``fn`` indicators; ECE with equal-width bins is ``sum_b |mean(e_b)|`` with
``e_b = [bin(i) = b] (correct_i - conf_i)``: every metric the findings use is a function of means,
which makes 10,000 resamples a few matrix products. The interval is the percentile interval.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lmft.io import LmftError

RESAMPLES = 10_000
LEVEL = 0.95
ECE_BINS = 10  # as lmft.models.evaluate's ECE

Columns = Mapping[str, np.ndarray]  # column name -> [N] per-example values of one seed
Statistic = Callable[[Mapping[str, np.ndarray]], np.ndarray]  # column -> [R, S] means -> [R]


@dataclass(frozen=True)
class Interval:
    """A statistic's value on the data and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    n_examples: int  # test examples per seed (the smallest seed's)
    n_seeds: int
    resamples: int
    how: str = ""  # how the interval was made, where it is not the bootstrap (e.g. repeated measurements)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def describe(self) -> str:
        if self.how:
            return self.how
        return (f"paired bootstrap, {self.resamples:,} resamples of {self.n_examples} test examples"
                + (f" x {self.n_seeds} seeds" if self.n_seeds > 1 else ""))


def bootstrap(blocks: Sequence[Columns], statistic: Statistic, *, resamples: int = RESAMPLES,
              seed: int = 0, level: float = LEVEL) -> Interval:
    """The statistic and its ``level`` percentile interval over seeds x examples.

    ``blocks`` holds one mapping per seed, each column ``[N_s]`` over the same N_s examples (every
    column of a block is paired). ``statistic`` maps each column's per-seed means ``[R, S]`` to
    ``[R]``. Resamples whose statistic is undefined (NaN, e.g. a ratio over a zero gain) are
    dropped; when more than half are, the interval is NaN.
    """
    if not blocks:
        raise LmftError("bootstrap: no seeds to resample")
    names = sorted(blocks[0])
    for b in blocks:
        if sorted(b) != names:
            raise LmftError(f"bootstrap: every seed needs the columns {names}, got {sorted(b)}")
        sizes = {len(np.asarray(b[c])) for c in names}
        if len(sizes) != 1 or 0 in sizes:
            raise LmftError(f"bootstrap: a seed's columns must be non-empty and of one length, got {sorted(sizes)}")
    s = len(blocks)
    data = [np.stack([np.asarray(b[c], dtype=np.float64) for c in names], axis=1) for b in blocks]  # [N_s, D]
    full = np.stack([x.mean(axis=0) for x in data])[None]  # [1, S, D]
    counts, seeds = _draws(tuple(x.shape[0] for x in data), resamples, seed)
    means = np.stack([c @ x / x.shape[0] for c, x in zip(counts, data)], axis=1)  # [R, S, D]
    if seeds is not None:
        means = np.take_along_axis(means, seeds[:, :, None], axis=1)

    def apply(m: np.ndarray) -> np.ndarray:
        return np.asarray(statistic({c: m[:, :, i] for i, c in enumerate(names)}), dtype=np.float64)

    estimate = float(apply(full)[0])
    dist = apply(means)
    dist = dist[~np.isnan(dist)]
    tail = (1 - level) / 2
    if dist.size * 2 < resamples:
        low = high = math.nan
    else:
        low, high = (float(v) for v in np.quantile(dist, [tail, 1 - tail]))
    return Interval(estimate, low, high, min(x.shape[0] for x in data), s, resamples)


@functools.lru_cache(maxsize=8)
def _draws(sizes: tuple[int, ...], resamples: int, seed: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The resamples' example counts per seed (``[R, N_s]`` each) and drawn seeds (``[R, S]``; None
    for one seed): a function of the sizes and the seed alone, so comparisons of the same shape share them."""
    rng = np.random.default_rng(seed)
    counts = [rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64) for n in sizes]
    s = len(sizes)
    return counts, (rng.integers(0, s, size=(resamples, s)) if s > 1 else None)


def metric_columns(labels: np.ndarray, preds: np.ndarray, metric: str, prefix: str = "") -> dict[str, np.ndarray]:
    """Per-example columns of a classification metric: ``correct`` (acc) or ``tp``/``fp``/``fn``
    (binary F1 of class 1), named ``{prefix}{column}``."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if metric == "acc":
        return {f"{prefix}correct": (labels == preds).astype(float)}
    if metric == "f1":
        p, y = preds == 1, labels == 1
        return {f"{prefix}tp": (p & y).astype(float), f"{prefix}fp": (p & ~y).astype(float),
                f"{prefix}fn": (~p & y).astype(float)}
    raise LmftError(f"bootstrap: no per-example form of metric {metric!r} (acc or f1)")


def metric_value(means: Mapping[str, np.ndarray], metric: str, prefix: str = "") -> np.ndarray:
    """The metric from the means of :func:`metric_columns` (any shape)."""
    if metric == "acc":
        return means[f"{prefix}correct"]
    tp, fp, fn = (means[f"{prefix}{c}"] for c in ("tp", "fp", "fn"))
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)


def ece_columns(probs: np.ndarray, labels: np.ndarray, prefix: str = "", bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per-example ECE terms ``e_b = [bin = b] (correct - confidence)`` for ``probs`` ``[N, C]``,
    the bins ``((b-1)/bins, b/bins]`` of :func:`lmft.models.metrics.ece`; ECE = sum_b |mean(e_b)|."""
    probs = np.asarray(probs, dtype=np.float64)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    which = np.searchsorted(np.arange(1, bins) / bins, conf, side="left")
    signed = (pred == np.asarray(labels)).astype(float) - conf
    return {f"{prefix}ece{b}": np.where(which == b, signed, 0.0) for b in range(bins)}


def ece_value(means: Mapping[str, np.ndarray], prefix: str = "", bins: int = ECE_BINS) -> np.ndarray:
    return sum(np.abs(means[f"{prefix}ece{b}"]) for b in range(bins))


def seed_mean(x: np.ndarray) -> np.ndarray:
    """``[R, S]`` -> ``[R]``: the mean over the (resampled) seeds."""
    return np.asarray(x).mean(axis=-1)
