"""The memory stage: the peak memory of training steps, MeZO beside back-propagation and inference.

MeZO's claim (Malladi et al. 2023) is that it fine-tunes with the memory of inference, far below
back-propagation fine-tuning of the same parameters. One job (model, task, k, seed) measures it
on one real batch: the first training batch of a run with that data seed (the k-shot train
split's rows that :class:`lmft.finetune.loop.EpochSampler` draws first), tokenised with the model's
prompt head (``causal`` for causal LMs, else ``prompt``) as the fine-tuning stage does. For each
parameter mode (:func:`lmft.models.params.select_trainable`, a fresh classifier each) it measures, with
:class:`lmft.finetune.peak.PeakIncrease`, the peak memory above the loaded model of:

``inference``  ``steps`` forward passes (loss included) without gradients, eval mode;
``mezo``       the ``mezo`` type's stepper (:class:`lmft.finetune.loop.ZerothOrder`, the type's defaults:
               eps 1e-3, one perturbation) making ``steps`` steps;
``ft-sgd``     the ``ft`` type's stepper (:class:`lmft.finetune.loop.FirstOrder`) with SGD (no momentum: no state);
``ft-adamw``   the same with AdamW, whose two moments per trainable parameter are made in its first
               step: each measured block builds its stepper, so the optimiser state counts.

The losses are the method types' default (``label-words``). Only the steps are measured, never an
evaluation. Each (mode, what) runs one unmeasured warm-up step (kernels and code pages load,
lazy buffers), then ``repeats`` measured blocks of ``steps`` steps each. The parameters move a
little with every training step (the types' default learning rates), which changes no memory.

Output ``results/memory/{model}/{task}/{k}-{seed}/metrics.json`` (:func:`lmft.paths.memory_metrics`):
``stage`` ("memory"), ``model``, ``task``, ``k``, ``seed``, ``device``, ``measure``
(:func:`lmft.finetune.peak.measure_name`), ``head``, ``loss``, ``batch_size``, ``seq_len`` (tokens of the
padded batch), ``steps``, ``repeats``, ``wall_time_s`` and ``rows``, one per (mode, what) in that
order: ``mode``, ``what``, ``peak_mb`` (MB, one per repeat; null where the device is not measured,
and then nothing runs), ``step_s`` (seconds per step, one per repeat), ``trainable_params``, ``total_params`` (the
classifier's), ``params_mb`` (the classifier's parameters, MB: the floor every row stands on).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lmft.data.tasks import Task
from lmft.finetune.loop import EpochSampler
from lmft.finetune.methods import resolve_spec
from lmft.finetune.methods.ft import stepper as ft_stepper  # the types' own steppers: the step a run makes
from lmft.finetune.methods.mezo import stepper as mezo_stepper
from lmft.finetune.methods.training import selection
from lmft.finetune.peak import NOT_MEASURED, PeakIncrease
from lmft.finetune.runs import build_for_run
from lmft.finetune.stage import default_head
from lmft.io import LmftError, read_parquet, write_json
from lmft.models.checkpoint import FORMAT
from lmft.models.encode import encode_split
from lmft.models.evaluate import to_device
from lmft.models.losses import classifier_loss
from lmft.models.params import count_trainable
from lmft.runtime import resolve_device

log = logging.getLogger(__name__)

WHATS = ("inference", "mezo", "ft-sgd", "ft-adamw")
# what -> the method entry whose stepper makes its steps (the mode is added per row)
SPECS: dict[str, dict[str, Any]] = {"mezo": {"type": "mezo"}, "ft-sgd": {"type": "ft", "optimizer": "sgd"},
                                    "ft-adamw": {"type": "ft", "optimizer": "adamw"}}
Block = Callable[[int], None]  # runs n steps


def _block(what: str, clf: torch.nn.Module, batch: dict[str, torch.Tensor], specs: Mapping[str, Mapping[str, Any]],
           seed: int) -> Block:
    """The steps of ``what`` on ``batch`` (``[B, L]`` tensors); a training block builds its stepper first.

    ``specs``: :data:`SPECS` resolved for the mode (inference takes the ``mezo`` entry's loss)."""
    if what == "inference":
        loss = specs["mezo"]["loss"]

        def infer(n: int) -> None:
            clf.eval()
            with torch.no_grad():
                for _ in range(n):
                    classifier_loss(clf, batch, loss)
        return infer
    cfg = specs[what]
    make = mezo_stepper if cfg["type"] == "mezo" else ft_stepper

    def train(n: int) -> None:
        stepper = make(clf, cfg, n, seed)
        for _ in range(n):
            stepper.step(batch)
    return train


def _measure(block: Block, steps: int, repeats: int, device: torch.device
             ) -> tuple[list[float | None], list[float | None]]:
    """(peak MB, seconds per step) of ``repeats`` blocks of ``steps`` steps, after a 1-step warm-up."""
    block(1)
    peaks, times = [], []
    for _ in range(repeats):
        with PeakIncrease(device) as peak:  # entering collects garbage: not timed
            started = time.perf_counter()
            block(steps)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - started) / steps)
        peaks.append(peak.mb)
        gc.collect()
    return peaks, times


