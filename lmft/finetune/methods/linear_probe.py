"""``linear-probe``: logistic regression on the frozen features the head reads, C chosen on dev
(:mod:`lmft.finetune.logreg`). metrics.json adds ``probe_C`` and ``probe_grid`` (every C with its dev scores)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lmft.finetune.logreg import C_GRID, attach_linear, extract_features, fit_probe
from lmft.finetune.methods.base import Job, MethodType, Outcome
from lmft.finetune.methods.settings import COMMON, setting
from lmft.models.evaluate import Evaluation
from lmft.models.heads import Classifier
from lmft.paths import SPLITS


def _attach(clf: Classifier, info: Mapping[str, Any]) -> None:
    attach_linear(clf)


def run(job: Job) -> Outcome:
    data = {s: job.split(s) for s in SPLITS}
    x = {s: extract_features(job.clf, data[s], int(job.cfg["eval_batch_size"]), job.device) for s in data}
    y = {s: torch.tensor(data[s].labels) for s in data}
    fit = fit_probe(job.clf, x["train"], y["train"], x["dev"], y["dev"], job.task.metric,
                    grid=tuple(job.cfg["C_grid"]), max_iter=int(job.cfg["max_iter"]))
    with torch.no_grad():
        test = Evaluation(job.clf.linear(x["test"].to(job.device)).float().cpu(), y["test"], job.task.metric)
    return Outcome(fit.dev_metric, fit.dev_loss, test, metrics={"probe_C": fit.C, "probe_grid": fit.grid},
                   notes=[f"linear probe on the {job.clf.feature_name} hidden state, C={fit.C:g} chosen on dev"])


METHOD = MethodType("linear-probe", COMMON | {
    "C_grid": setting(list(C_GRID), "inverse L2 strengths tried, the best on dev kept", type="array", minItems=1,
                      items={"type": "number", "exclusiveMinimum": 0}),
    "max_iter": setting(1000, "iterations of the solver", type="integer", minimum=1),
}, run, prepare=_attach, tuned="linear")
