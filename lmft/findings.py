"""Each paper's headline claims checked against this run: ``results/tables/findings.{csv,md,html}``.

One row per claim and per (model, task, k) where the claim's main runs exist (per method for
grafting, per pair for mode connectivity), columns :data:`COLUMNS`:

``measured``
    every number the verdict uses: a method's test metric x100 over the seeds (each seed's
    selected trial, :func:`lmft.aggregate.mark_selected`) as ``mean (std), n seeds``, or for one
    seed ``mean ±se`` with the binomial standard error sqrt(p (1 - p) / n_test)
    (:func:`lmft.aggregate.spread_text`); memory in MB, barriers in loss units.
``published``
    the papers' own figures for the claim (``lmft/data/paper_figures.csv``, rows copied from
    ``paper_tables/`` with their source line), on their models and budgets, not this run's.
``verdict``
    ``holds`` / ``does not hold`` on the means against ``threshold``; read it beside the spread.
    ``not measured``: the inputs lack a run the claim needs (a row with ``-`` for model, task and
    k when none of the claim's main runs ran), or the claim is undefined on them (a graft when
    fine-tuning gained nothing); ``reason`` says which and names the numbers.

How a claim finds its runs (finetune fields ``type``, ``head``, ``mode``; "best" is the method
with the highest mean dev metric, ties to the first name):

LM-BFF, at k = 16
    the best prompt fine-tuning (type ``ft``, head ``prompt`` or ``causal``) beats the best
    zero-shot (type ``zeroshot``) of the same model and the best no-prompt fine-tuning (type
    ``ft``, head ``cls``) of the same model, else of another model (named in ``measured``).
Kernel view, per (model, task, k, ``kernel.mode``)
    the best ``prompt`` kernel (formula, solver) is within :data:`KERNEL_GAP` points of the best
    prompt fine-tuning whose ``mode`` equals the kernel's ``kernel.mode`` (the same trainable
    parameters); and the ``noprompt`` kernel's gap to the best ``cls`` fine-tuning of that mode
    is larger than the prompt kernel's gap.
MeZO, per (model, task, k) of type ``mezo``
    the best MeZO beats the best zero-shot by :data:`MEZO_MARGIN` points; its ``peak_mem_mb``
    is at most :data:`MEZO_MEMORY` x the zero-shot run's (inference); the best ``ft`` of the same
    ``mode`` and ``head`` (none ran: the best ``ft`` of that ``head``, said in the reason) is at
    most :data:`MEZO_FT_GAP` points ahead.
Grafting, per (model, task, k, method), the graft of the largest sparsity <= :data:`GRAFT_SPARSITY`
    keeps >= :data:`GRAFT_KEPT` of the fine-tuning gain (``kept_fraction``, else computed from
    ``test_metric``, ``ft_test_metric``, ``pre_test_metric``; mean over seeds); its ``test_ece`` is
    at most the fine-tuned model's (``ft_test_ece``, else the finetune run's ``test_ece``); on
    every out-of-distribution task its score (``ood.{task}.graft``) is at least the fine-tuned
    model's (``ood.{task}.ft``).
Mode connectivity, per interpolate pair of the kind (:func:`pair_kinds`; the metrics do not say it)
    ``pretrained-ft`` and ``seed-seed`` pairs: ``test_loss_barrier`` <= :data:`BARRIER_TOL`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from lmft.aggregate import (MISSING, PROMPT_ORDER, TOPIC_FILES, Table, _fixed, _is_missing, _selected, _task_rank,
                            _text, method_label, single_seed_se, spread_text)

COLUMNS = ("paper", "claim", "model", "task", "k", "measured", "published", "threshold", "verdict", "reason")
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


@dataclass(frozen=True)
class Claim:
    """A paper's claim as one row kind of the findings: ``key`` names it in paper_figures.csv."""

    key: str
    paper: str
    text: str
    threshold: str


