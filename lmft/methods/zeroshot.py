"""``zeroshot``: the prompt or causal head as it is, no training."""

from __future__ import annotations

from lmft.methods.base import Job, MethodType, Outcome
from lmft.methods.settings import COMMON


def run(job: Job) -> Outcome:
    return Outcome.scored(job.evaluate(job.split("dev")), job.evaluate(job.split("test")))


METHOD = MethodType("zeroshot", COMMON, run, heads=("prompt", "causal"))  # a cls head would be untrained
