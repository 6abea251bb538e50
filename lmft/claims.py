"""The checks of each paper's claims against the runs: one :class:`Finding` per claim and cell.

How a claim finds its runs, and the thresholds below, are in :mod:`lmft.findings`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from lmft.estimates import Estimate, best_of, group_runs, has_fields, join, n_seeds, points, signed_points, with_fields
from lmft.formulas import PROMPTS
from lmft.gather import is_missing, selected
from lmft.summary import MISSING, as_text

HOLDS, FAILS, UNMEASURED = "holds", "does not hold", "not measured"
PROMPT_HEADS = ("prompt", "causal")

LMBFF_K = 16  # LM-BFF's few-shot setting
KERNEL_GAP = 5.0  # points: prompt eNTK vs fine-tuning of the same parameters
MEZO_MARGIN = 5.0  # points over zero-shot
MEZO_MEMORY = 1.2  # x the inference (zero-shot) peak memory
MEZO_FT_GAP = 5.0  # points behind FT: "comparable" (RoBERTa-large k=16: 1.4 on SST-2, 9.0 on SNLI)
GRAFT_SPARSITY = 0.01  # <= 1% of the graftable parameters
GRAFT_KEPT = 0.8  # of the fine-tuning gain
BARRIER_TOL = 0.05  # absolute, in test loss (nats): "no barrier"
GEN_MARGIN = 1.0  # points of the primary score (ROUGE-L, token F1) over zero-shot


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
    extra: str = ""  # orders the rows of one (model, task, k): kernel mode, graft method, pair


def _check(claim: str, cell: tuple, ok: bool, reason: str, measured: str, extra: str = "") -> Finding:
    model, task, k = cell
    return Finding(claim, HOLDS if ok else FAILS, reason, model, task, k, measured, extra)


def _unmeasured(claim: str, reason: str, cell: tuple = (MISSING, MISSING, None), measured: str = MISSING,
                extra: str = "") -> Finding:
    model, task, k = cell
    return Finding(claim, UNMEASURED, reason, model, task, k, measured, extra)


def _lmbff(ft: Mapping[tuple, Estimate]) -> list[Finding]:
    prompt = {key: e for key, e in ft.items() if has_fields(e, type="ft", head=PROMPT_HEADS)}
    cells = sorted({key[:3] for key in prompt if key[2] == LMBFF_K})
    if not cells:
        ran = sorted({key[2] for key in prompt})
        return [_unmeasured("lmbff", f"no prompt fine-tuning (type ft, head prompt or causal) at k={LMBFF_K}"
                            + (f"; it ran at k={', '.join(map(str, ran))}" if ran else ""))]
    out = []
    for cell in cells:
        model, task, k = cell
        best = best_of(with_fields(prompt, cell))
        zs = best_of(with_fields(ft, cell, type="zeroshot"))
        cls = best_of(with_fields(ft, cell, type="ft", head="cls")) or best_of(
            replace(e, label=f"{e.label} of {key[0]}") for key, e in ft.items()
            if key[1:3] == (task, k) and key[0] != model and has_fields(e, type="ft", head="cls"))
        measured = join(best.describe("prompt FT"), zs and zs.describe("zero-shot"),
                         cls and cls.describe("no-prompt FT"))
        if zs is None or cls is None:
            missing = [f"no zero-shot run (type zeroshot) of {model}"] if zs is None else []
            missing += ["no no-prompt fine-tuning (type ft, head cls) of any model"] if cls is None else []
            out.append(_unmeasured("lmbff", "; ".join(missing), cell, measured))
            continue
        p, z, c = best.mean(), zs.mean(), cls.mean()
        out.append(_check("lmbff", cell, p > z and p > c,
                          f"prompt FT {points(p)} vs zero-shot {points(z)} ({signed_points(p - z)}) and no-prompt FT "
                          f"{points(c)} ({signed_points(p - c)})", measured))
    return out


def _kernel(ft: Mapping[tuple, Estimate], kern: Mapping[tuple, Estimate]) -> list[Finding]:
    """``kern`` is keyed (model, task, k, kernel.mode, prompt, formula, solver)."""
    if not kern:
        return [_unmeasured(c, "no kernel solve runs (the config's kernels: section)")
                for c in ("kernel-prompt", "kernel-noprompt")]
    out = []
    for model, task, k, mode in sorted({key[:4] for key in kern}, key=lambda c: (c[:3], as_text(c[3]))):
        cell = (model, task, k)
        kernels = {p: best_of(with_fields(kern, (model, task, k, mode, p))) for p in PROMPTS}
        heads = {"prompt": PROMPT_HEADS, "noprompt": "cls"}
        tuned = {p: best_of(with_fields(ft, cell, type="ft", head=heads[p], mode=mode)) if mode else None
                 for p in PROMPTS}
        measured = f"mode {mode or MISSING}: " + join(*(e.describe(f"{p} {what}") for p in PROMPTS for what, e
                                                         in (("kernel", kernels[p]), ("FT", tuned[p])) if e))
        if not mode:
            for claim in ("kernel-prompt", "kernel-noprompt"):
                out.append(_unmeasured(claim, "the kernel metrics carry no kernel.mode, so no fine-tuning of the "
                                       "same parameters can be matched; rerun the kernel solve", cell, measured))
            continue
        gap = {p: tuned[p].mean() - kernels[p].mean() for p in PROMPTS if kernels[p] and tuned[p]}
        ft_modes = sorted({as_text(e.first.get("mode")) for e in with_fields(ft, cell, type="ft", head=PROMPT_HEADS)})
        if "prompt" in gap:
            ok = gap["prompt"] <= KERNEL_GAP / 100
            out.append(_check("kernel-prompt", cell, ok,
                              f"FT {points(tuned['prompt'].mean())} - kernel {points(kernels['prompt'].mean())} = "
                              f"{points(gap['prompt'])} points {'<=' if ok else '>'} {KERNEL_GAP:g}", measured, mode))
        elif kernels["prompt"] is not None:  # with only no-prompt kernels the second claim says what is missing
            ran = f"; it ran with mode {', '.join(ft_modes)}" if ft_modes else ""
            out.append(_unmeasured("kernel-prompt", f"no prompt fine-tuning (type ft, head prompt or causal) of mode "
                                   f"{mode} on {model}{ran}", cell, measured, mode))
        if len(gap) < 2:
            missing = [f"{p} {what}" for p in PROMPTS for what, e in
                       (("kernel", kernels[p]), (f"FT (head {'prompt/causal' if p == 'prompt' else 'cls'})", tuned[p]))
                       if e is None]
            out.append(_unmeasured("kernel-noprompt", f"no {', no '.join(missing)} of mode {mode} on {model}",
                                   cell, measured, mode))
        else:
            ok = gap["noprompt"] > gap["prompt"]
            out.append(_check("kernel-noprompt", cell, ok,
                              f"no-prompt gap {points(gap['noprompt'])} {'>' if ok else '<='} prompt gap "
                              f"{points(gap['prompt'])} points (FT - kernel)", measured, mode))
    return out


def _mezo(ft: Mapping[tuple, Estimate]) -> list[Finding]:
    cells = sorted({key[:3] for key, e in ft.items() if has_fields(e, type="mezo")})
    if not cells:
        return [_unmeasured(c, "no MeZO runs (finetune type mezo)")
                for c in ("mezo-zeroshot", "mezo-memory", "mezo-ft")]
    out = []
    for cell in cells:
        mezo = best_of(with_fields(ft, cell, type="mezo"))
        zs = best_of(with_fields(ft, cell, type="zeroshot"))
        mode, head = as_text(mezo.first.get("mode")), as_text(mezo.first.get("head"))
        tuned = best_of(with_fields(ft, cell, type="ft", mode=mode, head=head))
        m = mezo.mean()
        if zs is None:
            for claim in ("mezo-zeroshot", "mezo-memory"):
                out.append(_unmeasured(claim, f"no zero-shot run (type zeroshot) of {cell[0]}", cell,
                                       mezo.describe("MeZO")))
        else:
            z = zs.mean()
            out.append(_check("mezo-zeroshot", cell, m - z >= MEZO_MARGIN / 100,
                              f"MeZO {points(m)} - zero-shot {points(z)} = {signed_points(m - z)} points", join(
                                  mezo.describe("MeZO"), zs.describe("zero-shot"))))
            out.append(_memory(cell, mezo, zs))
        # the paper compares MeZO with FT of the same parameters; without one, the best FT of the same head
        other = "" if tuned else f" (no FT of mode {mode} ran: the best FT with head {head}, mode {{}})"
        tuned = tuned or best_of(with_fields(ft, cell, type="ft", head=head))
        if tuned is None:
            out.append(_unmeasured("mezo-ft", f"no fine-tuning (type ft) with head {head}", cell,
                                   mezo.describe("MeZO")))
        else:
            f = tuned.mean()
            ok = f - m <= MEZO_FT_GAP / 100
            out.append(_check("mezo-ft", cell, ok, f"FT {points(f)} - MeZO {points(m)} = {points(f - m)} points "
                              f"{'<=' if ok else '>'} {MEZO_FT_GAP:g}"
                              + other.format(as_text(tuned.first.get("mode"))),
                              join(mezo.describe("MeZO"), tuned.describe("FT"))))
    return out


def _generation(gen: Mapping[tuple, Estimate]) -> list[Finding]:
    """The problem set's: fine-tuning on the k examples, and showing them in the prompt, beat zero-shot."""
    cells = sorted({key[:3] for key, e in gen.items() if has_fields(e, type="zeroshot")})
    if not cells:
        return [_unmeasured(c, "no zero-shot run (type zeroshot) of a generation task") for c in ("gen-ft", "gen-icl")]
    out = []
    for cell in cells:
        zs = best_of(with_fields(gen, cell, type="zeroshot"))
        z = zs.mean()
        for claim, role, types in (("gen-ft", "FT", ("ft", "mezo")), ("gen-icl", "ICL", ("icl",))):
            other = best_of(with_fields(gen, cell, type=types))
            if other is None:
                out.append(_unmeasured(claim, f"no {role} run (type {' or '.join(types)}) of {cell[0]}", cell,
                                       zs.describe("zero-shot")))
                continue
            o = other.mean()
            ok = o - z >= GEN_MARGIN / 100
            out.append(_check(claim, cell, ok, f"{role} {points(o)} - zero-shot {points(z)} = {signed_points(o - z)} "
                              f"points {'>=' if ok else '<'} {GEN_MARGIN:g} ({zs.first['metric']})",
                              join(other.describe(role), zs.describe("zero-shot"))))
    return out


