"""``zeroshot``: the prompt or causal head as it is, no training (on a generation task: the plain prompt)."""

from __future__ import annotations

from lmft.finetune.methods.base import GenerationJob, GenerationOutcome, Job, MethodType, Outcome
from lmft.finetune.methods.settings import COMMON


def run(job: Job) -> Outcome:
    return Outcome.scored(job.evaluate(job.split("dev")), job.evaluate(job.split("test")))


def generate(job: GenerationJob) -> GenerationOutcome:
    """The task's prompts as they are."""
    return GenerationOutcome(job.eval_prompts(), *job.teacher_forced(job.targets("dev")))


METHOD = MethodType("zeroshot", COMMON, run, heads=("prompt", "causal"),  # a cls head would be untrained
                    generate=generate)
