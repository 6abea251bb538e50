"""``ft``: first-order fine-tuning (AdamW or SGD, :class:`lmft.finetune.loop.FirstOrder`), the best dev checkpoint kept.

Defaults are LM-BFF's: batch 8, lr 1e-5, 1000 steps, dev every 100, AdamW, no weight decay,
linear decay, gradients clipped at norm 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmft.finetune.loop import OPTIMIZERS, FirstOrder, Objective
from lmft.finetune.methods.settings import loop_settings, setting
from lmft.finetune.methods.training import trainer
from lmft.models.heads import Classifier


def stepper(clf: Classifier, cfg: Mapping[str, Any], total: int, seed: int,
             objective: Objective | None = None) -> FirstOrder:
    return FirstOrder(clf, total_steps=total, optimizer=cfg["optimizer"], lr=float(cfg["lr"]),
                      weight_decay=float(cfg["weight_decay"]), momentum=float(cfg["momentum"]),
                      warmup_steps=int(cfg["warmup_steps"]), schedule=cfg["schedule"],
                      max_grad_norm=float(cfg["max_grad_norm"]), loss=cfg["loss"], objective=objective)


METHOD = trainer("ft", stepper, loop_settings(batch_size=8, steps=1000, eval_every=100, lr=1e-5, schedule="linear") | {
    "optimizer": setting("adamw", "the optimiser", enum=list(OPTIMIZERS)),
    "momentum": setting(0.0, "SGD's momentum", type="number", minimum=0),
    "max_grad_norm": setting(1.0, "gradient clipping norm (0: none)", type="number", minimum=0),
})
