"""Settings that several method types share, as JSON-schema fragments with their defaults.

A type's module composes its ``settings`` from these and its own keys (see
:class:`lmft.finetune.methods.base.MethodType`); :func:`setting` writes one key.
"""

from __future__ import annotations

from typing import Any

from lmft.finetune.loop import SCHEDULES
from lmft.models.heads import HEADS
from lmft.models.load import POOLINGS
from lmft.models.losses import LOSSES


def setting(default: Any, description: str, **schema: Any) -> dict[str, Any]:
    """One key: its JSON schema (``schema``, e.g. ``type="integer", minimum=1``), default and description."""
    return {**schema, "default": default, "description": description}


# Every type: which head, which input, which seed.
COMMON = {
    "head": setting(None, "the classifier head: label-word logits at the mask (prompt), a new linear head (cls) or "
                          "the label word as the next token (causal); null: causal for causal LMs, else prompt",
                    enum=[*HEADS, None]),
    "model_seed": setting(None, "the training seed (cls head and LoRA initialisation, batch order, dropout, MeZO's "
                                "perturbations); null: the data seed", type=["integer", "null"]),
    "prompt": setting(None, "whether a cls head on an encoder reads the template (null: no, LM-BFF's standard "
                            "fine-tuning input [CLS] a [SEP] b [SEP])", type=["boolean", "null"]),
    "pooling": setting(None, "the cls head's sentence vector: [CLS], mean over the tokens, or the last token "
                             "(null: as the model was trained)", enum=[*POOLINGS, None]),
    "max_length": setting(None, "longest input in tokens (null: the task's; icl: the model's)",
                          type=["integer", "null"], minimum=8),
    "eval_batch_size": setting(32, "examples per evaluation batch", type="integer", minimum=1),
    "eval_dev": setting(True, "generation tasks: decode dev and score its text (false outside a grid, where no "
                              "trial is chosen by it: dev's text scores are null; a trainer still keeps its "
                              "checkpoint by dev teacher forcing, zero-shot and ICL skip that too)", type="boolean"),
}

# Types that train (``trains=True``): which parameters (lmft.models.params.select_trainable).
SELECT = {
    "mode": setting("all", "trainable parameters: all, last:N, first:N, middle:N, bias, norm, head, lora:R, prefix:P",
                    type="string"),
    "freeze_embeddings": setting(False, "keep the embeddings (and a head tied to them) frozen", type="boolean"),
    "train_only": setting(None, "regexes searched in the parameter names: of what mode selects, only the matching "
                                "parameters train (null: all of them); e.g. ['\\.encoder\\.layer\\.'] trains a "
                                "RoBERTa's transformer blocks only (head and embeddings frozen, as the grafting "
                                "paper's models)", type=["array", "null"], items={"type": "string"}),
    "lora_targets": setting(None, "names of the layers LoRA adapts (null: the attention projections, per model type)",
                            type=["array", "null"], items={"type": "string"}),
    "lora_alpha": setting(None, "LoRA's alpha (null: twice the rank)", type=["number", "null"]),
    "lora_dropout": setting(0.0, "dropout on LoRA's input", type="number", minimum=0, maximum=1),
}


def loop_settings(*, batch_size: int, steps: int, eval_every: int, lr: float, schedule: str) -> dict[str, Any]:
    """The training loop's keys (:mod:`lmft.finetune.loop`), with the defaults each trainer picks for itself."""
    return {
        "steps": setting(steps, "updates (null when epochs decide)", type=["integer", "null"], minimum=0),
        "epochs": setting(None, "passes over the training set, instead of steps", type=["integer", "null"], minimum=1),
        "batch_size": setting(batch_size, "training examples per update", type="integer", minimum=1),
        "eval_every": setting(eval_every, "dev evaluation every N steps (0: at the last step only)", type="integer",
                              minimum=0),
        "eval_test": setting(False, "score test at each evaluation too (curve.parquet's test rows, for plots of "
                                    "accuracy against passes; nothing is chosen on them); off: it costs a test "
                                    "evaluation per dev one", type="boolean"),
        "save_every": setting(0, "write resume.pt every N steps (0: never)", type="integer", minimum=0),
        "save_steps": setting([], "steps whose trained tensors are kept in steps/", type="array",
                              items={"type": "integer", "minimum": 0}),
        "loss": setting("label-words", "cross-entropy of the label words' logits, or of the label word over the "
                                       "whole vocabulary (lm: causal or MLM head)", enum=list(LOSSES)),
        "lr": setting(lr, "learning rate", type="number", minimum=0),
        "weight_decay": setting(0.0, "weight decay", type="number", minimum=0),
        "warmup_steps": setting(0, "linear warmup updates", type="integer", minimum=0),
        "schedule": setting(schedule, "learning rate after warmup: linear decay to 0 or constant",
                            enum=list(SCHEDULES)),
    }
