"""The training loop of the ``ft`` and ``mezo`` methods: seeded, evaluated on dev, best kept, resumable.

One loop serves both methods; a *stepper* makes one update from one batch:

- :class:`FirstOrder`: AdamW or SGD on the trainable parameters, a linear (or constant) learning
  rate schedule with optional warmup, gradient clipping; the model trains in train mode
  (dropout on). Weight decay skips tensors of fewer than two dimensions (biases, LayerNorm), as
  Hugging Face's Trainer does.
- :class:`ZerothOrder`: one MeZO step (:mod:`lmft.finetune.spsa`) over the trainable parameters in
  ``named_parameters()`` order, model in eval mode, step seeds from a generator seeded by the run
  seed; constant learning rate unless ``schedule="linear"``.

Both minimise :func:`lmft.models.losses.classifier_loss` with their ``loss``: ``label-words`` (the
cross-entropy of the class logits) or ``lm`` (the full-vocabulary cross-entropy of the label
word), or a caller's ``objective`` (generation tasks: :func:`lmft.finetune.lm_targets.target_loss`). Dev
is scored on the class logits (the label-word metric and loss) unless the caller passes ``score_dev``.

Determinism. Batches come from :class:`EpochSampler`: each epoch is ``torch.randperm`` from a
``torch.Generator`` seeded with the run seed (the last batch of an epoch may be smaller). The
global torch RNG (dropout) is seeded with the run seed when the loop starts. Model
initialisation (the ``cls`` head, LoRA's A) is the caller's business, under its own seed.

Evaluation. Dev is evaluated before training (step 0, recorded in the curve only: the result must
be a trained model), every ``eval_every`` steps and at the last step. The best evaluation has
the highest dev metric, ties going to the lower dev loss, then to the earlier step (LM-BFF keeps
the first best). Its trainable tensors are kept in CPU memory and put back at the end. With
``eval_test`` (and a test scorer) test is scored at each evaluation too, for the curve only:
nothing is chosen on it.

Cost. Every curve row carries ``passes``, the stepper's passes so far (:attr:`Stepper.passes`:
one per forward, or per forward and backward, over one training batch; evaluations are not
counted), and ``train_s``, the seconds spent in training steps so far (evaluations excluded).

Resuming. Every ``save_every`` steps the loop writes ``resume_path`` atomically: step, trainable
tensors, stepper state (optimiser moments, MeZO seed generator, schedule position), sampler and
global RNG states, best-so-far (step, scores, tensors), the curve and the elapsed and step times. A loop
started with that file present and the same ``fingerprint`` (the caller hashes the run's
settings) continues from it and ends with bit-identical numbers; a file from other settings is
ignored with a warning. The caller deletes the file once its outputs are written.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from lmft.finetune.spsa import MeZO
from lmft.io import LmftError, torch_load, torch_save
from lmft.models.checkpoint import apply_state, trainable_state
from lmft.models.evaluate import Split, evaluate, progress_disabled, to_device
from lmft.models.losses import check_loss, classifier_loss

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")
# A training loss other than the classifier's: (model, batch) -> scalar (generation's target loss).
Objective = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
# Scores a model on dev for the loop: (model, progress-bar label) -> (metric, loss); higher metric is better.
DevScorer = Callable[[nn.Module, str], tuple[float, float]]
SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class LoopConfig:
    """Schedule of the loop. ``eval_every=0``: dev only at the last step; ``save_every=0``: never resumable."""

    steps: int
    batch_size: int
    eval_every: int = 0
    eval_batch_size: int = 32
    save_every: int = 0
    save_steps: tuple[int, ...] = ()
    eval_test: bool = False  # score test at each evaluation too (the curve's test rows; never chosen on)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise LmftError(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise LmftError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.eval_every < 0 or self.save_every < 0:
            raise LmftError(f"eval_every and save_every must be >= 0, got {self.eval_every}, {self.save_every}")
        bad = [s for s in self.save_steps if not 1 <= s <= self.steps]
        if bad:
            raise LmftError(f"save_steps {bad} lie outside the run's steps 1..{self.steps}")

    def is_eval_step(self, step: int) -> bool:
        return step == self.steps or (self.eval_every > 0 and step % self.eval_every == 0)


class Stepper(Protocol):
    PASS: str  # what one of :attr:`passes` is: "forward" or "forward+backward" (over one batch)

    @property
    def passes(self) -> int:
        """Passes over a training batch so far (a forward each, or a forward and backward each)."""

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One update from ``batch``; returns the training loss it measured."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate for update ``step`` (0-based) of ``total``.

    Linear warmup over ``warmup`` updates, then constant or linear decay to 0 at ``total`` (as
    ``transformers.get_linear_schedule_with_warmup``).
    """
    if step < warmup:
        return (step + 1) / warmup  # the first update already moves, as in LM-BFF's trainer with warmup
    if schedule == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


