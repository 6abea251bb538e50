"""The interpolation stage: one (model, evaluation task, pair) job, from two checkpoints to a curve.

:func:`run_interpolate` loads the two endpoints and evaluates the straight path between them with
:mod:`lmft.interpolate.connectivity` (see there for the pre-trained endpoint, the barriers and the curve).

A job (:func:`lmft.interpolate.plan.interpolate_jobs` plans them) writes ``curve.parquet``,
``losses.parquet`` (per alpha and example of the dev and test splits: ``alpha`` float, ``split``
str, ``index`` int64 = the row of the split's parquet file, ``loss`` float = its cross-entropy,
``correct`` bool), ``examples.parquet``, ``plot.png`` and ``metrics.json``, which adds to the
shared keys: ``pair`` (its name; ``method`` repeats it), ``endpoints`` (what a and b are),
``points``, ``head``, ``mode``, ``l2``, ``cosine``, ``norm_a``, ``norm_b`` (of the flattened tuned
tensors), ``distance_a0``, ``distance_b0``, ``distance_ab``, ``relative_distance`` and
``relative_to`` (against theta0, each run's tuned tensors before training, with LoRA layers as
their updates ``scaling * B A``: :func:`lmft.interpolate.connectivity.weight_distance` and
:func:`~lmft.interpolate.connectivity.relative_distance`); per split
``{split}_loss_barrier``, ``{split}_metric_barrier``, ``{split}_loss_a``/``_b``,
``{split}_metric_a``/``_b``/``_mid`` and ``{split}_ece_mid``; with training examples tracked
``train_right_both_ends`` and ``train_forgotten`` (right at both ends, wrong somewhere between).

Memory: the endpoints' tensors are views of the loaded runs' parameters (the model evaluated is
run ``a``'s), so beside the model live the other endpoint and the point being evaluated: two
copies of the tuned tensors (with a pre-trained endpoint: its values and the point; the run's
values are the model's). While the endpoints load, each run's classifier is built once more for
its values before training (one model at a time; its tuned tensors are kept while another
endpoint of the same run needs them).

``dev_metric``/``test_metric``/``test_ece`` are taken at the path's midpoint (alpha = 0.5 when
it is on the grid, else the nearer of the two around it, the lower on a tie).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from lmft.data.kshot import cap_rows
from lmft.data.tasks import Task
from lmft.finetune.runs import LoadedRun, build_for_run, load_run
from lmft.interpolate.connectivity import (check_endpoints, curve_metrics, endpoint_distance, forgetting,
                                           interpolation_curve, lora_scaling, plot_curve, pretrained_endpoint,
                                           relative_distance, weight_distance)
from lmft.io import LmftError, read_parquet, write_json, write_parquet
from lmft.models.encode import encode_split
from lmft.models.evaluate import Split
from lmft.paths import EVAL_SPLITS
from lmft.runtime import peak_mem_mb, resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """One end of a path: a run's best checkpoint (or its ``step`` checkpoint), or with
    ``pretrained`` the run's tuned tensors before training (see :func:`pretrained_endpoint`)."""

    run_dir: Path
    task: Task
    step: int | None = None
    pretrained: bool = False

    def describe(self) -> str:
        where = "pre-trained values of " if self.pretrained else ""
        step = f" step {self.step}" if self.step is not None else ""
        return f"{where}{self.run_dir}{step}"


def _load_endpoints(model_json: str | Path, ends: Sequence[Endpoint]
                    ) -> tuple[list[dict[str, Tensor]], list[float], list[LoadedRun]]:
    """The tuned tensors of each endpoint, its :func:`weight_distance` from its run's start (theta0),
    and the loaded runs (each run dir and step loaded once)."""
    runs: dict[tuple[Path, int | None], LoadedRun] = {}
    before: dict[Path, dict[str, Tensor]] = {}  # a run's tuned tensors as built, while a later endpoint needs them
    states, from_start, loaded = [], [], []
    for i, ep in enumerate(ends):
        key = (Path(ep.run_dir), ep.step)
        if key not in runs:
            runs[key] = load_run(model_json, ep.task, ep.run_dir, ep.step)
        run = runs[key]
        state = {n: p.detach() for n, p in run.clf.named_parameters() if p.requires_grad}
        if not state:
            raise LmftError(f"interpolate: {ep.run_dir} is a {run.info['type']} run that tuned no parameters")
        pre = before.pop(key[0], None)
        if pre is None:
            clf, _ = build_for_run(model_json, ep.task, run.info)
            pre = {n: p.detach() for n, p in clf.named_parameters() if n in state}
            del clf
        if key[0] in {Path(e.run_dir) for e in ends[i + 1:]}:
            before[key[0]] = pre
        start = pretrained_endpoint(pre, state)
        state = start if ep.pretrained else state
        states.append(state)
        from_start.append(weight_distance(state, start, lora_scaling(run.clf)))
        loaded.append(run)
    return states, from_start, loaded


