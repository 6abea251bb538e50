"""One method's runs on one (model, task, k), and the best of several: what the findings compare.

An :class:`Estimate` holds the selected trial of each seed (:func:`lmft.aggregate.gather.mark_selected`) of
one method; "best" is the method with the highest mean dev metric, ties to the first name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmft.aggregate.gather import is_missing
from lmft.aggregate.summary import as_text, fixed, method_label, single_seed_se, spread_text


@dataclass(frozen=True)
class Estimate:
    """One method's runs on one (model, task, k): the selected trial of each seed."""

    label: str
    rows: tuple[dict[str, Any], ...]

    @property
    def first(self) -> dict[str, Any]:
        return self.rows[0]

    def values(self, column: str = "test_metric") -> np.ndarray:
        """The column's values over the seeds, missing ones left out."""
        return np.asarray([float(r[column]) for r in self.rows if not is_missing(r.get(column))], dtype=float)

    def mean(self, column: str = "test_metric") -> float:
        v = self.values(column)
        return float(v.mean()) if v.size else math.nan

    def describe(self, role: str) -> str:
        """``role (label): mean (std), n seeds`` of the test metric x100 (one seed: ``mean ±se``)."""
        v = self.values()
        se = self.first.get("test_se")  # a generation run's, over its test examples
        if len(v) != 1 or is_missing(se):
            se = single_seed_se(v, self.first.get("n_test"), self.first["metric"])
        return f"{role} ({self.label}): {spread_text(v.mean(), v.std(), len(v), se)}, {n_seeds(len(v))}"


def n_seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def group_runs(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], tuple],
           labels: Mapping[str, str] | None) -> dict[tuple, Estimate]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return {k: Estimate(method_label(v[0], labels), tuple(v)) for k, v in groups.items()}


def has_fields(e: Estimate, **want: str | tuple[str, ...]) -> bool:
    """Whether the estimate's runs have these field values (a tuple: any of its values)."""
    return all(as_text(e.first.get(f)) in (v if isinstance(v, tuple) else (v,)) for f, v in want.items())


def with_fields(ests: Mapping[tuple, Estimate], cell: tuple, **want: str | tuple[str, ...]) -> list[Estimate]:
    """The estimates keyed under ``cell`` (a key prefix) whose runs have the field values ``want``."""
    return [e for key, e in ests.items() if key[:len(cell)] == cell and has_fields(e, **want)]


def best_of(candidates: Iterable[Estimate]) -> Estimate | None:
    """The candidate of the highest mean dev metric (ties: the first label in sort order)."""
    ranked = sorted(candidates, key=lambda e: e.label)
    if not ranked:
        return None
    return max(ranked, key=lambda e: -math.inf if math.isnan(d := e.mean("dev_metric")) else d)


def points(x: float) -> str:
    return fixed(100 * x, 1)


def signed_points(x: float) -> str:
    """A difference of metrics in points, signed."""
    s = points(x)
    return s if s.startswith("-") or s == "0.0" else "+" + s


def join(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)
