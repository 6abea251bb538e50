"""The top k entries of many tensors together, without concatenating them: the rounding of a graft mask.

Ties are broken by position (tensor order, then flat index), so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lmft.io import LmftError


def _order_keys(x: Tensor) -> Tensor:
    """int32 keys whose integer order is the order of the float32 values of ``x``."""
    bits = x.detach().to(torch.float32).contiguous().view(torch.int32)
    # Positive floats order as their bit patterns; negative ones in reverse, so flip their magnitude bits.
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def top_k_mask(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Bool masks (shapes of ``scores``) with ``True`` at exactly the ``k`` highest scores overall.

    Ties are broken by position: tensor order, then flat index. ``scores`` may be a lazy mapping
    that computes each tensor on access; the k-th value is found by bisection on the float bit
    patterns, so no concatenated copy of all scores is ever made.
    """
    names = list(scores)
    n = sum(scores[m].numel() for m in names)
    if not 0 <= k <= n:
        raise LmftError(f"graft: cannot keep {k} of {n} entries")
    for m in names:
        if torch.isnan(scores[m]).any():
            raise LmftError(f"graft: scores of {m!r} contain NaN (a diverged checkpoint or relaxation?)")
    if k == 0 or k == n:
        return {m: torch.full(scores[m].shape, k == n, dtype=torch.bool, device=scores[m].device) for m in names}

    def count_at_least(t: int) -> int:
        return sum(int((_order_keys(scores[m]) >= t).sum()) for m in names)

    lo, hi = -(2**31), 2**31 - 1  # count_at_least(lo) = n >= k; find the largest t with count >= k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_at_least(mid) >= k:
            lo = mid
        else:
            hi = mid - 1
    masks: dict[str, Tensor] = {}
    above = {m: _order_keys(scores[m]) > lo for m in names}
    room = k - sum(int(a.sum()) for a in above.values())
    for m in names:
        tie = (_order_keys(scores[m]) == lo).flatten()
        take = tie & (tie.cumsum(0) <= room)
        room -= int(take.sum())
        masks[m] = above[m] | take.view(above[m].shape)
    return masks
