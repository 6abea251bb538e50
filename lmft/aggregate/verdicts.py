"""One rule decides every comparative claim: where the 95% interval of the effect lies against the
claim's margin.

===============  ==================  ====================  ============================
claim            holds               does not hold         else
===============  ==================  ====================  ============================
effect > m       low > m             high < m              inconclusive
effect < m       high < m            low > m               inconclusive
abs(effect) < m  -m < low, high < m  low > m or high < -m  inconclusive
===============  ==================  ====================  ============================

An inconclusive verdict says how many test examples the observed effect would need to decide
(the interval's half-width shrinks as 1 / sqrt(n)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lmft.aggregate.bootstrap import Interval

HOLDS, FAILS, INCONCLUSIVE, UNMEASURED = "holds", "does not hold", "inconclusive", "not measured"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, UNMEASURED)
# An interval's end this close to the margin touches it and clears nothing: differences of accuracy
# are multiples of 1/n, and their float sums land on either side of a margin such as 0.05 (25/500).
TIE = 1e-9


def _lt(a: float, b: float) -> bool:
    return a < b - TIE


def _gt(a: float, b: float) -> bool:
    return a > b + TIE


@dataclass(frozen=True)
class Rule:
    """``effect {kind} margin``: ``above`` (>), ``below`` (<) or ``within`` (abs(effect) <; no ``|``, which
    would split a Markdown table's cell)."""

    kind: Literal["above", "below", "within"]
    margin: float
    unit: str = ""  # how the margin is printed: "points", "x", "nats", "%"
    scale: float = 1.0  # printed value = scale x value

    def fmt(self, x: float, digits: int = 1) -> str:
        return "nan" if math.isnan(x) else f"{self.scale * x:.{digits}f}"

    def text(self, effect: str) -> str:
        m = self.fmt(self.margin, 2 if self.unit in ("x", "nats") else 1).rstrip("0").rstrip(".")
        op = {"above": f"{effect} > {m}", "below": f"{effect} < {m}", "within": f"abs({effect}) < {m}"}[self.kind]
        return f"95% CI of {op}{' ' + self.unit if self.unit else ''}"

    def verdict(self, ci: Interval) -> str:
        lo, hi, m = ci.low, ci.high, self.margin
        if math.isnan(lo) or math.isnan(hi):
            return INCONCLUSIVE
        if self.kind == "above":
            return HOLDS if _gt(lo, m) else FAILS if _lt(hi, m) else INCONCLUSIVE
        if self.kind == "below":
            return HOLDS if _lt(hi, m) else FAILS if _gt(lo, m) else INCONCLUSIVE
        return (HOLDS if _gt(lo, -m) and _lt(hi, m) else FAILS if _gt(lo, m) or _lt(hi, -m)
                else INCONCLUSIVE)

    def gap(self, estimate: float) -> float:
        """How far the estimate lies from the nearest boundary of the claim (0: on it)."""
        if self.kind == "within":
            return abs(abs(estimate) - self.margin)
        return abs(estimate - self.margin)

    def examples_needed(self, ci: Interval) -> int | None:
        """Test examples per seed at which an interval of this width around the estimate would
        clear the margin (None: the estimate sits on the margin, or no interval)."""
        gap = self.gap(ci.estimate)
        if gap == 0 or math.isnan(gap) or math.isnan(ci.half_width):
            return None
        return math.ceil(round(ci.n_examples * (ci.half_width / gap) ** 2, 6))  # round: no 2,451 for 2,450.0000001

    def explain(self, ci: Interval) -> str:
        """``estimate [low, high]`` with the verdict's reading and, when inconclusive, the n to decide."""
        d = 2 if self.unit in ("x", "nats") else 1
        text = f"{self.fmt(ci.estimate, d)} [{self.fmt(ci.low, d)}, {self.fmt(ci.high, d)}]"
        if self.verdict(ci) != INCONCLUSIVE:
            return text
        n = self.examples_needed(ci)
        if ci.how:  # not a bootstrap over test examples: their number does not narrow it
            need = f"the interval is the {ci.how}, which more test examples do not narrow"
        elif n is None:
            need = "the estimate sits on the margin: no number of examples decides it"
        else:
            need = f"the observed effect would need ~{n:,} test examples per seed (has {ci.n_examples})"
        return f"{text}: the interval straddles the margin; {need}"