def _memory(cell: tuple, mezo: Estimate, zs: Estimate) -> Finding:
    a, b = mezo.mean("peak_mem_mb"), zs.mean("peak_mem_mb")
    measured = join(*(f"{role} ({e.label}): {mb:.0f} MB, {n_seeds(e.values('peak_mem_mb').size)}"
                       for role, e, mb in (("MeZO", mezo, a), ("zero-shot", zs, b)) if not math.isnan(mb)))
    if math.isnan(a) or math.isnan(b):
        return _unmeasured("mezo-memory", "no peak_mem_mb in the MeZO or zero-shot metrics", cell, measured or MISSING)
    ratio = a / b
    ok = ratio <= MEZO_MEMORY
    cpu = any(as_text(r.get("device")).startswith("cpu") for r in mezo.rows + zs.rows)
    return _check("mezo-memory", cell, ok,
                  f"MeZO {a:.0f} MB / zero-shot {b:.0f} MB = {ratio:.2f}x {'<=' if ok else '>'} {MEZO_MEMORY:g}"
                  + ("; on CPU peak_mem_mb is the peak RSS, the process baseline (Python, torch, weights) included, "
                     "which pulls the ratio towards 1" if cpu else ""), measured)


def _kept(r: Mapping[str, Any]) -> float:
    """The graft's share of the fine-tuning gain on test: ``kept_fraction``, else computed; NaN if undefined."""
    if not is_missing(r.get("kept_fraction")):
        return float(r["kept_fraction"])
    g, f, p = (r.get(c) for c in ("test_metric", "ft_test_metric", "pre_test_metric"))
    if any(is_missing(x) for x in (g, f, p)) or f == p:
        return math.nan
    return (g - p) / (f - p)