def run_memory(model_json: Path | str, task: Task, train_path: Path | str, out_path: Path | str, *, model: str,
               k: int, seed: int, modes: Sequence[str], batch_size: int, steps: int, repeats: int,
               device: str = "auto") -> dict[str, Any]:
    """Measure every (mode, what) of one job and write ``out_path`` (see the module doc); returns the metrics."""
    started = time.perf_counter()
    if not modes:
        raise LmftError("memory.modes is empty; name at least one parameter mode (e.g. all, prefix:5)")
    dev = resolve_device(device)
    train_df = read_parquet(train_path, ["text_a", "label"])
    if batch_size > len(train_df):
        raise LmftError(f"memory.batch_size {batch_size} is larger than the {len(train_df)} training examples of "
                        f"{train_path}; lower it")
    head = default_head(model_json)
    measure = PeakIncrease(dev).measure
    rows: list[dict[str, Any]] = []
    for mode in modes:
        specs = {what: resolve_spec(spec | {"mode": mode}, f"memory {what}", grid=False)
                 for what, spec in SPECS.items()}
        base = specs["ft-sgd"]  # the keys every entry shares: selection, prompt, pooling, max_length, loss
        info = {"format": FORMAT, "type": "ft", "head": head, "mode": mode, "select": selection(base),
                "model_seed": seed, "pooling": base["pooling"]}
        clf, tokenizer = build_for_run(model_json, task, info)
        clf.to(dev)
        split = encode_split(train_df, task, tokenizer, clf, prompt=base["prompt"], max_length=base["max_length"],
                             name="train")
        batch = to_device(split.batch(EpochSampler(len(split), batch_size, seed).next_rows()), dev)
        seq_len = int(batch["input_ids"].shape[1])
        torch.manual_seed(seed)  # dropout in the ft steps: the same draws every run
        n_trainable, n_total = count_trainable(clf), sum(p.numel() for p in clf.parameters())
        params_mb = sum(p.numel() * p.element_size() for p in clf.parameters()) / 2**20
        for what in WHATS:
            if measure == NOT_MEASURED:
                peaks, times = [None] * repeats, [None] * repeats
            else:
                peaks, times = _measure(_block(what, clf, batch, specs, seed), steps, repeats, dev)
            log.info("%s %s: peak increase %s MB, %s s a step", mode, what, _rounded(peaks, 1), _rounded(times, 3))
            rows.append({"mode": mode, "what": what, "peak_mb": peaks, "step_s": times,
                         "trainable_params": n_trainable, "total_params": n_total, "params_mb": params_mb})
        del clf, batch
        gc.collect()
    metrics = {"stage": "memory", "model": model, "task": task.name, "k": k, "seed": seed, "device": str(dev),
               "measure": measure, "head": head, "loss": base["loss"], "batch_size": batch_size, "seq_len": seq_len,
               "steps": steps, "repeats": repeats, "rows": rows, "wall_time_s": time.perf_counter() - started}
    write_json(metrics, out_path)
    return metrics


def _rounded(values: Sequence[float | None], digits: int) -> list[float | None]:
    return [None if v is None else round(v, digits) for v in values]
