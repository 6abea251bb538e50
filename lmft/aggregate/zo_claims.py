"""The claims of the zeroth-order methods after MeZO (:mod:`lmft.aggregate.claims` has the others).

Each variant's paper claims higher accuracy than MeZO at the same or fewer forward passes (FZOO,
Dang et al., ICLR 2026; MeZO-SVRG, Gautam et al., ICML 2024), and issue 19 asks whether some
zeroth-order method comes within :data:`ZO_FT` of fine-tuning the same parameters. Every run is
compared within the budget of MeZO's run (its ``passes`` in metrics.json, every seed's) and on the
same parameters (MeZO's ``mode`` and ``head``), decided as the other claims are
(:func:`lmft.aggregate.checks.beats`: the paired bootstrap interval over the test examples).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lmft.aggregate.checks import Finding, beats, unmeasured
from lmft.aggregate.estimates import Estimate, best_of, has_fields, join, with_fields
from lmft.aggregate.gather import is_missing
from lmft.aggregate.summary import as_text
from lmft.aggregate.topics import ZO_TYPES
from lmft.aggregate.verdicts import Rule

ZO_FT = Rule("below", 0.03, "points", 100)  # FT - the best ZO method < 3 points, at <= MeZO's forward passes
# type -> (claim, role): each variant's paper's claim against MeZO (higher accuracy at the same or fewer passes)
ZO_VARIANTS = {"fzoo": ("fzoo-mezo", "FZOO"), "mezo-svrg": ("svrg-mezo", "MeZO-SVRG")}
CLAIMS = (*(c for c, _ in ZO_VARIANTS.values()), "zo-ft")


def _passes(e: Estimate) -> float:
    """The most forward passes any seed's run took (``passes`` of metrics.json; NaN when a run lacks it)."""
    values = [math.nan if is_missing(r.get("passes")) else float(r["passes"]) for r in e.rows]
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _with_passes(e: Estimate, role: str) -> str:
    p = _passes(e)
    return f"{e.describe(role)}, {'passes not counted' if math.isnan(p) else f'{p:g} forward passes'}"


def zo_findings(ft: Mapping[tuple, Estimate]) -> list[Finding]:
    """Per (model, task, k) of a MeZO run: each variant against the best MeZO (its paper's claim), and
    the best zeroth-order method (MeZO included) against FT, among the runs of MeZO's parameters
    (``mode``, ``head``) that took no more forward passes than that MeZO run (every seed's)."""
    cells = sorted({key[:3] for key, e in ft.items() if has_fields(e, type="mezo")})
    if not cells:
        return [unmeasured(c, "no MeZO run (finetune type mezo): no budget of forward passes to compare at")
                for c in CLAIMS]
    out = []
    for cell in cells:
        mezo = best_of(with_fields(ft, cell, type="mezo"))
        mode, head = as_text(mezo.first.get("mode")), as_text(mezo.first.get("head"))
        base = _with_passes(mezo, "MeZO")
        if math.isnan(_passes(mezo)):
            out += [unmeasured(c, "MeZO's runs counted no forward passes (metrics.json without passes: rerun them)",
                               cell, base, mode) for c in CLAIMS]
            continue
        budget = min(float(r["passes"]) for r in mezo.rows)
        same = dict(mode=mode, head=head)
        for kind, (claim, role) in ZO_VARIANTS.items():
            ran = with_fields(ft, cell, type=kind, **same)
            within = [e for e in ran if _passes(e) <= budget]
            if not within:
                why = (f"no {role} run (type {kind}) of MeZO's parameters (mode {mode}, head {head})" if not ran else
                       f"every {role} run took more forward passes than MeZO's {budget:g} (or counted none)")
                out.append(unmeasured(claim, why, cell, join(base, *(_with_passes(e, role) for e in ran)), mode))
                continue
            variant = best_of(within)
            out.append(beats(claim, cell, variant, mezo, role, "MeZO", join(_with_passes(variant, role), base),
                             extra=mode))
        out.append(_zo_ft(ft, cell, budget, mode, head))
    return out


def _zo_ft(ft: Mapping[tuple, Estimate], cell: tuple, budget: float, mode: str, head: str) -> Finding:
    """The best (dev) zeroth-order run of ``mode`` and ``head`` within ``budget`` passes against the best FT of them."""
    tuned = best_of(with_fields(ft, cell, type="ft", mode=mode, head=head))
    zo = [e for e in with_fields(ft, cell, type=ZO_TYPES, mode=mode, head=head) if _passes(e) <= budget]
    best = best_of(zo)  # MeZO itself is among them: the best on dev of the methods within the budget
    measured = join(*(_with_passes(e, f"{e.first['type']}") for e in sorted(zo, key=lambda e: e.label)))
    if tuned is None:
        return unmeasured("zo-ft", f"no fine-tuning (type ft) of the same parameters (mode {mode}, head {head}) ran",
                          cell, measured, mode)
    return beats("zo-ft", cell, tuned, best, "FT", f"{best.label} (best dev of the ZO runs)",
                 join(measured, tuned.describe(f"FT of mode {mode}")), ZO_FT, mode)