def trainable_parameters(clf: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad``, in ``named_parameters()`` order."""
    params = [p for _, p in clf.named_parameters() if p.requires_grad]
    if not params:
        raise LmftError("no trainable parameters: select some with lmft.models.params.select_trainable")
    return params


def training_objective(clf: nn.Module, loss: str, objective: Objective | None) -> Objective:
    """The caller's objective, else the classifier's ``loss`` (checked against ``clf``'s head)."""
    if objective is not None:
        return objective
    check_loss(clf, loss)
    return lambda model, batch: classifier_loss(model, batch, loss)


class FirstOrder:
    """AdamW / SGD with a learning-rate schedule and gradient clipping (``max_grad_norm=0``: none) on ``loss``."""

    PASS = "forward+backward"

    def __init__(self, clf: nn.Module, *, total_steps: int, optimizer: str = "adamw", lr: float = 1e-5,
                 weight_decay: float = 0.0, momentum: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 adam_eps: float = 1e-8, warmup_steps: int = 0, schedule: str = "linear",
                 max_grad_norm: float = 1.0, loss: str = "label-words",
                 objective: Objective | None = None) -> None:
        self.objective = training_objective(clf, loss, objective)
        if optimizer not in OPTIMIZERS:
            raise LmftError(f"unknown optimizer {optimizer!r}; one of {', '.join(OPTIMIZERS)}")
        if schedule not in SCHEDULES:
            raise LmftError(f"unknown schedule {schedule!r}; one of {', '.join(SCHEDULES)}")
        if not lr > 0:
            raise LmftError(f"lr must be positive, got {lr}")
        self.clf = clf
        self.params = trainable_parameters(clf)
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        if optimizer == "adamw":
            self.opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=adam_eps)
        else:
            self.opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
        self.base_lr, self.total, self.warmup, self.schedule = lr, total_steps, warmup_steps, schedule
        self.max_grad_norm = max_grad_norm
        self.updates = 0

    @property
    def passes(self) -> int:
        return self.updates

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        self.clf.train()
        factor = lr_factor(self.updates, self.total, self.warmup, self.schedule)
        for group in self.opt.param_groups:
            group["lr"] = self.base_lr * factor
        loss = self.objective(self.clf, batch)
        if not torch.isfinite(loss):
            raise LmftError(f"training loss is {loss.item()} at update {self.updates + 1}; lower the learning rate")
        loss.backward()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.updates += 1
        return loss.item()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


class ZerothOrder:
    """MeZO steps on the trainable parameters, on ``loss``; the model stays in eval mode (no dropout)."""

    PASS = "forward"

    def __init__(self, clf: nn.Module, *, total_steps: int, lr: float, eps: float = 1e-3,
                 weight_decay: float = 0.0, n_perturbations: int = 1, seed: int = 0,
                 warmup_steps: int = 0, schedule: str = "constant", loss: str = "label-words",
                 objective: Objective | None = None, rademacher: bool = False) -> None:
        if schedule not in SCHEDULES:
            raise LmftError(f"unknown schedule {schedule!r}; one of {', '.join(SCHEDULES)}")
        self.clf = clf
        self.objective = training_objective(clf, loss, objective)
        self.opt = MeZO(trainable_parameters(clf), lr=lr, eps=eps, weight_decay=weight_decay,
                        n_perturbations=n_perturbations, seed=seed, rademacher=rademacher)
        self.base_lr, self.total, self.warmup, self.schedule = lr, total_steps, warmup_steps, schedule

    @property
    def passes(self) -> int:
        return 2 * self.opt.n_perturbations * self.opt.steps

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        self.clf.eval()
        self.opt.lr = self.base_lr * lr_factor(self.opt.steps, self.total, self.warmup, self.schedule)
        return float(self.opt.step(lambda: self.objective(self.clf, batch))["loss"])

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)


