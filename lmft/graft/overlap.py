"""How much the graft masks of several tasks (or seeds) overlap.

For every unordered pair ``(a, b)`` of named masks over the same tensors: their sizes, the
intersection and union, the Jaccard index ``|a & b| / |a | b|``, the fractions of one inside the
other ``|a & b| / |a|`` and ``|a & b| / |b|``, and the intersection expected of two independent
random masks of the same sizes, ``|a| |b| / N``, as the chance level to compare with.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import pandas as pd
from torch import Tensor

from lmft.io import LmftError

COLUMNS = ["a", "b", "count_a", "count_b", "intersection", "union", "jaccard", "frac_a_in_b", "frac_b_in_a",
           "expected_intersection", "n"]


def _check_same_space(masks: Mapping[str, Mapping[str, Tensor]]) -> None:
    names = list(masks)
    ref = masks[names[0]]
    for other in names[1:]:
        m = masks[other]
        if set(m) != set(ref):
            raise LmftError(f"overlap: masks {names[0]!r} and {other!r} cover different tensors "
                            f"({sorted(set(m) ^ set(ref))[:5]}); were they made with the same exclude patterns?")
        for t in ref:
            if m[t].shape != ref[t].shape:
                raise LmftError(f"overlap: {t!r} has shape {tuple(ref[t].shape)} in {names[0]!r} but "
                                f"{tuple(m[t].shape)} in {other!r}")


def _ratio(x: int, y: int) -> float:
    return x / y if y else float("nan")


def mask_overlap(masks: Mapping[str, Mapping[str, Tensor]]) -> pd.DataFrame:
    """One row per unordered pair of the named bool masks (see the module docstring), in the given order."""
    if len(masks) < 2:
        raise LmftError(f"overlap: needs at least two masks, got {list(masks)}")
    _check_same_space(masks)
    first = next(iter(masks.values()))
    n = sum(t.numel() for t in first.values())
    counts = {name: sum(int(t.sum()) for t in m.values()) for name, m in masks.items()}
    rows = []
    for a, b in combinations(masks, 2):
        inter = sum(int((masks[a][t] & masks[b][t]).sum()) for t in first)
        union = counts[a] + counts[b] - inter
        rows.append({"a": a, "b": b, "count_a": counts[a], "count_b": counts[b], "intersection": inter,
                     "union": union, "jaccard": _ratio(inter, union), "frac_a_in_b": _ratio(inter, counts[a]),
                     "frac_b_in_a": _ratio(inter, counts[b]), "expected_intersection": counts[a] * counts[b] / n,
                     "n": n})
    return pd.DataFrame(rows, columns=COLUMNS)