def run_interpolate(model_json: str | Path, task: Task, a: Endpoint, b: Endpoint, splits: Mapping[str, str | Path],
                    out_dir: str | Path, *, model: str, k: int, seed: int, pair: str, points: int = 11,
                    track_train: bool = True, eval_cap: int | None = None, eval_batch_size: int = 32,
                    device: str = "auto") -> dict[str, Any]:
    """Interpolate from ``a`` to ``b`` and evaluate on ``task``'s splits (train/dev/test parquet files).

    Writes ``curve.parquet`` (alpha, split, loss, metric, ece), ``losses.parquet`` (alpha, split,
    index, loss, correct per dev and test example), ``examples.parquet`` (alpha, example, correct on
    the training split; empty without ``track_train``), ``plot.png`` and ``metrics.json`` into
    ``out_dir``; returns the metrics (see the module docstring).
    """
    started = time.perf_counter()
    dev_ = resolve_device(device)
    if dev_.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev_)
    (state_a, state_b), (a0, b0), (run_a, run_b) = _load_endpoints(model_json, (a, b))
    for key in ("head", "mode", "prompt", "max_length"):
        if run_a.info[key] != run_b.info[key]:
            raise LmftError(f"interpolate {pair}: the endpoints differ in {key} ({run_a.info[key]!r} vs "
                            f"{run_b.info[key]!r}); both runs must use the same head and trainable parameters")
    check_endpoints(state_a, state_b)
    distances = relative_distance(weight_distance(state_a, state_b, lora_scaling(run_a.clf)), a0, b0)
    for ep in (a, b):
        if tuple(ep.task.label_words) != tuple(task.label_words):
            raise LmftError(f"interpolate {pair}: endpoint task {ep.task.name!r} has label words "
                            f"{ep.task.label_words}, the evaluation task {task.name!r} {task.label_words}")
    clf, tokenizer, info = run_a.clf, run_a.tokenizer, run_a.info
    del run_b  # only its tuned tensors are needed
    clf.to(dev_).eval()
    state_a = {n: t.to(dev_) for n, t in state_a.items()}
    state_b = {n: t.to(dev_) for n, t in state_b.items()}

    rows: dict[str, list[int]] = {}

    def encode(split: str) -> Split:
        df = read_parquet(splits[split], ["text_a", "label"])
        rows[split] = cap_rows(len(df), eval_cap if split == "test" else None)
        df = df.iloc[rows[split]].reset_index(drop=True)
        return encode_split(df, task, tokenizer, clf, prompt=info["prompt"], max_length=info["max_length"], name=split)

    evals = {s: encode(s) for s in EVAL_SPLITS}
    track = encode("train") if track_train else None
    log.info("interpolate %s %s %s: %s -> %s, %d points", model, task.name, pair, a.describe(), b.describe(), points)
    out = interpolation_curve(clf, state_a, state_b, evals, task.metric, points, track, eval_batch_size, rows)
    curve = out.curve
    summary = curve_metrics(curve)
    examples = out.examples if out.examples is not None else pd.DataFrame(
        {"alpha": pd.Series(dtype=float), "example": pd.Series(dtype=int), "correct": pd.Series(dtype=bool)})

    out_dir = Path(out_dir)
    write_parquet(curve, out_dir / "curve.parquet")
    write_parquet(out.losses, out_dir / "losses.parquet")
    write_parquet(examples, out_dir / "examples.parquet")
    plot_curve(curve, out_dir / "plot.png", f"{model} {task.name}: {pair}", task.metric)
    metrics = {
        "stage": "interpolate", "task": task.name, "k": k, "seed": seed, "model": model, "method": pair,
        "pair": pair, "metric": task.metric, "dev_metric": summary["dev_metric_mid"],
        "test_metric": summary["test_metric_mid"], "test_ece": summary["test_ece_mid"],
        "endpoints": {"a": a.describe(), "b": b.describe()}, "points": points, "head": info["head"],
        "mode": info["mode"], **endpoint_distance(state_a, state_b), **distances, **summary,
        **(forgetting(examples) if track_train else {}),
        "n_dev": len(evals["dev"]), "n_test": len(evals["test"]), "device": str(dev_),
        "wall_time_s": time.perf_counter() - started, "peak_mem_mb": peak_mem_mb(dev_),
    }
    write_json(metrics, out_dir / "metrics.json")
    return metrics
