"""What the training types (``ft``, ``mezo``) share: parameter selection, the loop, and their run.

:func:`trainer` makes a type from a stepper (:mod:`lmft.finetune.loop`: one update from one batch) and
the type's own settings. Its run tokenises the splits, trains with :func:`lmft.finetune.loop.train_loop`
(best dev checkpoint kept, resumable from the job's ``resume_path``, ``save_steps`` checkpoints
written to the job's ``pending_steps``) and scores the kept model on test. On a generation task
(:func:`train_generation`) the loss is the target tokens' (:func:`lmft.finetune.lm_targets.target_loss`) and
dev is scored by teacher forcing; the runner decodes the kept model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from lmft.finetune.lm_targets import target_loss
from lmft.finetune.loop import LoopConfig, LoopResult, Stepper, train_loop
from lmft.finetune.methods.base import GenerationJob, GenerationOutcome, Job, MethodType, Outcome, Settings
from lmft.finetune.methods.settings import COMMON, SELECT
from lmft.io import LmftError
from lmft.models.checkpoint import checkpoint_metadata, save_trainable
from lmft.models.heads import Classifier
from lmft.models.params import select_trainable
from lmft.paths import SPLITS

# (classifier, settings, total steps, training seed[, objective]) -> the stepper of one run; the objective
# replaces the classifier's loss (a generation task's target loss)
MakeStepper = Callable[..., Stepper]


def select_parameters(clf: Classifier, info: Mapping[str, Any]) -> None:
    """Make the parameters that ``mode`` names trainable; LoRA and prefixes initialise from ``model_seed``."""
    with torch.random.fork_rng(devices=[]):  # LoRA draws from the global RNG; leave the caller's untouched
        torch.manual_seed(info["model_seed"])
        select_trainable(clf, info["mode"], **info["select"])


def selection(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`lmft.models.params.select_trainable` besides ``mode`` (a checkpoint's ``select``)."""
    return {key: cfg[key] for key in SELECT if key != "mode"}


def steps_or_epochs(spec: Mapping[str, Any], cfg: dict[str, Any], method: str) -> dict[str, Any]:
    """Given ``epochs``, the number of steps follows from the training set's size: ``steps`` is null."""
    if spec.get("epochs") is None:
        return cfg
    if spec.get("steps") is not None:
        raise LmftError(f"finetune method {method!r}: set steps or epochs, not both")
    return cfg | {"steps": None}


def loop_config(cfg: Mapping[str, Any], n_train: int) -> LoopConfig:
    steps = cfg["steps"]
    if steps is None:
        if not cfg["epochs"]:
            raise LmftError("set steps or epochs")
        steps = int(cfg["epochs"]) * math.ceil(n_train / int(cfg["batch_size"]))
    return LoopConfig(steps=int(steps), batch_size=int(cfg["batch_size"]), eval_every=int(cfg["eval_every"]),
                      eval_batch_size=int(cfg["eval_batch_size"]), save_every=int(cfg["save_every"]),
                      save_steps=tuple(int(s) for s in cfg["save_steps"]), eval_test=bool(cfg["eval_test"]))


def train(job: Job, make_stepper: MakeStepper) -> Outcome:
    """Train the job's classifier and keep its best dev step (see the module doc)."""
    data = {s: job.split(s) for s in SPLITS}
    loop = loop_config(job.cfg, len(data["train"]))
    stepper = make_stepper(job.clf, job.cfg, loop.steps, job.model_seed)

    def save_step(step: int) -> None:
        save_trainable(job.clf, job.pending_steps / f"step-{step}.safetensors",
                       checkpoint_metadata(job.info | {"step": step}))

    def score_test(clf: Classifier, desc: str) -> tuple[float, float]:  # clf is job.clf
        ev = job.evaluate(data["test"])
        return ev.metric, ev.loss

    result = train_loop(job.clf, stepper, data["train"], data["dev"], job.task.metric, loop, job.model_seed,
                        device=job.device, resume_path=job.resume_path, save_step=save_step, on_step=job.on_step,
                        fingerprint=job.fingerprint, score_test=score_test)
    return Outcome(result.best_dev_metric, result.best_dev_loss, job.evaluate(data["test"]), result.curve,
                   steps=result.steps, best_step=result.best_step, resumed_from=result.resumed_from,
                   metrics=cost_metrics(result, stepper))


def cost_metrics(result: LoopResult, stepper: Stepper) -> dict[str, Any]:
    """metrics.json's cost keys: ``passes`` (the run's, :attr:`lmft.finetune.loop.Stepper.passes`), ``pass_unit``
    (``forward`` or ``forward+backward``, over one training batch), ``best_passes`` (at the kept step)
    and ``train_s`` (seconds in training steps, evaluations excluded)."""
    best = next(r["passes"] for r in result.curve if r["step"] == result.best_step and r["split"] == "dev")
    return {"passes": result.passes, "pass_unit": stepper.PASS, "best_passes": best, "train_s": result.train_s}


def train_generation(job: GenerationJob, make_stepper: MakeStepper) -> GenerationOutcome:
    """Train the job's causal LM on the target tokens, keeping the best dev step by teacher forcing."""
    if job.cfg["save_every"] or job.cfg["save_steps"]:
        raise LmftError("save_every and save_steps (resume files, step checkpoints) are not there for generation "
                        f"tasks yet; remove them from the method of task {job.task.name!r}")
    train, dev = job.targets("train"), job.targets("dev")
    loop = loop_config(job.cfg, len(train))
    stepper = make_stepper(job.clf, job.cfg, loop.steps, job.model_seed,
                           objective=lambda clf, batch: target_loss(clf.backbone, batch))
    result = train_loop(job.clf, stepper, train, dev, "token_acc", loop, job.model_seed, device=job.device,
                        score_dev=lambda clf, desc: job.teacher_forced(dev, desc))  # clf is job.clf
    return GenerationOutcome(job.eval_prompts(), result.best_dev_metric, result.best_dev_loss, result.curve,
                             steps=result.steps, best_step=result.best_step)


def trainer(name: str, make_stepper: MakeStepper, settings: Settings) -> MethodType:
    """A training type: the shared and parameter-selection keys plus ``settings`` (its loop and stepper keys)."""
    return MethodType(name, COMMON | SELECT | dict(settings), lambda job: train(job, make_stepper), trains=True,
                      prepare=select_parameters, resolve=steps_or_epochs,
                      generate=lambda job: train_generation(job, make_stepper))
