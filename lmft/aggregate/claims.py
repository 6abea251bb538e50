"""The checks of each paper's claims against the runs: one :class:`Finding` per claim and cell.

Every comparative claim is decided by :mod:`lmft.aggregate.verdicts` on the paired bootstrap interval of
:mod:`lmft.aggregate.bootstrap`, over the test examples (and shared data seeds) both sides were scored on;
how a claim finds its runs is in :mod:`lmft.aggregate.findings`. Each claim is tested at the paper's own
operating point: grafts at ~0.01% of the parameters, MeZO's memory in its training steps against
back-propagation of the same parameters, MeZO against fine-tuning of the same parameters; the
zeroth-order methods after MeZO in :mod:`lmft.aggregate.zo_claims`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from lmft.aggregate import evidence
from lmft.aggregate.bootstrap import Interval, ece_columns, ece_value, seed_mean
# the checks' shared machinery, under the names the checks below call it by
from lmft.aggregate.checks import BEATS, Finding, Frames
from lmft.aggregate.checks import beats as _beats
from lmft.aggregate.checks import compare as _compare
from lmft.aggregate.checks import decide as _decide
from lmft.aggregate.checks import difference as _difference
from lmft.aggregate.checks import scored as _scored
from lmft.aggregate.checks import unmeasured as _unmeasured
from lmft.aggregate.checks import value as _value
from lmft.aggregate.estimates import Estimate, best_of, group_runs, has_fields, join, with_fields
from lmft.aggregate.gather import is_missing, selected
from lmft.aggregate.summary import MISSING, as_text
from lmft.aggregate.verdicts import FAILS, HOLDS, INCONCLUSIVE, UNMEASURED, Rule
from lmft.aggregate.zo_claims import zo_findings
from lmft.kernels.formulas import PROMPTS

PROMPT_HEADS = ("prompt", "causal")
LMBFF_K = 16  # LM-BFF's few-shot setting

KERNEL_MATCH = Rule("within", 0.05, "points", 100)  # |FT - kernel| < 5 points
MEZO_FT = Rule("below", 0.05, "points", 100)  # FT - MeZO < 5 ("comparable"; RoBERTa-large k=16: 1.4 on SST-2)
MEZO_MEM_INFERENCE = Rule("below", 1.2, "x")  # MeZO / inference peak memory of the step
MEZO_MEM_FT = Rule("below", 0.5, "x")  # MeZO / back-propagation FT of the same parameters
MEZO_MEM_SHARE = 0.01  # MeZO vs inference is decided where MeZO tunes at least this share of the weights
GRAFT_SPARSITY = 1e-4  # the paper's ~0.01% of the parameters
GRAFT_NEAR = 3.0  # a graft within this factor of GRAFT_SPARSITY is at the operating point
GRAFT_KEPT = Rule("above", 0.95, "%", 100)  # > 95% of the fine-tuned model's gain over pre-trained
GRAFT_ECE = Rule("above", 0.40, "%", 100)  # 40-90% lower ECE than the fine-tuned model
NO_BARRIER = Rule("below", 0.05, "nats")  # test loss barrier (signed height over the chord)
TASK_BARRIER = Rule("above", 0.05, "nats")
CLOSE_ENDPOINTS = 0.2  # ||a - b|| / ||a - theta0|| below this: the endpoints are one model


def _lmbff(ft: Mapping[tuple, Estimate]) -> list[Finding]:
    prompt = {key: e for key, e in ft.items() if has_fields(e, type="ft", head=PROMPT_HEADS)}
    cells = sorted({key[:3] for key in prompt if key[2] == LMBFF_K})
    claims = ("lmbff-zeroshot", "lmbff-noprompt")
    if not cells:
        ran = sorted({key[2] for key in prompt})
        return [_unmeasured(c, f"no prompt fine-tuning (type ft, head prompt or causal) at k={LMBFF_K}"
                            + (f"; it ran at k={', '.join(map(str, ran))}" if ran else "")) for c in claims]
    out = []
    for cell in cells:
        model, task, k = cell
        best = best_of(with_fields(prompt, cell))
        zs = best_of(with_fields(ft, cell, type="zeroshot"))
        cls = best_of(with_fields(ft, cell, type="ft", head="cls")) or best_of(
            replace(e, label=f"{e.label} of {key[0]}") for key, e in ft.items()
            if key[1:3] == (task, k) and key[0] != model and has_fields(e, type="ft", head="cls"))
        for claim, other, role, missing in (
                ("lmbff-zeroshot", zs, "zero-shot", f"no zero-shot run (type zeroshot) of {model}"),
                ("lmbff-noprompt", cls, "no-prompt FT", "no no-prompt fine-tuning (type ft, head cls) of any model")):
            measured = join(best.describe("prompt FT"), other and other.describe(role))
            out.append(_unmeasured(claim, missing, cell, measured) if other is None else
                       _beats(claim, cell, best, other, "prompt FT", role, measured))
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
            out += [_unmeasured(claim, "the kernel metrics carry no kernel.mode, so no fine-tuning of the same "
                                "parameters can be matched; rerun the kernel solve", cell, measured)
                    for claim in ("kernel-prompt", "kernel-noprompt")]
            continue
        have = {p for p in PROMPTS if kernels[p] and tuned[p]}
        metric = next(e.first["metric"] for e in kernels.values() if e)
        if "prompt" in have:
            out.append(_beats("kernel-prompt", cell, tuned["prompt"], kernels["prompt"], "FT", "kernel", measured,
                              KERNEL_MATCH, mode))
        elif kernels["prompt"] is not None:
            ft_modes = sorted({as_text(e.first.get("mode")) for e in with_fields(ft, cell, type="ft", head=PROMPT_HEADS)})
            ran = f"; it ran with mode {', '.join(ft_modes)}" if ft_modes else ""
            out.append(_unmeasured("kernel-prompt", f"no prompt fine-tuning (type ft, head prompt or causal) of mode "
                                   f"{mode} on {model}{ran}", cell, measured, mode))
        if have != set(PROMPTS):
            missing = [f"{p} {what}" for p in PROMPTS for what, e in
                       (("kernel", kernels[p]), (f"FT (head {'prompt/causal' if p == 'prompt' else 'cls'})", tuned[p]))
                       if e is None]
            out.append(_unmeasured("kernel-noprompt", f"no {', no '.join(missing)} of mode {mode} on {model}",
                                   cell, measured, mode))
            continue
        sides = {f"{what}-{p}": e for p in PROMPTS for what, e in (("ft", tuned[p]), ("kernel", kernels[p]))}

        def gaps(m: Mapping[str, np.ndarray]) -> np.ndarray:
            gap = {p: _value(m, f"ft-{p}", metric) - _value(m, f"kernel-{p}", metric) for p in PROMPTS}
            return seed_mean(gap["noprompt"] - gap["prompt"])

        out.append(_compare("kernel-noprompt", cell, BEATS, "no-prompt gap - prompt gap (gap: FT - kernel)",
                            lambda: {n: evidence.by_seed(e, evidence.predictions) for n, e in sides.items()},
                            _scored(dict.fromkeys(sides, metric)), gaps, measured, mode))
    return out


def _mezo(ft: Mapping[tuple, Estimate]) -> list[Finding]:
    cells = sorted({key[:3] for key, e in ft.items() if has_fields(e, type="mezo")})
    if not cells:
        return [_unmeasured(c, "no MeZO runs (finetune type mezo)") for c in ("mezo-zeroshot", "mezo-ft")]
    out = []
    for cell in cells:
        mezo = best_of(with_fields(ft, cell, type="mezo"))
        zs = best_of(with_fields(ft, cell, type="zeroshot"))
        mode, head = as_text(mezo.first.get("mode")), as_text(mezo.first.get("head"))
        tuned = best_of(with_fields(ft, cell, type="ft", mode=mode, head=head))
        out.append(_unmeasured("mezo-zeroshot", f"no zero-shot run (type zeroshot) of {cell[0]}", cell,
                               mezo.describe("MeZO")) if zs is None else
                   _beats("mezo-zeroshot", cell, mezo, zs, "MeZO", "zero-shot",
                          join(mezo.describe("MeZO"), zs.describe("zero-shot"))))
        if tuned is None:  # the paper compares with FT of the same parameters, nothing else
            modes = sorted({as_text(e.first.get("mode")) for e in with_fields(ft, cell, type="ft", head=head)})
            out.append(_unmeasured("mezo-ft", f"no fine-tuning (type ft) of the same parameters (mode {mode}, head "
                                   f"{head}) ran" + (f"; FT ran with mode {', '.join(modes)}" if modes else ""),
                                   cell, mezo.describe("MeZO"), mode))
        else:
            out.append(_beats("mezo-ft", cell, tuned, mezo, "FT", "MeZO",
                              join(mezo.describe("MeZO"), tuned.describe(f"FT of mode {mode}")), MEZO_FT, mode))
    return out


def _memory(rows: Sequence[dict[str, Any]]) -> list[Finding]:
    """MeZO's training-step memory against inference and back-propagation FT at the same batch
    (the memory stage's rows: one per model, task, k, seed, ``mode``, ``what``)."""
    claims = ("mezo-memory-inference", "mezo-memory-ft")
    if not rows:
        return [_unmeasured(c, "no memory measurement (the config's memory: section)") for c in claims]
    out = []
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["task"], int(r["k"]), int(r["seed"]), r["mode"]), {})[r["what"]] = r
    for (model, task, k, seed, mode), by in sorted(groups.items()):
        cell = (model, task, k)
        some = next(iter(by.values()))
        weights = "" if is_missing(some.get("params_mb")) else f", weights {float(some['params_mb']):.0f} MB"
        measured = (f"mode {mode}, seed {seed}, batch {some.get('batch_size')}, peak increase over the loaded model "
                    f"({as_text(some.get('measure'))}){weights}: "
                    + ", ".join(f"{w} {float(r['peak_mb_median']):.1f} MB" for w, r in sorted(by.items())
                                if not is_missing(r.get("peak_mb_median"))))
        ft_key = "ft-sgd" if "ft-sgd" in by else "ft-adamw"
        tuned, total = some.get("trainable_params"), some.get("total_params")
        share = None if is_missing(tuned) or is_missing(total) else float(tuned) / float(total)
        for claim, other, rule in (("mezo-memory-inference", "inference", MEZO_MEM_INFERENCE),
                                   ("mezo-memory-ft", ft_key, MEZO_MEM_FT)):
            if claim == "mezo-memory-inference" and share is not None and share < MEZO_MEM_SHARE:
                out.append(_unmeasured(claim, f"mode {mode} tunes {100 * share:.2g}% of the weights: its step peaks "
                                       "in the same forward pass as inference, so the comparison cannot fail "
                                       f"(decided for modes that tune >= {100 * MEZO_MEM_SHARE:g}%; against FT of the "
                                       "same parameters in mezo-memory-ft)", cell, measured, mode))
                continue
            if "mezo" not in by or other not in by:
                out.append(_unmeasured(claim, f"no {'mezo' if 'mezo' not in by else other} measurement of mode "
                                       f"{mode}", cell, measured, mode))
                continue
            a, b = by["mezo"], by[other]
            if any(is_missing(r.get(c)) for r in (a, b) for c in ("peak_mb_min", "peak_mb_max")):
                out.append(_unmeasured(claim, f"peak memory not measurable here ({as_text(a.get('measure'))})",
                                       cell, measured, mode))
                continue
            lo_b, hi_b = float(b["peak_mb_min"]), float(b["peak_mb_max"])
            ci = Interval(float(a["peak_mb_median"]) / float(b["peak_mb_median"]),
                          float(a["peak_mb_min"]) / hi_b if hi_b > 0 else math.inf,
                          float(a["peak_mb_max"]) / lo_b if lo_b > 0 else math.inf,
                          int(a.get("repeats") or 1), 1, 0,
                          how=f"range over {int(a.get('repeats') or 1)} repeated measurements: min/max against max/min")
            out.append(_decide(claim, cell, rule, f"MeZO / {other} peak memory of the step", ci, measured, mode))
    return out


