"""``mezo-svrg``: MeZO with SVRG's control variate (:class:`lmft.finetune.zo.MeZOSVRG`, Gautam et al.,
ICML 2024), the best dev checkpoint kept; classification tasks only.

Every ``anchor_every`` steps an anchor step on the whole k-shot training set (in batches of
``batch_size``, each a forward pass), else a variance-reduced step on the batch (4 forward
passes). Defaults are the ``mezo`` type's loop with an anchor every 10 steps at the same
learning rate (``anchor_lr`` null).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from lmft.finetune.loop import Objective, trainable_parameters, training_objective
from lmft.finetune.methods.base import Job, MethodType, Outcome
from lmft.finetune.methods.settings import COMMON, SELECT, loop_settings, setting
from lmft.finetune.methods.training import select_parameters, steps_or_epochs, train
from lmft.finetune.zo import MeZOSVRG, Scheduled, full_loss
from lmft.models.evaluate import Split
from lmft.models.heads import Classifier


def stepper(clf: Classifier, cfg: Mapping[str, Any], total: int, seed: int, objective: Objective | None = None, *,
            train_split: Split, device: torch.device | str = "cpu") -> Scheduled:
    """The stepper of a run on ``train_split`` (the anchor steps' full set)."""
    objective = training_objective(clf, cfg["loss"], objective)
    loss, passes = full_loss(clf, objective, train_split, int(cfg["batch_size"]), device)
    lr = float(cfg["lr"])
    opt = MeZOSVRG(trainable_parameters(clf), loss, full_passes=passes, lr=lr,
                   anchor_lr=lr if cfg["anchor_lr"] is None else float(cfg["anchor_lr"]), eps=float(cfg["eps"]),
                   anchor_every=int(cfg["anchor_every"]), weight_decay=float(cfg["weight_decay"]), seed=seed)
    return Scheduled(clf, opt, objective, total_steps=total, warmup_steps=int(cfg["warmup_steps"]),
                     schedule=cfg["schedule"])


def run(job: Job) -> Outcome:
    return train(job, partial(stepper, train_split=job.split("train"), device=job.device))


SETTINGS = loop_settings(batch_size=64, steps=10_000, eval_every=1_000, lr=1e-6, schedule="constant") | {
    "eps": setting(1e-3, "the perturbation's scale", type="number", exclusiveMinimum=0),
    "anchor_every": setting(10, "steps from one anchor (full-set) step to the next (q)", type="integer", minimum=1),
    "anchor_lr": setting(None, "the anchor steps' learning rate (null: lr)", type=["number", "null"], minimum=0),
}
METHOD = MethodType("mezo-svrg", COMMON | SELECT | SETTINGS, run, trains=True, prepare=select_parameters,
                    resolve=steps_or_epochs)
