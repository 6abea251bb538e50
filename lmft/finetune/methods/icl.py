"""``icl``: in-context demonstrations drawn from the k-shot train set (:mod:`lmft.finetune.demos`), no training.

metrics.json adds ``demos_mean`` (demonstrations per test prompt after truncation) and
``demos_dropped`` (test prompts that lost some). On a generation task each prompt takes ``demos``
demonstrations (:func:`lmft.finetune.lm_targets.icl_prompts`; null: the whole k-shot train set, the
problem set's protocol) and metrics.json adds ``demos``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmft.finetune.demos import icl_encode
from lmft.finetune.lm_targets import icl_prompts, with_targets
from lmft.finetune.methods.base import GenerationJob, GenerationOutcome, Job, MethodType, Outcome
from lmft.finetune.methods.settings import COMMON, setting
from lmft.models.batching import label_ids, pad_id
from lmft.models.evaluate import Split
from lmft.models.heads import Classifier
from lmft.paths import EVAL_SPLITS


def model_max_length(clf: Classifier, tokenizer: Any) -> int:
    """Longest input the model takes: its position table (RoBERTa's minus its 2 offset rows), the tokenizer's limit."""
    config = clf.backbone.config
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 512
    if "roberta" in config.model_type:
        n -= 2
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 10**6:
        n = min(n, tok_max)
    return int(n)


def run(job: Job) -> Outcome:
    """Dev and test prompts with demonstrations drawn from train, scored as they are."""
    cfg, task, frames = job.cfg, job.task, job.frames
    max_length = cfg["max_length"] or model_max_length(job.clf, job.tokenizer)
    train_labels = label_ids(frames["train"], task)
    scores, used, dropped = {}, [], 0
    for s in EVAL_SPLITS:
        prompts = icl_encode(frames[s], frames["train"], train_labels, task, job.tokenizer, job.clf.causal, max_length,
                             int(cfg["demos_per_label"]), job.seed, s)
        labels = label_ids(frames[s], task)
        scores[s] = job.evaluate(Split([p.encoded for p in prompts], labels, pad_id(job.tokenizer), s))
        if s == "test":
            used = [p.n_demos for p in prompts]
            dropped = sum(p.n_demos < p.n_sampled for p in prompts)
    note = (f"icl: {cfg['demos_per_label']} demonstration(s) per label, max_length {max_length}; "
            f"{dropped} test prompt(s) lost demonstrations to truncation")
    return Outcome.scored(scores["dev"], scores["test"], metrics={"demos_mean": float(np.mean(used)),
                                                                   "demos_dropped": dropped}, notes=[note])


def generate(job: GenerationJob) -> GenerationOutcome:
    """Dev and test prompts after demonstrations of the train set; dev's teacher forcing reads them too."""
    n = len(job.frames["train"]) if job.cfg["demos"] is None else int(job.cfg["demos"])
    prompts = {s: icl_prompts(job.frames[s], job.frames["train"], job.task, job.tokenizer, n, job.seed + i)
               for i, s in enumerate(EVAL_SPLITS)}  # each split its own stream of demonstrations
    dev = with_targets(prompts["dev"], job.frames["dev"], job.task, job.tokenizer, "dev")
    note = f"icl: {n} demonstration(s) of the k-shot train set per prompt, in a seeded random order"
    return GenerationOutcome(prompts, *job.teacher_forced(dev), metrics={"demos": n}, notes=[note])


METHOD = MethodType("icl", COMMON | {
    "demos_per_label": setting(1, "demonstrations per label in each prompt", type="integer", minimum=0),
    "demos": setting(1, "generation tasks: demonstrations per prompt (null: the whole k-shot train set)",
                     type=["integer", "null"], minimum=1),
}, run, heads=("prompt", "causal"), generate=generate)
