"""A method type of one's own, as a plugin (README, "Extending"): the train set's majority class.

Every input gets the class that is most frequent in the k-shot train set (ties: the first in
the task's label order), with the smoothed train frequencies as its probabilities:
``(count + smoothing) / (n + C * smoothing)``. It reads no text and trains nothing: the floor
that every method's accuracy should clear. metrics.json adds ``majority_label``.

Named in a config as ``finetune: {plugins: [majority], methods: {prior: {type: majority}}}``
(this file in the working directory, or importable as ``majority``).
"""

from __future__ import annotations

import torch

from lmft.finetune.methods import Job, MethodType, Outcome
from lmft.finetune.methods.settings import COMMON, setting
from lmft.models.batching import label_ids
from lmft.models.evaluate import Evaluation


def run(job: Job) -> Outcome:
    counts = torch.bincount(torch.tensor(label_ids(job.frames["train"], job.task)), minlength=job.task.num_labels)
    smoothing = float(job.cfg["smoothing"])
    log_probs = ((counts + smoothing) / (counts.sum() + smoothing * len(counts))).log()

    def score(split: str) -> Evaluation:
        labels = torch.tensor(label_ids(job.frames[split], job.task))
        return Evaluation(log_probs.expand(len(labels), -1), labels, job.task.metric)

    return Outcome.scored(score("dev"), score("test"), metrics={"majority_label": job.task.labels[counts.argmax()]},
                          notes=[f"majority: train class counts {counts.tolist()}, smoothing {smoothing:g}"])


METHOD = MethodType("majority", COMMON | {
    "smoothing": setting(1.0, "added to each class's train count (0: the raw frequencies)", type="number", minimum=0),
}, run)
