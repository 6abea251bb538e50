"""Zeroth-order methods beyond MeZO, on MeZO's seeded in-place perturbation (:mod:`lmft.finetune.spsa`).

Both draw their directions from step seeds as :mod:`lmft.finetune.spsa` does (``z`` is never stored: it
is drawn again from its seed whenever it is needed) and measure losses with its exact-restore
excursions (:func:`lmft.finetune.spsa.loss_at`, :func:`lmft.finetune.spsa.spsa_grad`), so the perturbation used for
``+eps``, ``-eps`` and the update is, by construction, one draw from one seed. Updates are
:func:`lmft.finetune.spsa.perturb_` passes (``theta += fl(alpha z)``).

:class:`FZOO` (Dang et al., "FZOO: Fast Zeroth-Order Optimizer for Fine-Tuning Large Language
Models towards Adam-Scale Speed", ICLR 2026, arXiv 2506.09034): per step, with ``N``
Rademacher directions ``u_i = sign(z_i)`` (seeds ``s + i``) on one batch ``B``::

    l_0 = L(theta; B);   l_i = L(theta + eps u_i; B)                          (N + 1 forward passes)
    g = 1 / (eps N) sum_i (l_i - l_0) u_i                       (batched one-sided estimate)
    sigma = std(l_1 .. l_N)   (1 / (N - 1) normalisation)
    theta <- (1 - lr wd) theta - lr g / sigma

The paper evaluates the ``N`` perturbed models in one batched forward on a GPU; here they run one
after another over the same batch, the same ``N + 1`` passes. ``l_i - l_0 ~ eps <grad L, u_i>``
and ``sigma ~ eps ||grad L||``, so the step is normalised SGD
on a sampled gradient (the paper's equivalence): its length does not follow the loss's scale. A
step whose ``N`` losses are all equal (``sigma = 0``) leaves theta as it is.

:class:`MeZOSVRG` (Gautam et al., "Variance-reduced Zeroth-Order Methods for Fine-Tuning
Language Models", ICML 2024, Algorithm 2): SPSA estimates ``grad_I(theta; z) = (L_I(theta + eps
z) - L_I(theta - eps z)) / (2 eps) z`` with Gaussian ``z``; every ``q`` steps (steps 0, q, 2q, ...)
an anchor step on the full training set ``D``, else a variance-reduced step on the batch ``I``
with one fresh ``z`` for both of its estimates::

    anchor:  theta_bar <- theta;  g_bar = grad_D(theta_bar; z_a);  theta <- theta - lr_anchor g_bar
    else:    theta <- theta - lr (grad_I(theta; z) - grad_I(theta_bar; z) + g_bar)

(weight decay ``theta <- (1 - lr wd) theta`` first, as MeZO). ``g_bar = c z_a`` is kept as its
seed and scalar, so the one extra memory is the anchor copy ``theta_bar`` (one copy of the tuned
tensors); ``grad_I(theta_bar; z)`` is measured by swapping ``theta`` and ``theta_bar`` in place.

Forward passes (what :attr:`passes` counts): each forward over one batch is one pass, the full
set in batches of the training batch size (``full_passes`` of them): FZOO ``N + 1`` per step,
MeZO-SVRG ``2 full_passes`` per anchor step and 4 per other step (MeZO: 2 per perturbation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lmft.models.evaluate import Split, to_device
from lmft.io import LmftError
from lmft.finetune.spsa import SEED_RANGE, loss_at, perturb_, spsa_grad
from lmft.finetune.loop import SCHEDULES, Objective, lr_factor

LossFn = Callable[[], Tensor | float]


def _positive(name: str, value: float, *, zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if zero else value > 0)
    if not ok:
        raise LmftError(f"{name} must be {'>= 0' if zero else 'positive'}, got {value}")


def _count(name: str, value: int, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise LmftError(f"{name} must be an integer >= {least}, got {value!r}")


def _tensors(params: Iterable[Tensor]) -> list[Tensor]:
    params = list(params)
    if not params:
        raise LmftError("zeroth-order: the list of parameters to tune is empty; select at least one tensor")
    return params


@torch.no_grad()
def _decay_(params: list[Tensor], factor: float) -> None:
    if factor != 1.0:
        for p in params:
            p.mul_(factor)


class _Seeded:
    """Step seeds from a CPU generator seeded with the run seed; steps and forward passes counted."""

    def __init__(self, params: Iterable[Tensor], seed: int, lr: float, weight_decay: float) -> None:
        self.params = _tensors(params)
        _positive("lr", lr, zero=True)
        _positive("weight_decay", weight_decay, zero=True)
        self.lr, self.weight_decay = lr, weight_decay
        self.lr_scale = 1.0  # the schedule's factor on every learning rate (lmft.finetune.loop.lr_factor)
        self.steps = self.passes = 0
        self._generator = torch.Generator().manual_seed(seed)

    def _seed(self) -> int:
        return int(torch.randint(SEED_RANGE, (), generator=self._generator))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "passes": self.passes, "rng_state": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"steps", "passes", "rng_state"} - set(state)
        if missing:
            raise LmftError(f"{type(self).__name__} state: missing {sorted(missing)}; it holds {sorted(state)}")
        self._generator.set_state(state["rng_state"])
        self.steps, self.passes = int(state["steps"]), int(state["passes"])


class FZOO(_Seeded):
    """FZOO over a fixed list of tensors (see the module doc); ``n_directions`` is ``N`` (>= 2)."""

    def __init__(self, params: Iterable[Tensor], *, lr: float, eps: float = 1e-3, n_directions: int = 8,
                 weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, seed, lr, weight_decay)
        _positive("eps", eps)
        _count("n_directions", n_directions, 2)  # sigma needs two losses
        self.eps, self.n = eps, n_directions

    @torch.no_grad()
    def step(self, loss_fn: LossFn) -> dict[str, float]:
        """One step on ``loss_fn``'s batch; returns ``loss`` (``l_0``), ``sigma`` and the step's ``seed``."""
        seed = self._seed()
        l0 = float(loss_fn())
        losses = [loss_at(self.params, loss_fn, seed=seed + i, scale=self.eps, rademacher=True)
                  for i in range(self.n)]
        self.passes += self.n + 1
        mean = sum(losses) / self.n
        sigma = math.sqrt(sum((x - mean) ** 2 for x in losses) / (self.n - 1))
        lr = self.lr * self.lr_scale
        _decay_(self.params, 1.0 - lr * self.weight_decay)
        if sigma > 0:
            for i, li in enumerate(losses):  # theta -= lr / sigma * (l_i - l_0) / (eps N) u_i
                perturb_(self.params, seed + i, -lr * (li - l0) / (self.eps * self.n * sigma), rademacher=True)
        self.steps += 1
        return {"loss": l0, "sigma": sigma, "seed": seed}


class MeZOSVRG(_Seeded):
    """MeZO-SVRG over a fixed list of tensors (see the module doc).

    ``full_loss()`` is the loss on the whole training set, computed in ``full_passes`` forward
    passes; ``anchor_every`` is ``q``; ``anchor_lr`` the anchor steps' learning rate.
    """

    def __init__(self, params: Iterable[Tensor], full_loss: LossFn, *, full_passes: int, lr: float,
                 anchor_lr: float, eps: float = 1e-3, anchor_every: int = 10, weight_decay: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__(params, seed, lr, weight_decay)
        _positive("eps", eps)
        _positive("anchor_lr", anchor_lr, zero=True)
        _count("anchor_every", anchor_every, 1)
        _count("full_passes", full_passes, 1)
        self.full_loss, self.full_passes = full_loss, full_passes
        self.eps, self.anchor_lr, self.anchor_every = eps, anchor_lr, anchor_every
        self.anchor = [p.detach().clone() for p in self.params]  # theta_bar: the one extra copy
        self.anchor_seed, self.anchor_grad = 0, 0.0  # g_bar = anchor_grad * z(anchor_seed)

    @torch.no_grad()
    def _swap(self) -> None:
        """theta <-> theta_bar, in place and exactly."""
        for p, a in zip(self.params, self.anchor):
            tmp = p.clone()
            p.copy_(a)
            a.copy_(tmp)

    @torch.no_grad()
    def step(self, loss_fn: LossFn) -> dict[str, float]:
        """One step (an anchor step every ``anchor_every``); returns ``loss`` (the mean of the two
        measured losses at theta: on the full set at an anchor, else on the batch), ``anchor``
        (1.0 on anchor steps) and the step's ``seed``."""
        seed = self._seed()
        anchor = self.steps % self.anchor_every == 0
        if anchor:
            for p, a in zip(self.params, self.anchor):
                a.copy_(p)
            g, plus, minus = spsa_grad(self.params, self.full_loss, self.eps, seed)
            self.anchor_seed, self.anchor_grad = seed, g
            self.passes += 2 * self.full_passes
            lr = self.anchor_lr * self.lr_scale
            _decay_(self.params, 1.0 - lr * self.weight_decay)
            perturb_(self.params, seed, -lr * g)
        else:
            g, plus, minus = spsa_grad(self.params, loss_fn, self.eps, seed)
            self._swap()
            try:
                g_bar, _, _ = spsa_grad(self.params, loss_fn, self.eps, seed)  # the same z, at theta_bar
            finally:
                self._swap()
            self.passes += 4
            lr = self.lr * self.lr_scale
            _decay_(self.params, 1.0 - lr * self.weight_decay)
            perturb_(self.params, seed, -lr * (g - g_bar))
            perturb_(self.params, self.anchor_seed, -lr * self.anchor_grad)
        self.steps += 1
        return {"loss": (plus + minus) / 2, "anchor": float(anchor), "seed": seed}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"anchor": [a.cpu().clone() for a in self.anchor],
                                       "anchor_seed": self.anchor_seed, "anchor_grad": self.anchor_grad}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if len(state.get("anchor", ())) != len(self.anchor):
            raise LmftError("MeZOSVRG state: its anchor does not hold one tensor per tuned parameter")
        for a, saved in zip(self.anchor, state["anchor"]):
            a.copy_(saved)
        self.anchor_seed, self.anchor_grad = int(state["anchor_seed"]), float(state["anchor_grad"])


