"""What every check of a paper's claim shares (:mod:`lmft.aggregate.claims`, :mod:`lmft.aggregate.zo_claims`):
a :class:`Finding`, and deciding a claim's :class:`~lmft.aggregate.verdicts.Rule` on the paired bootstrap
interval of a statistic over the sides' aligned per-example evidence (:mod:`lmft.aggregate.evidence`,
:mod:`lmft.aggregate.bootstrap`), :func:`beats` for the commonest: one run's test metric against another's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lmft.aggregate import evidence
from lmft.aggregate.bootstrap import Interval, bootstrap, metric_columns, metric_value, seed_mean
from lmft.aggregate.estimates import Estimate
from lmft.aggregate.evidence import Missing
from lmft.aggregate.summary import MISSING
from lmft.aggregate.verdicts import UNMEASURED, Rule

BEATS = Rule("above", 0.0, "points", 100)  # A - B > 0 points


@dataclass(frozen=True)
class Finding:
    """One row of the findings table (before the claim's texts are filled in)."""

    claim: str
    verdict: str
    reason: str
    model: str = MISSING
    task: str = MISSING
    k: int | None = None
    measured: str = MISSING
    extra: str = ""  # orders the rows of one (model, task, k): kernel mode, graft method, pair, mode
    rule: str = MISSING
    ci: Interval | None = None
    scale: float = 1.0  # the effect and interval as printed = scale x ci


def unmeasured(claim: str, reason: str, cell: tuple = (MISSING, MISSING, None), measured: str = MISSING,
                extra: str = "") -> Finding:
    return Finding(claim, UNMEASURED, reason, *cell, measured, extra)


def decide(claim: str, cell: tuple, rule: Rule, effect: str, ci: Interval, measured: str, extra: str = "",
            note: str = "") -> Finding:
    reason = f"{effect} = {rule.explain(ci)} ({ci.describe()})" + (f"; {note}" if note else "")
    return Finding(claim, rule.verdict(ci), reason, *cell, measured, extra, rule.text(effect), ci, rule.scale)


Frames = Mapping[str, Mapping[int, pd.DataFrame]]  # side -> seed -> per-example frame
Columns = Callable[[Mapping[str, pd.DataFrame]], dict[str, np.ndarray]]


def compare(claim: str, cell: tuple, rule: Rule, effect: str, frames: Callable[[], Frames], columns: Columns,
             statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray], measured: str, extra: str = "",
             note: str = "") -> Finding:
    """Align the sides' frames (shared seeds and examples), bootstrap the statistic, decide."""
    try:
        blocks = [columns(part) for part in evidence.aligned(frames())]
    except Missing as m:
        return unmeasured(claim, str(m), cell, measured, extra)
    return decide(claim, cell, rule, effect, bootstrap(blocks, statistic), measured, extra, note)


def scored(sides: Mapping[str, str]) -> Columns:
    """Per-example metric columns of each side (``side:correct`` ...; ``side:score`` for generation)."""
    def columns(part: Mapping[str, pd.DataFrame]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for side, metric in sides.items():
            f = part[side]
            out |= ({f"{side}:score": f["score"].to_numpy(float)} if metric == "score" else
                    metric_columns(f["label"].to_numpy(), f["pred"].to_numpy(), metric, f"{side}:"))
        return out
    return columns


def value(m: Mapping[str, np.ndarray], side: str, metric: str) -> np.ndarray:
    """A side's metric per (resample, seed) from the column means."""
    return m[f"{side}:score"] if metric == "score" else metric_value(m, metric, f"{side}:")


def difference(a: str, b: str, metric: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    return lambda m: seed_mean(value(m, a, metric) - value(m, b, metric))


def beats(claim: str, cell: tuple, a: Estimate, b: Estimate, role_a: str, role_b: str, measured: str,
          rule: Rule = BEATS, extra: str = "") -> Finding:
    """``a`` - ``b`` on the same test examples (``a`` minus ``b``, in the runs' metric) against ``rule``."""
    metric = "score" if a.first.get("stage") == "generation" else a.first["metric"]
    return compare(claim, cell, rule, f"{role_a} - {role_b}",
                   lambda: {"a": evidence.by_seed(a, evidence.predictions), "b": evidence.by_seed(b, evidence.predictions)},
                   scored({"a": metric, "b": metric}), difference("a", "b", metric), measured, extra)