CLAIMS: tuple[Claim, ...] = (
    Claim("lmbff", "LM-BFF", f"prompt fine-tuning beats zero-shot and no-prompt fine-tuning (k={LMBFF_K})",
          "prompt FT > zero-shot and > no-prompt FT"),
    Claim("kernel-prompt", "Kernel view", "the prompt eNTK of the tuned parameters matches fine-tuning them",
          f"FT - kernel <= {KERNEL_GAP:g} points"),
    Claim("kernel-noprompt", "Kernel view", "no-prompt kernels fall further behind their fine-tuning than prompt ones",
          "no-prompt gap > prompt gap"),
    Claim("mezo-zeroshot", "MeZO", "MeZO improves on zero-shot", f"MeZO - zero-shot >= {MEZO_MARGIN:g} points"),
    Claim("mezo-memory", "MeZO", "MeZO needs the memory of inference",
          f"MeZO / zero-shot peak memory <= {MEZO_MEMORY:g}"),
    Claim("mezo-ft", "MeZO", "MeZO comes close to fine-tuning the same parameters",
          f"FT - MeZO <= {MEZO_FT_GAP:g} points"),
    Claim("graft-kept", "Grafting", "a graft of <= 1% of the parameters keeps the fine-tuning gain",
          f"kept >= {100 * GRAFT_KEPT:g}% of FT - pre-trained at sparsity <= {GRAFT_SPARSITY:g}"),
    Claim("graft-ece", "Grafting", "the graft is calibrated at least as well as the fine-tuned model",
          "graft ECE <= FT ECE"),
    Claim("graft-ood", "Grafting", "the graft does at least as well out of distribution",
          "graft OOD metric >= FT OOD metric"),
    Claim("modeconn-pretrained", "Mode connectivity", "no loss barrier from the pre-trained to the fine-tuned model",
          f"test loss barrier <= {BARRIER_TOL:g}"),
    Claim("modeconn-seed", "Mode connectivity", "no loss barrier between two training seeds on the same data",
          f"test loss barrier <= {BARRIER_TOL:g}"),
)
_CLAIM = {c.key: c for c in CLAIMS}