def full_loss(clf: nn.Module, objective: Objective, train: Split, batch_size: int,
              device: torch.device | str) -> tuple[LossFn, int]:
    """The loss on all of ``train`` (the mean over its examples) and the forward passes it takes:
    its rows in file order, in batches of ``batch_size`` (the training batches' size), each one pass."""
    rows = list(range(len(train)))
    batches = [to_device(train.batch(rows[i:i + batch_size]), device) for i in range(0, len(rows), batch_size)]

    def loss() -> float:
        return sum(float(objective(clf, b)) * len(b["labels"]) for b in batches) / len(rows)

    return loss, len(batches)


class Scheduled:
    """A zeroth-order optimiser (:class:`FZOO`, :class:`MeZOSVRG`) as the training loop's stepper
    (:class:`lmft.finetune.loop.Stepper`): the model in eval mode (no dropout), the learning rates scaled
    by :func:`lmft.finetune.loop.lr_factor` at each step."""

    PASS = "forward"

    def __init__(self, clf: nn.Module, opt: FZOO | MeZOSVRG, objective: Objective, *, total_steps: int,
                 warmup_steps: int = 0, schedule: str = "constant") -> None:
        if schedule not in SCHEDULES:
            raise LmftError(f"unknown schedule {schedule!r}; one of {', '.join(SCHEDULES)}")
        self.clf, self.opt, self.objective = clf, opt, objective
        self.total, self.warmup, self.schedule = total_steps, warmup_steps, schedule

    @property
    def passes(self) -> int:
        return self.opt.passes

    def step(self, batch: dict[str, Tensor]) -> float:
        self.clf.eval()
        self.opt.lr_scale = lr_factor(self.opt.steps, self.total, self.warmup, self.schedule)
        return float(self.opt.step(lambda: self.objective(self.clf, batch))["loss"])

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)