def _generation(gen: Mapping[tuple, Estimate]) -> list[Finding]:
    """The problem set's: fine-tuning on the k examples, and showing them in the prompt, beat zero-shot."""
    cells = sorted({key[:3] for key, e in gen.items() if has_fields(e, type="zeroshot")})
    if not cells:
        return [_unmeasured(c, "no zero-shot run (type zeroshot) of a generation task") for c in ("gen-ft", "gen-icl")]
    out = []
    for cell in cells:
        zs = best_of(with_fields(gen, cell, type="zeroshot"))
        for claim, role, types in (("gen-ft", "FT", ("ft", "mezo")), ("gen-icl", "ICL", ("icl",))):
            other = best_of(with_fields(gen, cell, type=types))
            if other is None:
                out.append(_unmeasured(claim, f"no {role} run (type {' or '.join(types)}) of {cell[0]}", cell,
                                       zs.describe("zero-shot")))
                continue
            out.append(_beats(claim, cell, other, zs, role, f"zero-shot ({zs.first['metric']})",
                              join(other.describe(role), zs.describe("zero-shot"))))
    return out


def _graft(graft: Sequence[dict[str, Any]], labels: Mapping[str, str] | None) -> list[Finding]:
    claims = ("graft-kept", "graft-ece", "graft-ood")
    if not graft:
        return [_unmeasured(c, "no graft runs (the config's graft: section)") for c in claims]
    out = []
    for (model, task, k, method), g in group_runs(graft, lambda r: (r["model"], r["task"], int(r["k"]), r["method"]),
                                              labels).items():
        cell = (model, task, k)
        by_sparsity = {s: Estimate(f"{g.label}, sparsity {s:g}", tuple(r for r in g.rows if float(r["sparsity"]) == s))
                       for s in sorted({float(r["sparsity"]) for r in g.rows})}
        near = [s for s in by_sparsity if GRAFT_SPARSITY / GRAFT_NEAR <= s <= GRAFT_SPARSITY * GRAFT_NEAR]
        if not near:
            ran = ", ".join(f"{s:g}" for s in by_sparsity)
            out += [_unmeasured(c, f"no graft near the paper's sparsity {GRAFT_SPARSITY:g} (ran {ran})", cell,
                                extra=method) for c in claims]
            continue
        at = by_sparsity[min(near, key=lambda s: abs(math.log(s / GRAFT_SPARSITY)))]
        moved = ", ".join(f"{r['sparsity']:g}: {100 * float(r['mask_moved']):.0f}%" for r in g.rows
                          if not is_missing(r.get("mask_moved")))
        where = join(at.describe("graft"), moved and f"mask entries outside the top-|delta| base patch {moved}")
        not_pre = [int(r["seed"]) for r in at.rows
                   if not is_missing(r.get("pre_is_pretrained")) and not bool(r["pre_is_pretrained"])]
        if not_pre:
            out += [_unmeasured(c, f"seed(s) {not_pre}: the fine-tuning run also tuned tensors outside the graftable "
                                "set (pre_is_pretrained false), so 'pre' is not the pre-trained model; freeze the "
                                "embeddings and the head", cell, where, method) for c in claims]
            continue
        gain = _compare("graft-kept", cell, BEATS, "FT - pre-trained", lambda: _graft_frames(at, ("ft", "pre")),
                        _scored({"ft": at.first["metric"], "pre": at.first["metric"]}),
                        _difference("ft", "pre", at.first["metric"]), where)
        if gain.verdict != HOLDS:
            out += [replace(gain, claim=c, verdict=UNMEASURED, extra=method, rule=MISSING, ci=None,
                            reason=f"the fine-tuning gain itself is not significant ({gain.reason})") for c in claims]
            continue
        out.append(_graft_kept(cell, at, by_sparsity, where, method))
        out.append(_graft_ece(cell, at, where, method))
        out += _graft_ood(cell, at, where, method)
    return out