def _graft(graft: Sequence[dict[str, Any]], ft_ece: Mapping[tuple, float],
           labels: Mapping[str, str] | None) -> list[Finding]:
    """``ft_ece``: the finetune runs' test ECE by (model, task, k, seed, method)."""
    claims = ("graft-kept", "graft-ece", "graft-ood")
    if not graft:
        return [_unmeasured(c, "no graft runs (the config's graft: section)") for c in claims]
    out = []
    for (model, task, k, method), g in group_runs(graft, lambda r: (r["model"], r["task"], int(r["k"]), r["method"]),
                                              labels).items():
        cell = (model, task, k)
        sparsities = sorted({float(r["sparsity"]) for r in g.rows})
        small = [s for s in sparsities if s <= GRAFT_SPARSITY]
        if not small:
            ran = ", ".join(f"{s:g}" for s in sparsities)
            out += [_unmeasured(c, f"no graft at sparsity <= {GRAFT_SPARSITY:g} (ran {ran})", cell, extra=method)
                    for c in claims]
            continue
        s = max(small)
        g = Estimate(f"{g.label}, sparsity {s:g}", tuple(r for r in g.rows if float(r["sparsity"]) == s))
        where = g.describe("graft")
        out.append(_graft_kept(cell, g, where, method))
        ece = [r.get("ft_test_ece") if not is_missing(r.get("ft_test_ece"))
               else ft_ece.get((model, task, k, int(r["seed"]), r["method"])) for r in g.rows]
        ece = [float(x) for x in ece if not is_missing(x)]
        graft_ece = g.mean("test_ece")
        if not ece or math.isnan(graft_ece):
            out.append(_unmeasured("graft-ece", "no test_ece of the graft or of its fine-tuned run", cell, where,
                                   method))
        else:
            f = float(np.mean(ece))
            ok = graft_ece <= f
            out.append(_check("graft-ece", cell, ok, f"graft ECE {points(graft_ece)} {'<=' if ok else '>'} FT ECE "
                              f"{points(f)} (x100)", f"{where}; ECE graft {points(graft_ece)}, FT {points(f)}", method))
        out.append(_graft_ood(cell, g, where, method))
    return out