class EpochSampler:
    """Row indices of each batch: a fresh seeded permutation of the rows every epoch."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.perm: list[int] = []
        self.pos = 0

    def next_rows(self) -> list[int]:
        if self.pos >= len(self.perm):
            self.perm = torch.randperm(self.n, generator=self.generator).tolist()
            self.pos = 0
        rows = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += len(rows)
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": torch.tensor(self.perm, dtype=torch.long),
                "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].tolist()
        self.pos = int(state["pos"])


@dataclass
class Best:
    step: int
    metric: float
    loss: float
    state: dict[str, torch.Tensor]

    def beaten_by(self, metric: float, loss: float) -> bool:
        return metric > self.metric or (metric == self.metric and loss < self.loss)


@dataclass
class LoopResult:
    """What the loop did; the classifier holds the best tensors when it returns."""

    best_step: int
    best_dev_metric: float
    best_dev_loss: float
    steps: int
    curve: list[dict[str, Any]]  # rows: step, split ("train" / "dev" / "test"), loss, metric (NaN for train), passes, train_s
    elapsed_s: float  # training time, summed over resumed pieces
    resumed_from: int  # 0 when started fresh
    passes: int = 0  # the stepper's passes at the end (Stepper.passes)
    train_s: float = 0.0  # seconds in training steps, evaluations excluded


def _cpu_state(clf: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in trainable_state(clf).items()}  # trainable_state already copies


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_loop(clf: nn.Module, stepper: Stepper, train: Split, dev: Split, metric_name: str, cfg: LoopConfig,
               seed: int, *, device: torch.device | str = "cpu", resume_path: Path | None = None,
               fingerprint: str = "", save_step: Callable[[int], None] | None = None,
               on_step: Callable[[int], None] | None = None, score_dev: DevScorer | None = None,
               score_test: DevScorer | None = None) -> LoopResult:
    """Train ``clf`` with ``stepper`` for ``cfg.steps`` steps and leave it holding its best-dev tensors.

    ``save_step(step)`` is called after the steps listed in ``cfg.save_steps`` (the model holds
    that step's tensors); ``on_step(step)`` after every step, once its resume state is written
    (tests use it to simulate a kill). ``score_dev`` replaces the classifier's dev evaluation
    (:func:`lmft.models.evaluate.evaluate` on ``dev`` with ``metric_name``); ``score_test`` scores test at
    each evaluation when ``cfg.eval_test``.
    """
    device = torch.device(device)
    if score_dev is None:
        def score_dev(model: nn.Module, desc: str) -> tuple[float, float]:
            ev = evaluate(model, dev, metric_name, cfg.eval_batch_size, device, desc=desc)
            return ev.metric, ev.loss
    sampler = EpochSampler(len(train), cfg.batch_size, seed)
    start, elapsed, train_s, curve, best = 1, 0.0, 0.0, [], None

    def evaluation(step: int) -> tuple[float, float]:
        """Dev (and test) rows of the curve at ``step``; returns dev's (metric, loss)."""
        cost = {"passes": stepper.passes, "train_s": train_s}
        metric, dev_loss = score_dev(clf, f"dev step {step}")
        curve.append({"step": step, "split": "dev", "loss": dev_loss, "metric": metric} | cost)
        if cfg.eval_test and score_test is not None:
            test_metric, test_loss = score_test(clf, f"test step {step}")
            curve.append({"step": step, "split": "test", "loss": test_loss, "metric": test_metric} | cost)
        return metric, dev_loss

    state = _load_resume(resume_path, fingerprint)
    if state is not None:
        apply_state(clf, state["trainable"])
        stepper.load_state_dict(state["stepper"])
        sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"], device)
        curve, elapsed, train_s = list(state["curve"]), float(state["elapsed_s"]), float(state["train_s"])
        b = state["best"]
        best = Best(int(b["step"]), float(b["metric"]), float(b["loss"]), b["state"]) if b else None
        start = int(state["step"]) + 1
        log.info("resumed from %s at step %d", resume_path, start - 1)
    else:
        torch.manual_seed(seed)
        metric, dev_loss = evaluation(0)
        log.info("step 0: dev loss %.4f %s %.4f", dev_loss, metric_name, metric)

    t0 = time.perf_counter() - elapsed
    bar = tqdm(total=cfg.steps, initial=start - 1, desc="train", disable=progress_disabled())
    for step in range(start, cfg.steps + 1):
        batch = to_device(train.batch(sampler.next_rows()), device)
        t_step = time.perf_counter()
        loss = stepper.step(batch)
        train_s += time.perf_counter() - t_step
        curve.append({"step": step, "split": "train", "loss": loss, "metric": math.nan, "passes": stepper.passes,
                      "train_s": train_s})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if cfg.is_eval_step(step):
            metric, dev_loss = evaluation(step)
            log.info("step %d: train loss %.4f, dev loss %.4f %s %.4f", step, loss, dev_loss, metric_name, metric)
            if best is None or best.beaten_by(metric, dev_loss):
                best = Best(step, metric, dev_loss, _cpu_state(clf))
        if step in cfg.save_steps and save_step is not None:
            save_step(step)
        if resume_path is not None and cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            torch_save({"fingerprint": fingerprint, "step": step, "trainable": _cpu_state(clf),
                        "stepper": stepper.state_dict(), "sampler": sampler.state_dict(), "rng": _rng_state(device),
                        "best": None if best is None else {"step": best.step, "metric": best.metric,
                                                           "loss": best.loss, "state": best.state},
                        "curve": curve, "elapsed_s": time.perf_counter() - t0, "train_s": train_s}, resume_path)
        if on_step is not None:
            on_step(step)
    bar.close()
    assert best is not None  # the last step always evaluates
    apply_state(clf, best.state)
    log.info("best dev %s %.4f (loss %.4f) at step %d", metric_name, best.metric, best.loss, best.step)
    return LoopResult(best.step, best.metric, best.loss, cfg.steps, curve, time.perf_counter() - t0,
                      0 if state is None else start - 1, stepper.passes, train_s)


def _load_resume(path: Path | None, fingerprint: str) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    state = torch_load(path)
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        log.warning("%s was written by a run with other settings; starting afresh", path)
        return None
    return state
