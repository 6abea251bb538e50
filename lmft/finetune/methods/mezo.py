"""``mezo``: zeroth-order fine-tuning with forward passes only (:mod:`lmft.finetune.spsa` through
:class:`lmft.finetune.loop.ZerothOrder`), the best dev checkpoint kept.

Defaults are MeZO's for RoBERTa-large, k=16: batch 64, lr 1e-6, eps 1e-3, 100k steps, dev every
10k, constant learning rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmft.finetune.loop import Objective, ZerothOrder
from lmft.finetune.methods.settings import loop_settings, setting
from lmft.finetune.methods.training import trainer
from lmft.models.heads import Classifier


def stepper(clf: Classifier, cfg: Mapping[str, Any], total: int, seed: int,
             objective: Objective | None = None) -> ZerothOrder:
    return ZerothOrder(clf, total_steps=total, lr=float(cfg["lr"]), eps=float(cfg["eps"]),
                       weight_decay=float(cfg["weight_decay"]), n_perturbations=int(cfg["n_perturbations"]),
                       seed=seed, warmup_steps=int(cfg["warmup_steps"]), schedule=cfg["schedule"], loss=cfg["loss"],
                       objective=objective, rademacher=cfg["direction"] == "rademacher")


METHOD = trainer("mezo", stepper, loop_settings(batch_size=64, steps=100_000, eval_every=10_000, lr=1e-6,
                                                 schedule="constant") | {
    "eps": setting(1e-3, "the perturbation's scale", type="number", exclusiveMinimum=0),
    "n_perturbations": setting(1, "perturbations averaged per step", type="integer", minimum=1),
    "direction": setting("gaussian", "z ~ N(0, I) as MeZO draws it, or rademacher (+-1: SPSA's, 5x cheaper "
                         "to draw on a CPU)", enum=["gaussian", "rademacher"]),
})