def _graft_kept(cell: tuple, g: Estimate, where: str, method: str) -> Finding:
    f, p = g.mean("ft_test_metric"), g.mean("pre_test_metric")
    kept = [x for x in map(_kept, g.rows) if not math.isnan(x)]
    scores = ", ".join(f"{name} {points(x)}" for name, x in (("FT", f), ("pre-trained", p)) if not math.isnan(x))
    measured = join(where, scores)
    if not kept:
        return _unmeasured("graft-kept", f"no fine-tuning gain to keep ({scores or 'no FT or pre-trained scores'})",
                           cell, measured, method)
    share = float(np.mean(kept))
    ok = share >= GRAFT_KEPT
    return _check("graft-kept", cell, ok, f"the graft keeps {points(share)}% of the fine-tuning gain "
                  f"({scores}) {'>=' if ok else '<'} {100 * GRAFT_KEPT:g}%", f"{measured}; kept {points(share)}%", method)


def _graft_ood(cell: tuple, g: Estimate, where: str, method: str) -> Finding:
    tasks = sorted({c.removeprefix("ood.").rsplit(".", 1)[0] for r in g.rows for c, v in r.items()
                    if c.startswith("ood.") and c.endswith(".graft") and not is_missing(v)})
    scores = {t: (g.mean(f"ood.{t}.graft"), g.mean(f"ood.{t}.ft")) for t in tasks}
    scores = {t: v for t, v in scores.items() if not any(math.isnan(x) for x in v)}
    if not scores:
        return _unmeasured("graft-ood", f"no out-of-distribution scores (graft.ood names no task for {cell[1]})",
                           cell, where, method)
    text = "; ".join(f"on {t}: graft {points(a)}, FT {points(b)} ({signed_points(a - b)})" for t, (a, b) in scores.items())
    ok = all(a >= b for a, b in scores.values())
    return _check("graft-ood", cell, ok, ("graft >= FT" if ok else "graft < FT somewhere") + f" ({text})",
                  f"{where}; OOD {text}", method)


