"""``fzoo``: FZOO's batched one-sided Rademacher estimates, the step normalised by the spread of
the losses (:class:`lmft.finetune.zo.FZOO`, Dang et al., ICLR 2026), the best dev checkpoint kept.

Defaults are the ``mezo`` type's loop (constant learning rate) with ``N = 8`` directions: ``N + 1``
forward passes a step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmft.finetune.loop import Objective, trainable_parameters, training_objective
from lmft.finetune.methods.settings import loop_settings, setting
from lmft.finetune.methods.training import trainer
from lmft.finetune.zo import FZOO, Scheduled
from lmft.models.heads import Classifier


def stepper(clf: Classifier, cfg: Mapping[str, Any], total: int, seed: int,
            objective: Objective | None = None) -> Scheduled:
    objective = training_objective(clf, cfg["loss"], objective)
    opt = FZOO(trainable_parameters(clf), lr=float(cfg["lr"]), eps=float(cfg["eps"]),
               n_directions=int(cfg["n_directions"]), weight_decay=float(cfg["weight_decay"]), seed=seed)
    return Scheduled(clf, opt, objective, total_steps=total, warmup_steps=int(cfg["warmup_steps"]),
                     schedule=cfg["schedule"])


METHOD = trainer("fzoo", stepper, loop_settings(batch_size=64, steps=10_000, eval_every=1_000, lr=1e-4,
                                                 schedule="constant") | {
    "eps": setting(1e-3, "the perturbation's scale", type="number", exclusiveMinimum=0),
    "n_directions": setting(8, "Rademacher directions per step (N >= 2: the step divides by their losses' std)",
                            type="integer", minimum=2),
})