def paper_figures() -> dict[str, str]:
    """Claim key -> the papers' figures for it, ``context: figure value, ...; context: ...``, from
    ``lmft/data/paper_figures.csv`` (packaged with lmft: the workflow cannot read ``paper_tables/``)."""
    text = resources.files("lmft").joinpath("data/paper_figures.csv").read_text(encoding="utf-8")
    groups: dict[str, dict[str, list[str]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        groups.setdefault(row["claim"], {}).setdefault(row["context"], []).append(f"{row['figure']} {row['value']}")
    return {claim: "; ".join(f"{ctx}: {', '.join(items)}" for ctx, items in by_context.items())
            for claim, by_context in groups.items()}


# ----------------------------------------------------------------------------- interpolate pairs

def pair_kinds(config: Mapping[str, Any]) -> dict[str, str]:
    """Kind of each ``interpolate.pairs`` entry of ``config``: ``pretrained-ft`` (one end a run's
    pre-trained values, the other that run's final checkpoint), ``seed-seed`` (the same checkpoint
    of two runs on the same task, k and data seed whose methods differ only in the effective
    ``model_seed`` and in which checkpoints they save), else ``other`` (also when the pair's jobs on several tasks disagree).

    The interpolate metrics name their endpoints by path only, so the workflow passes this to the aggregate.
    """
    from lmft.finetune import resolve_spec
    from lmft.interpolate_plan import interpolate_jobs

    methods = (config.get("finetune") or {}).get("methods") or {}

    def settings(end: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        spec = resolve_spec(methods[end["method"]], end["method"])
        for key in ("save_steps", "save_every"):  # what a run keeps on disk, not what it trains
            spec.pop(key, None)
        seed = spec.pop("model_seed")
        return spec, end["seed"] if seed is None else int(seed)

    def kind(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
        same = [f for f in ("method", "task", "k", "seed", "step") if a[f] == b[f]]
        if a["pretrained"] != b["pretrained"]:
            final = b if a["pretrained"] else a
            same_run = {"method", "task", "k", "seed"} <= set(same)
            return "pretrained-ft" if same_run and final["step"] is None else "other"
        if a["pretrained"] or not {"task", "k", "seed", "step"} <= set(same):
            return "other"
        (spec_a, seed_a), (spec_b, seed_b) = settings(a), settings(b)
        return "seed-seed" if spec_a == spec_b and seed_a != seed_b else "other"

    kinds: dict[str, set[str]] = {}
    for job in interpolate_jobs(config):
        kinds.setdefault(job["pair"], set()).add(kind(job["a"], job["b"]))
    return {pair: found.pop() if len(found) == 1 else "other" for pair, found in sorted(kinds.items())}


# ----------------------------------------------------------------------------- runs per method

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
        return np.asarray([float(r[column]) for r in self.rows if not _is_missing(r.get(column))], dtype=float)

    def mean(self, column: str = "test_metric") -> float:
        v = self.values(column)
        return float(v.mean()) if v.size else math.nan

    def describe(self, role: str) -> str:
        """``role (label): mean (std), n seeds`` of the test metric x100 (one seed: ``mean ±se``)."""
        v = self.values()
        se = single_seed_se(v, self.first.get("n_test"), self.first["metric"])
        return f"{role} ({self.label}): {spread_text(v.mean(), v.std(), len(v), se)}, {_seeds(len(v))}"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _group(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], tuple],
           labels: Mapping[str, str] | None) -> dict[tuple, Estimate]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return {k: Estimate(method_label(v[0], labels), tuple(v)) for k, v in groups.items()}


def _is(e: Estimate, **want: str | tuple[str, ...]) -> bool:
    """Whether the estimate's runs have these field values (a tuple: any of its values)."""
    return all(_text(e.first.get(f)) in (v if isinstance(v, tuple) else (v,)) for f, v in want.items())


def _where(ests: Mapping[tuple, Estimate], cell: tuple, **want: str | tuple[str, ...]) -> list[Estimate]:
    """The estimates keyed under ``cell`` (a key prefix) whose runs have the field values ``want``."""
    return [e for key, e in ests.items() if key[:len(cell)] == cell and _is(e, **want)]


def _best(candidates: Iterable[Estimate]) -> Estimate | None:
    """The candidate of the highest mean dev metric (ties: the first label in sort order)."""
    ranked = sorted(candidates, key=lambda e: e.label)
    if not ranked:
        return None
    return max(ranked, key=lambda e: -math.inf if math.isnan(d := e.mean("dev_metric")) else d)


def _pts(x: float) -> str:
    return _fixed(100 * x, 1)


def _gap(x: float) -> str:
    """A difference of metrics in points, signed."""
    s = _pts(x)
    return s if s.startswith("-") or s == "0.0" else "+" + s


def _join(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


# ----------------------------------------------------------------------------- the claims

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
    prompt = {key: e for key, e in ft.items() if _is(e, type="ft", head=PROMPT_HEADS)}
    cells = sorted({key[:3] for key in prompt if key[2] == LMBFF_K})
    if not cells:
        ran = sorted({key[2] for key in prompt})
        return [_unmeasured("lmbff", f"no prompt fine-tuning (type ft, head prompt or causal) at k={LMBFF_K}"
                            + (f"; it ran at k={', '.join(map(str, ran))}" if ran else ""))]
    out = []
    for cell in cells:
        model, task, k = cell
        best = _best(_where(prompt, cell))
        zs = _best(_where(ft, cell, type="zeroshot"))
        cls = _best(_where(ft, cell, type="ft", head="cls")) or _best(
            replace(e, label=f"{e.label} of {key[0]}") for key, e in ft.items()
            if key[1:3] == (task, k) and key[0] != model and _is(e, type="ft", head="cls"))
        measured = _join(best.describe("prompt FT"), zs and zs.describe("zero-shot"),
                         cls and cls.describe("no-prompt FT"))
        if zs is None or cls is None:
            missing = [f"no zero-shot run (type zeroshot) of {model}"] if zs is None else []
            missing += ["no no-prompt fine-tuning (type ft, head cls) of any model"] if cls is None else []
            out.append(_unmeasured("lmbff", "; ".join(missing), cell, measured))
            continue
        p, z, c = best.mean(), zs.mean(), cls.mean()
        out.append(_check("lmbff", cell, p > z and p > c,
                          f"prompt FT {_pts(p)} vs zero-shot {_pts(z)} ({_gap(p - z)}) and no-prompt FT "
                          f"{_pts(c)} ({_gap(p - c)})", measured))
    return out


def _kernel(ft: Mapping[tuple, Estimate], kern: Mapping[tuple, Estimate]) -> list[Finding]:
    """``kern`` is keyed (model, task, k, kernel.mode, prompt, formula, solver)."""
    if not kern:
        return [_unmeasured(c, "no kernel solve runs (the config's kernels: section)")
                for c in ("kernel-prompt", "kernel-noprompt")]
    out = []
    for model, task, k, mode in sorted({key[:4] for key in kern}, key=lambda c: (c[:3], _text(c[3]))):
        cell = (model, task, k)
        kernels = {p: _best(_where(kern, (model, task, k, mode, p))) for p in PROMPT_ORDER}
        heads = {"prompt": PROMPT_HEADS, "noprompt": "cls"}
        tuned = {p: _best(_where(ft, cell, type="ft", head=heads[p], mode=mode)) if mode else None
                 for p in PROMPT_ORDER}
        measured = f"mode {mode or MISSING}: " + _join(*(e.describe(f"{p} {what}") for p in PROMPT_ORDER for what, e
                                                         in (("kernel", kernels[p]), ("FT", tuned[p])) if e))
        if not mode:
            for claim in ("kernel-prompt", "kernel-noprompt"):
                out.append(_unmeasured(claim, "the kernel metrics carry no kernel.mode, so no fine-tuning of the "
                                       "same parameters can be matched; rerun the kernel solve", cell, measured))
            continue
        gap = {p: tuned[p].mean() - kernels[p].mean() for p in PROMPT_ORDER if kernels[p] and tuned[p]}
        ft_modes = sorted({_text(e.first.get("mode")) for e in _where(ft, cell, type="ft", head=PROMPT_HEADS)})
        if "prompt" in gap:
            ok = gap["prompt"] <= KERNEL_GAP / 100
            out.append(_check("kernel-prompt", cell, ok,
                              f"FT {_pts(tuned['prompt'].mean())} - kernel {_pts(kernels['prompt'].mean())} = "
                              f"{_pts(gap['prompt'])} points {'<=' if ok else '>'} {KERNEL_GAP:g}", measured, mode))
        elif kernels["prompt"] is not None:  # with only no-prompt kernels the second claim says what is missing
            ran = f"; it ran with mode {', '.join(ft_modes)}" if ft_modes else ""
            out.append(_unmeasured("kernel-prompt", f"no prompt fine-tuning (type ft, head prompt or causal) of mode "
                                   f"{mode} on {model}{ran}", cell, measured, mode))
        if len(gap) < 2:
            missing = [f"{p} {what}" for p in PROMPT_ORDER for what, e in
                       (("kernel", kernels[p]), (f"FT (head {'prompt/causal' if p == 'prompt' else 'cls'})", tuned[p]))
                       if e is None]
            out.append(_unmeasured("kernel-noprompt", f"no {', no '.join(missing)} of mode {mode} on {model}",
                                   cell, measured, mode))
        else:
            ok = gap["noprompt"] > gap["prompt"]
            out.append(_check("kernel-noprompt", cell, ok,
                              f"no-prompt gap {_pts(gap['noprompt'])} {'>' if ok else '<='} prompt gap "
                              f"{_pts(gap['prompt'])} points (FT - kernel)", measured, mode))
    return out


def _mezo(ft: Mapping[tuple, Estimate]) -> list[Finding]:
    cells = sorted({key[:3] for key, e in ft.items() if _is(e, type="mezo")})
    if not cells:
        return [_unmeasured(c, "no MeZO runs (finetune type mezo)")
                for c in ("mezo-zeroshot", "mezo-memory", "mezo-ft")]
    out = []
    for cell in cells:
        mezo = _best(_where(ft, cell, type="mezo"))
        zs = _best(_where(ft, cell, type="zeroshot"))
        mode, head = _text(mezo.first.get("mode")), _text(mezo.first.get("head"))
        tuned = _best(_where(ft, cell, type="ft", mode=mode, head=head))
        m = mezo.mean()
        if zs is None:
            for claim in ("mezo-zeroshot", "mezo-memory"):
                out.append(_unmeasured(claim, f"no zero-shot run (type zeroshot) of {cell[0]}", cell,
                                       mezo.describe("MeZO")))
        else:
            z = zs.mean()
            out.append(_check("mezo-zeroshot", cell, m - z >= MEZO_MARGIN / 100,
                              f"MeZO {_pts(m)} - zero-shot {_pts(z)} = {_gap(m - z)} points", _join(
                                  mezo.describe("MeZO"), zs.describe("zero-shot"))))
            out.append(_memory(cell, mezo, zs))
        # the paper compares MeZO with FT of the same parameters; without one, the best FT of the same head
        other = "" if tuned else f" (no FT of mode {mode} ran: the best FT with head {head}, mode {{}})"
        tuned = tuned or _best(_where(ft, cell, type="ft", head=head))
        if tuned is None:
            out.append(_unmeasured("mezo-ft", f"no fine-tuning (type ft) with head {head}", cell,
                                   mezo.describe("MeZO")))
        else:
            f = tuned.mean()
            ok = f - m <= MEZO_FT_GAP / 100
            out.append(_check("mezo-ft", cell, ok, f"FT {_pts(f)} - MeZO {_pts(m)} = {_pts(f - m)} points "
                              f"{'<=' if ok else '>'} {MEZO_FT_GAP:g}"
                              + other.format(_text(tuned.first.get("mode"))),
                              _join(mezo.describe("MeZO"), tuned.describe("FT"))))
    return out


def _memory(cell: tuple, mezo: Estimate, zs: Estimate) -> Finding:
    a, b = mezo.mean("peak_mem_mb"), zs.mean("peak_mem_mb")
    measured = _join(*(f"{role} ({e.label}): {mb:.0f} MB, {_seeds(e.values('peak_mem_mb').size)}"
                       for role, e, mb in (("MeZO", mezo, a), ("zero-shot", zs, b)) if not math.isnan(mb)))
    if math.isnan(a) or math.isnan(b):
        return _unmeasured("mezo-memory", "no peak_mem_mb in the MeZO or zero-shot metrics", cell, measured or MISSING)
    ratio = a / b
    ok = ratio <= MEZO_MEMORY
    cpu = any(_text(r.get("device")).startswith("cpu") for r in mezo.rows + zs.rows)
    return _check("mezo-memory", cell, ok,
                  f"MeZO {a:.0f} MB / zero-shot {b:.0f} MB = {ratio:.2f}x {'<=' if ok else '>'} {MEZO_MEMORY:g}"
                  + ("; on CPU peak_mem_mb is the peak RSS, the process baseline (Python, torch, weights) included, "
                     "which pulls the ratio towards 1" if cpu else ""), measured)


def _kept(r: Mapping[str, Any]) -> float:
    """The graft's share of the fine-tuning gain on test: ``kept_fraction``, else computed; NaN if undefined."""
    if not _is_missing(r.get("kept_fraction")):
        return float(r["kept_fraction"])
    g, f, p = (r.get(c) for c in ("test_metric", "ft_test_metric", "pre_test_metric"))
    if any(_is_missing(x) for x in (g, f, p)) or f == p:
        return math.nan
    return (g - p) / (f - p)


def _graft(graft: Sequence[dict[str, Any]], ft_ece: Mapping[tuple, float],
           labels: Mapping[str, str] | None) -> list[Finding]:
    """``ft_ece``: the finetune runs' test ECE by (model, task, k, seed, method)."""
    claims = ("graft-kept", "graft-ece", "graft-ood")
    if not graft:
        return [_unmeasured(c, "no graft runs (the config's graft: section)") for c in claims]
    out = []
    for (model, task, k, method), g in _group(graft, lambda r: (r["model"], r["task"], int(r["k"]), r["method"]),
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
        ece = [r.get("ft_test_ece") if not _is_missing(r.get("ft_test_ece"))
               else ft_ece.get((model, task, k, int(r["seed"]), r["method"])) for r in g.rows]
        ece = [float(x) for x in ece if not _is_missing(x)]
        graft_ece = g.mean("test_ece")
        if not ece or math.isnan(graft_ece):
            out.append(_unmeasured("graft-ece", "no test_ece of the graft or of its fine-tuned run", cell, where,
                                   method))
        else:
            f = float(np.mean(ece))
            ok = graft_ece <= f
            out.append(_check("graft-ece", cell, ok, f"graft ECE {_pts(graft_ece)} {'<=' if ok else '>'} FT ECE "
                              f"{_pts(f)} (x100)", f"{where}; ECE graft {_pts(graft_ece)}, FT {_pts(f)}", method))
        out.append(_graft_ood(cell, g, where, method))
    return out


def _graft_kept(cell: tuple, g: Estimate, where: str, method: str) -> Finding:
    f, p = g.mean("ft_test_metric"), g.mean("pre_test_metric")
    kept = [x for x in map(_kept, g.rows) if not math.isnan(x)]
    scores = ", ".join(f"{name} {_pts(x)}" for name, x in (("FT", f), ("pre-trained", p)) if not math.isnan(x))
    measured = _join(where, scores)
    if not kept:
        return _unmeasured("graft-kept", f"no fine-tuning gain to keep ({scores or 'no FT or pre-trained scores'})",
                           cell, measured, method)
    share = float(np.mean(kept))
    ok = share >= GRAFT_KEPT
    return _check("graft-kept", cell, ok, f"the graft keeps {_pts(share)}% of the fine-tuning gain "
                  f"({scores}) {'>=' if ok else '<'} {100 * GRAFT_KEPT:g}%", f"{measured}; kept {_pts(share)}%", method)


def _graft_ood(cell: tuple, g: Estimate, where: str, method: str) -> Finding:
    tasks = sorted({c.removeprefix("ood.").rsplit(".", 1)[0] for r in g.rows for c, v in r.items()
                    if c.startswith("ood.") and c.endswith(".graft") and not _is_missing(v)})
    scores = {t: (g.mean(f"ood.{t}.graft"), g.mean(f"ood.{t}.ft")) for t in tasks}
    scores = {t: v for t, v in scores.items() if not any(math.isnan(x) for x in v)}
    if not scores:
        return _unmeasured("graft-ood", f"no out-of-distribution scores (graft.ood names no task for {cell[1]})",
                           cell, where, method)
    text = "; ".join(f"on {t}: graft {_pts(a)}, FT {_pts(b)} ({_gap(a - b)})" for t, (a, b) in scores.items())
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
            given = "" if kinds else "; no pair kinds were given (lmft.findings.pair_kinds of the config)"
            out.append(_unmeasured(claim, f"no interpolate pair of kind {kind} ({how}){given}"))
        for r in rows:
            cell = (r["model"], r["task"], None if _is_missing(r.get("k")) else int(r["k"]))
            parts = [f"{name} {float(r[c]) * scale:.{d}f}" for name, c, scale, d in
                     (("test loss barrier", "test_loss_barrier", 1, 4), ("loss at a", "test_loss_a", 1, 4),
                      ("loss at b", "test_loss_b", 1, 4), ("test metric barrier", "test_metric_barrier", 100, 1))
                     if not _is_missing(r.get(c))]
            measured = f"pair {r['pair']}: " + (", ".join(parts) or MISSING)
            if _is_missing(r.get("test_loss_barrier")):
                out.append(_unmeasured(claim, "no test_loss_barrier in the pair's metrics", cell, measured, r["pair"]))
                continue
            b = float(r["test_loss_barrier"])
            ok = b <= BARRIER_TOL
            out.append(_check(claim, cell, ok, f"test loss barrier {b:.4f} {'<=' if ok else '>'} {BARRIER_TOL:g}",
                              measured, r["pair"]))
    return out


# ----------------------------------------------------------------------------- the table

def findings(runs: pd.DataFrame, pair_kinds: Mapping[str, str] | None = None,
             labels: Mapping[str, str] | None = None) -> list[Finding]:
    """Every claim's findings on ``runs`` (:func:`lmft.aggregate.load_runs`), claim by claim."""
    def records(stage: str) -> list[dict[str, Any]]:
        return _selected(runs, (stage,)).to_dict("records")

    ft_rows = records("finetune")
    ft = _group(ft_rows, lambda r: (r["model"], r["task"], int(r["k"]), r["method"]), labels)
    kern = _group(records("kernel"), lambda r: (r["model"], r["task"], int(r["k"]), _text(r.get("kernel.mode")),
                                                r["prompt"], r["formula"], r["solver"]), labels)
    ft_ece = {(r["model"], r["task"], int(r["k"]), int(r["seed"]), r["method"]): r.get("test_ece") for r in ft_rows}
    return [*_lmbff(ft), *_kernel(ft, kern), *_mezo(ft), *_graft(records("graft"), ft_ece, labels),
            *_modeconn(records("interpolate"), pair_kinds or {})]


def findings_table(runs: pd.DataFrame, pair_kinds: Mapping[str, str] | None = None,
                   labels: Mapping[str, str] | None = None, task_order: Sequence[str] = ()) -> Table:
    """The findings as a :class:`lmft.aggregate.Table` of :data:`COLUMNS`, rows by claim (in
    :data:`CLAIMS` order), model, task (``task_order``), k and method or pair."""
    order = {c.key: i for i, c in enumerate(CLAIMS)}
    published = paper_figures()
    found = sorted(findings(runs, pair_kinds, labels),
                   key=lambda f: (order[f.claim], f.model, _task_rank(f.task, task_order),
                                  -1 if f.k is None else f.k, f.extra))
    rows = []
    for f in found:
        claim = _CLAIM[f.claim]
        rows.append([claim.paper, claim.text, f.model, f.task, MISSING if f.k is None else str(f.k), f.measured,
                     published.get(f.claim, MISSING), claim.threshold, f.verdict, f.reason])
    return Table(TOPIC_FILES["findings"][2], pd.DataFrame(rows, columns=list(COLUMNS)), len(COLUMNS))