def _graft_frames(g: Estimate, models: Sequence[str], split: str = "test") -> Frames:
    return {m: evidence.by_seed(g, lambda r, m=m: evidence.graft_predictions(r, m, split)) for m in models}


def _kept(metric: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """(graft - pre) / (ft - pre) of the seed means; NaN where the resample has no gain."""
    def stat(m: Mapping[str, np.ndarray]) -> np.ndarray:
        g, p, f = (seed_mean(_value(m, s, metric)) for s in ("graft", "pre", "ft"))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(f - p > 0, (g - p) / np.where(f - p > 0, f - p, 1), np.nan)
    return stat


def _graft_kept(cell: tuple, at: Estimate, by_sparsity: Mapping[float, Estimate], where: str, method: str) -> Finding:
    metric = at.first["metric"]
    models = ("graft", "pre", "ft")

    def kept(g: Estimate) -> Finding:
        return _compare("graft-kept", cell, GRAFT_KEPT, "kept share of the FT gain", lambda: _graft_frames(g, models),
                        _scored(dict.fromkeys(models, metric)), _kept(metric), where, method)

    every = {s: kept(g) for s, g in by_sparsity.items()}
    clears = [s for s, f in every.items() if f.verdict == HOLDS]
    scan = "; ".join(f"sparsity {s:g}: {GRAFT_KEPT.explain(f.ci).split(':')[0]}%" for s, f in every.items() if f.ci)
    note = (f"smallest sparsity whose interval clears 95%: {min(clears):g}" if clears else
            "no sparsity's interval clears 95%") + f" ({scan})"
    main = every[float(at.first["sparsity"])]
    return replace(main, reason=f"{main.reason}; {note}")


def _graft_ece(cell: tuple, at: Estimate, where: str, method: str) -> Finding:
    def columns(part: Mapping[str, pd.DataFrame]) -> dict[str, np.ndarray]:
        return {c: v for m, f in part.items()
                for c, v in ece_columns(np.stack(f["probs"].to_numpy()), f["label"].to_numpy(), f"{m}:").items()}

    def reduction(m: Mapping[str, np.ndarray]) -> np.ndarray:
        g, f = seed_mean(ece_value(m, "graft:")), seed_mean(ece_value(m, "ft:"))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(f > 0, (f - g) / np.where(f > 0, f, 1), np.nan)

    return _compare("graft-ece", cell, GRAFT_ECE, "(FT ECE - graft ECE) / FT ECE",
                    lambda: _graft_frames(at, ("graft", "ft")), columns, reduction, where, method)


def _graft_ood(cell: tuple, at: Estimate, where: str, method: str) -> list[Finding]:
    tasks = sorted({c.removeprefix("ood.").rsplit(".", 1)[0] for r in at.rows for c, v in r.items()
                    if c.startswith("ood.") and c.endswith(".graft") and not is_missing(v)})
    if not tasks:
        return [_unmeasured("graft-ood", f"no out-of-distribution scores (graft.ood names no task for {cell[1]})",
                            cell, where, method)]
    metric = at.first["metric"]
    return [_compare("graft-ood", cell, BEATS, f"graft - FT on {t}",
                     lambda t=t: _graft_frames(at, ("graft", "ft"), f"ood:{t}"),
                     _scored({"graft": metric, "ft": metric}), _difference("graft", "ft", metric), where,
                     f"{method} -> {t}") for t in tasks]


MODECONN = {  # pair kind -> (claim, rule, how to configure one)
    "seed-seed": ("modeconn-seed", NO_BARRIER, "two methods that differ only in model_seed"),
    "data-seed": ("modeconn-data", NO_BARRIER, "one method on two k-shot seeds of one task"),
    "task-task": ("modeconn-task", TASK_BARRIER, "one method on two tasks"),
}


def _barrier(m: Mapping[str, np.ndarray]) -> np.ndarray:
    """Signed barrier: the largest height of the mean test loss over the chord between the ends, at the
    path's interior points (columns ``loss@{alpha}``, at least 3). Negative where the whole path runs
    below the chord: how far below shows, where a clip at 0 would read as "no barrier" whatever it was."""
    names = sorted(m, key=lambda c: float(c.split("@")[1]))
    loss = np.stack([seed_mean(m[c]) for c in names], axis=-1)  # [R, P]
    x = np.asarray([float(c.split("@")[1]) for c in names])
    chord = loss[:, :1] + (x - x[0]) / (x[-1] - x[0]) * (loss[:, -1:] - loss[:, :1])
    return (loss - chord)[:, 1:-1].max(axis=-1)


def _losses(part: Mapping[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    return {f"loss@{a}": f["loss"].to_numpy(float) for a, f in part.items()}


def _modeconn(interp: Sequence[dict[str, Any]], kinds: Mapping[str, str]) -> list[Finding]:
    out = []
    for kind, (claim, rule, how) in MODECONN.items():
        rows = [r for r in interp if kinds.get(r["pair"]) == kind]
        if not rows:
            given = "" if kinds else "; no pair kinds were given (lmft.interpolate.plan.pair_kinds of the config)"
            out.append(_unmeasured(claim, f"no interpolate pair of kind {kind} ({how}){given}"))
        for r in rows:
            cell = (r["model"], r["task"], None if is_missing(r.get("k")) else int(r["k"]))
            parts = [f"{name} {float(r[c]):.{d}f}" for name, c, d in
                     (("test loss at a", "test_loss_a", 3), ("at b", "test_loss_b", 3),
                      ("||a - b||", "distance_ab", 2), ("||a - theta0||", "distance_a0", 2),
                      ("relative distance", "relative_distance", 2)) if not is_missing(r.get(c))]
            measured = f"pair {r['pair']}: " + (", ".join(parts) or MISSING)
            rel = r.get("relative_distance")
            if is_missing(rel):
                out.append(_unmeasured(claim, "no relative_distance in the pair's metrics (rerun the pair)", cell,
                                       measured, r["pair"]))
                continue
            if float(rel) < CLOSE_ENDPOINTS:
                out.append(_unmeasured(claim, f"the endpoints are too close to tell: ||a - b|| / ||a - theta0|| = "
                                       f"{float(rel):.2f} < {CLOSE_ENDPOINTS:g}", cell, measured, r["pair"]))
                continue

            def frames(r: Mapping[str, Any] = r) -> Frames:
                table = evidence.losses(r)
                return {repr(float(a)): {0: f.drop(columns=["alpha"])} for a, f in table.groupby("alpha")}

            out.append(_compare(claim, cell, rule, "test loss barrier", frames, _losses, _barrier, measured, r["pair"]))
    return out


def findings(runs: pd.DataFrame, pair_kinds: Mapping[str, str] | None = None,
             labels: Mapping[str, str] | None = None) -> list[Finding]:
    """Every claim's findings on ``runs`` (:func:`lmft.aggregate.gather.load_runs`), claim by claim."""
    def records(stage: str) -> list[dict[str, Any]]:
        return selected(runs, (stage,)).to_dict("records")

    ft = group_runs(records("finetune"), lambda r: (r["model"], r["task"], int(r["k"]), r["method"]), labels)
    kern = group_runs(records("kernel"), lambda r: (r["model"], r["task"], int(r["k"]), as_text(r.get("kernel.mode")),
                                                    r["prompt"], r["formula"], r["solver"]), labels)
    gen = group_runs(records("generation"), lambda r: (r["model"], r["task"], int(r["k"]), r["method"]), labels)
    return [*_lmbff(ft), *_kernel(ft, kern), *_mezo(ft), *_memory(records("memory")), *zo_findings(ft),
            *_graft(records("graft"), labels), *_modeconn(records("interpolate"), pair_kinds or {}),
            *_generation(gen)]


__all__ = ["Finding", "findings", "FAILS", "HOLDS", "INCONCLUSIVE", "UNMEASURED"]
