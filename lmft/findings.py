"""Each paper's headline claims checked against this run: ``results/tables/findings.{csv,md,html}``.

One row per claim and per (model, task, k) where the claim's main runs exist (per method for
grafting, per pair for mode connectivity), columns :data:`COLUMNS`:

``measured``
    every number the verdict uses: a method's test metric x100 over the seeds (each seed's
    selected trial, :func:`lmft.gather.mark_selected`) as ``mean (std), n seeds``, or for one
    seed ``mean ±se`` with the binomial standard error sqrt(p (1 - p) / n_test)
    (:func:`lmft.summary.spread_text`); memory in MB, barriers in loss units.
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
Mode connectivity, per interpolate pair of the kind (:func:`lmft.interpolate_plan.pair_kinds`; the metrics do not say it)
    ``pretrained-ft`` and ``seed-seed`` pairs: ``test_loss_barrier`` <= :data:`BARRIER_TOL`.
Few-shot LMs (the problem set), per (model, task, k) of a generation task's zero-shot run
    the best ``ft``/``mezo`` and the best ``icl`` each beat the best zero-shot by :data:`GEN_MARGIN`
    points of the task's primary score (ROUGE-L, token F1); one seed's spread is the standard error
    over its test examples (``test_se``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import pandas as pd

from lmft.claims import (BARRIER_TOL, GEN_MARGIN, GRAFT_KEPT, GRAFT_SPARSITY, KERNEL_GAP, LMBFF_K, MEZO_FT_GAP,
                         MEZO_MARGIN, MEZO_MEMORY, findings)
from lmft.summary import MISSING, task_rank
from lmft.tables import Table
from lmft.topics import TOPIC_FILES

COLUMNS = ("paper", "claim", "model", "task", "k", "measured", "published", "threshold", "verdict", "reason")


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
    Claim("gen-ft", "Few-shot LMs (problem set)", "fine-tuning on the k examples beats zero-shot generation",
          f"FT - zero-shot >= {GEN_MARGIN:g} points (ROUGE-L or token F1)"),
    Claim("gen-icl", "Few-shot LMs (problem set)", "in-context demonstrations beat zero-shot generation",
          f"ICL - zero-shot >= {GEN_MARGIN:g} points (ROUGE-L or token F1)"),
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


def findings_table(runs: pd.DataFrame, pair_kinds: Mapping[str, str] | None = None,
                   labels: Mapping[str, str] | None = None, task_order: Sequence[str] = ()) -> Table:
    """The findings as a :class:`lmft.tables.Table` of :data:`COLUMNS`, rows by claim (in
    :data:`CLAIMS` order), model, task (``task_order``), k and method or pair."""
    order = {c.key: i for i, c in enumerate(CLAIMS)}
    published = paper_figures()
    found = sorted(findings(runs, pair_kinds, labels),
                   key=lambda f: (order[f.claim], f.model, task_rank(f.task, task_order),
                                  -1 if f.k is None else f.k, f.extra))
    rows = []
    for f in found:
        claim = _CLAIM[f.claim]
        rows.append([claim.paper, claim.text, f.model, f.task, MISSING if f.k is None else str(f.k), f.measured,
                     published.get(f.claim, MISSING), claim.threshold, f.verdict, f.reason])
    return Table(TOPIC_FILES["findings"][2], pd.DataFrame(rows, columns=list(COLUMNS)), len(COLUMNS))
