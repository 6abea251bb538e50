"""Each paper's headline claims checked against this run: ``results/tables/findings.{csv,md,html}``.

One row per claim and per (model, task, k) where the claim's main runs exist (per method for
grafting, per pair for mode connectivity, per parameter mode for MeZO's memory), columns :data:`COLUMNS`:

``measured``
    the numbers behind the row: each method's test metric x100 over the seeds (each seed's
    selected trial, :func:`lmft.aggregate.gather.mark_selected`) as ``mean (std), n seeds``, or for one seed
    ``mean ±se`` (:func:`lmft.aggregate.summary.spread_text`); memory in MB; losses and distances.
``published``
    the papers' own figures for the claim (``lmft/aggregate/paper_figures.csv``, rows copied from
    ``paper_tables/`` with their source line), on their models and budgets, not this run's.
``rule``, ``effect``, ``ci_low``, ``ci_high``, ``n_test``, ``n_seeds``
    the effect the claim is about (in the rule's unit: points x100, a ratio, nats, %) and its 95%
    interval: a paired bootstrap (:mod:`lmft.aggregate.bootstrap`) over the test examples both sides were
    scored on and the data seeds both ran, or the range of repeated memory measurements.
``verdict``
    :mod:`lmft.aggregate.verdicts`: ``holds`` (the interval clears the claim's margin), ``does not hold``
    (it excludes the claim), ``inconclusive`` (neither; ``reason`` says how many test examples the
    observed effect would need), ``not measured`` (a run, a file or a precondition is missing:
    no graft near 0.01%, a graft whose "pre" is not the pre-trained model, a fine-tuning gain that
    is not significant, endpoints too close to tell); ``reason`` names the numbers.

How a claim finds its runs (finetune fields ``type``, ``head``, ``mode``; "best" is the method
with the highest mean dev metric, ties to the first name; every comparison is paired on the
shared seeds and test examples):

LM-BFF, at k = 16
    the best prompt fine-tuning (type ``ft``, head ``prompt`` or ``causal``) beats the best
    zero-shot (type ``zeroshot``), and the best no-prompt fine-tuning (type ``ft``, head ``cls``)
    of the same model, else of another model (named in ``measured``): difference > 0.
Kernel view, per (model, task, k, ``kernel.mode``)
    the best ``prompt`` kernel (formula, solver) is within :data:`KERNEL_MATCH` of the best prompt
    fine-tuning whose ``mode`` equals the kernel's ``kernel.mode`` (the same trainable parameters);
    the ``noprompt`` gap (FT with head ``cls`` - kernel) exceeds the prompt gap.
MeZO, per (model, task, k) of type ``mezo``
    the best MeZO beats the best zero-shot; FT of the same ``mode`` and ``head`` is less than
    :data:`MEZO_FT` ahead (no such FT: not measured). Memory, per measured parameter mode (the
    ``memory:`` stage: peak memory of the training step over the loaded model, at one batch):
    MeZO / inference < :data:`MEZO_MEM_INFERENCE` and MeZO / back-propagation FT (SGD) <
    :data:`MEZO_MEM_FT`.
Zeroth-order methods after MeZO, per (model, task, k) of type ``mezo``, among the runs of the best
    MeZO's ``mode`` and ``head`` that took no more forward passes (``passes``) than it did
    (:mod:`lmft.aggregate.zo_claims`): the best (dev) FZOO (type ``fzoo``) and MeZO-SVRG (type
    ``mezo-svrg``) each beat MeZO, their papers' claims (difference > 0); the best (dev) of these
    runs and MeZO itself comes within :data:`~lmft.aggregate.zo_claims.ZO_FT` of the best FT of that
    ``mode`` and ``head`` (issue 19's "a ZO method within 3 points of FT at the same or fewer
    forward passes"). No run within the budget: not measured.
Grafting, per (model, task, k, method), at the graft nearest the paper's 0.01% (within a factor 3)
    read only when the fine-tuning gain over the pre-trained model is significant and "pre" is the
    pre-trained model: the graft keeps > 95% of the gain (the smallest sparsity whose interval
    clears it is named), its ECE is > 40% lower than the fine-tuned model's, and it beats the
    fine-tuned model on every out-of-distribution task.
Mode connectivity, per interpolate pair of a kind (:func:`lmft.interpolate.plan.pair_kinds`)
    ``seed-seed`` and ``data-seed`` pairs: the test loss barrier (signed: the largest height of the path
    over the chord at its interior points, negative where it runs below) < :data:`NO_BARRIER`;
    ``task-task`` pairs: a barrier > :data:`TASK_BARRIER` (task boundaries); a pair whose endpoints
    are closer than :data:`CLOSE_ENDPOINTS` of their distance from the pre-trained model is not
    measured. Pre-trained -> fine-tuned paths are curves to look at, not claims.
Few-shot LMs (the problem set), per (model, task, k) of a generation task's zero-shot run
    the best ``ft``/``mezo`` and the best ``icl`` each beat the best zero-shot on the task's primary
    score (ROUGE-L, token F1) of each test example.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import pandas as pd

from lmft.aggregate.claims import (CLOSE_ENDPOINTS, GRAFT_ECE, GRAFT_KEPT, GRAFT_SPARSITY, KERNEL_MATCH,
                                   MEZO_FT, MEZO_MEM_FT, MEZO_MEM_INFERENCE, NO_BARRIER, TASK_BARRIER, findings)
from lmft.aggregate.summary import MISSING, task_rank
from lmft.aggregate.tables import Table
from lmft.aggregate.topics import TOPICS
from lmft.aggregate.zo_claims import ZO_FT

COLUMNS = ("paper", "claim", "model", "task", "k", "measured", "published", "rule", "effect", "ci_low", "ci_high",
           "n_test", "n_seeds", "verdict", "reason")


@dataclass(frozen=True)
class Claim:
    """A paper's claim as one row kind of the findings: ``key`` names it in paper_figures.csv."""

    key: str
    paper: str
    text: str