def _modeconn(interp: Sequence[dict[str, Any]], kinds: Mapping[str, str]) -> list[Finding]:
    out = []
    for kind, claim, how in (("pretrained-ft", "modeconn-pretrained",
                              "a: {method: M, pretrained: true}, b: {method: M}"),
                             ("seed-seed", "modeconn-seed", "two methods that differ only in model_seed")):
        rows = [r for r in interp if kinds.get(r["pair"]) == kind]
        if not rows:
            given = "" if kinds else "; no pair kinds were given (lmft.interpolate_plan.pair_kinds of the config)"
            out.append(_unmeasured(claim, f"no interpolate pair of kind {kind} ({how}){given}"))
        for r in rows:
            cell = (r["model"], r["task"], None if is_missing(r.get("k")) else int(r["k"]))
            parts = [f"{name} {float(r[c]) * scale:.{d}f}" for name, c, scale, d in
                     (("test loss barrier", "test_loss_barrier", 1, 4), ("loss at a", "test_loss_a", 1, 4),
                      ("loss at b", "test_loss_b", 1, 4), ("test metric barrier", "test_metric_barrier", 100, 1))
                     if not is_missing(r.get(c))]
            measured = f"pair {r['pair']}: " + (", ".join(parts) or MISSING)
            if is_missing(r.get("test_loss_barrier")):
                out.append(_unmeasured(claim, "no test_loss_barrier in the pair's metrics", cell, measured, r["pair"]))
                continue
            b = float(r["test_loss_barrier"])
            ok = b <= BARRIER_TOL
            out.append(_check(claim, cell, ok, f"test loss barrier {b:.4f} {'<=' if ok else '>'} {BARRIER_TOL:g}",
                              measured, r["pair"]))
    return out


def findings(runs: pd.DataFrame, pair_kinds: Mapping[str, str] | None = None,
             labels: Mapping[str, str] | None = None) -> list[Finding]:
    """Every claim's findings on ``runs`` (:func:`lmft.gather.load_runs`), claim by claim."""
    def records(stage: str) -> list[dict[str, Any]]:
        return selected(runs, (stage,)).to_dict("records")

    ft_rows = records("finetune")
    ft = group_runs(ft_rows, lambda r: (r["model"], r["task"], int(r["k"]), r["method"]), labels)
    kern = group_runs(records("kernel"), lambda r: (r["model"], r["task"], int(r["k"]), as_text(r.get("kernel.mode")),
                                                    r["prompt"], r["formula"], r["solver"]), labels)
    ft_ece = {(r["model"], r["task"], int(r["k"]), int(r["seed"]), r["method"]): r.get("test_ece") for r in ft_rows}
    gen = group_runs(records("generation"), lambda r: (r["model"], r["task"], int(r["k"]), r["method"]), labels)
    return [*_lmbff(ft), *_kernel(ft, kern), *_mezo(ft), *_graft(records("graft"), ft_ece, labels),
            *_modeconn(records("interpolate"), pair_kinds or {}), *_generation(gen)]