CLAIMS: tuple[Claim, ...] = (
    Claim("lmbff-zeroshot", "LM-BFF", "prompt fine-tuning beats zero-shot prompting (k=16)"),
    Claim("lmbff-noprompt", "LM-BFF", "prompt fine-tuning beats standard (no-prompt) fine-tuning (k=16)"),
    Claim("kernel-prompt", "Kernel view", "the prompt eNTK of the tuned parameters matches fine-tuning them "
          f"(within {100 * KERNEL_MATCH.margin:g} points)"),
    Claim("kernel-noprompt", "Kernel view", "no-prompt kernels fall further behind their fine-tuning than prompt ones"),
    Claim("mezo-zeroshot", "MeZO", "MeZO improves on zero-shot"),
    Claim("mezo-ft", "MeZO", f"MeZO comes within {100 * MEZO_FT.margin:g} points of fine-tuning the same parameters"),
    Claim("mezo-memory-inference", "MeZO", "a MeZO step needs the memory of inference "
          f"(< {MEZO_MEM_INFERENCE.margin:g}x at the same batch)"),
    Claim("mezo-memory-ft", "MeZO", "a MeZO step needs far less memory than back-propagation of the same parameters "
          f"(< {MEZO_MEM_FT.margin:g}x)"),
    Claim("fzoo-mezo", "FZOO", "FZOO beats MeZO at the same or fewer forward passes (the same parameters)"),
    Claim("svrg-mezo", "MeZO-SVRG", "MeZO-SVRG beats MeZO at the same or fewer forward passes (the same parameters)"),
    Claim("zo-ft", "Zeroth-order", f"a zeroth-order method comes within {100 * ZO_FT.margin:g} points of fine-tuning "
          "the same parameters at no more forward passes than MeZO's run"),
    Claim("graft-kept", "Grafting", f"a graft of ~{100 * GRAFT_SPARSITY:g}% of the parameters keeps > "
          f"{100 * GRAFT_KEPT.margin:g}% of the fine-tuning gain"),
    Claim("graft-ece", "Grafting", f"the graft's calibration error is {100 * GRAFT_ECE.margin:g}-90% lower than the "
          "fine-tuned model's"),
    Claim("graft-ood", "Grafting", "the graft does better out of distribution than the fine-tuned model"),
    Claim("modeconn-seed", "Mode connectivity", "two training seeds on the same data are linearly connected "
          f"(barrier < {NO_BARRIER.margin:g} nats; endpoints apart by >= {CLOSE_ENDPOINTS:g} of their travel)"),
    Claim("modeconn-data", "Mode connectivity", "two data splits of one task are linearly connected "
          f"(barrier < {NO_BARRIER.margin:g} nats)"),
    Claim("modeconn-task", "Mode connectivity", "minima of two tasks are separated by a loss barrier "
          f"(> {TASK_BARRIER.margin:g} nats: a task boundary)"),
    Claim("gen-ft", "Few-shot LMs (problem set)", "fine-tuning on the k examples beats zero-shot generation"),
    Claim("gen-icl", "Few-shot LMs (problem set)", "in-context demonstrations beat zero-shot generation"),
)
_CLAIM = {c.key: c for c in CLAIMS}


def paper_figures() -> dict[str, str]:
    """Claim key -> the papers' figures for it, ``context: figure value, ...; context: ...``, from
    ``lmft/aggregate/paper_figures.csv`` (packaged with lmft: the workflow cannot read ``paper_tables/``)."""
    text = resources.files("lmft.aggregate").joinpath("paper_figures.csv").read_text(encoding="utf-8")
    groups: dict[str, dict[str, list[str]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        groups.setdefault(row["claim"], {}).setdefault(row["context"], []).append(f"{row['figure']} {row['value']}")
    return {claim: "; ".join(f"{ctx}: {', '.join(items)}" for ctx, items in by_context.items())
            for claim, by_context in groups.items()}


def _number(x: float) -> str:
    return "nan" if x != x else f"{x:.3f}"


def findings_table(runs: pd.DataFrame, pair_kinds: Mapping[str, str] | None = None,
                   labels: Mapping[str, str] | None = None, task_order: Sequence[str] = ()) -> Table:
    """The findings as a :class:`lmft.aggregate.tables.Table` of :data:`COLUMNS`, rows by claim (in
    :data:`CLAIMS` order), model, task (``task_order``), k and method or pair."""
    order = {c.key: i for i, c in enumerate(CLAIMS)}
    published = paper_figures()
    found = sorted(findings(runs, pair_kinds, labels),
                   key=lambda f: (order[f.claim], f.model, task_rank(f.task, task_order),
                                  -1 if f.k is None else f.k, f.extra))
    rows = []
    for f in found:
        claim = _CLAIM[f.claim]
        ci = f.ci
        numbers = [MISSING] * 5 if ci is None else [
            _number(f.scale * ci.estimate), _number(f.scale * ci.low), _number(f.scale * ci.high), str(ci.n_examples),
            str(ci.n_seeds)]
        rows.append([claim.paper, claim.text, f.model, f.task, MISSING if f.k is None else str(f.k), f.measured,
                     published.get(f.claim, MISSING), f.rule, *numbers, f.verdict, f.reason])
    return Table(TOPICS["findings"].title, pd.DataFrame(rows, columns=list(COLUMNS)), len(COLUMNS))
