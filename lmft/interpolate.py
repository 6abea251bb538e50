"""Linear mode connectivity of fine-tuned checkpoints (Qin et al., EMNLP 2022).

Two endpoints ``a`` and ``b`` are states of the same tuned tensors (the names and shapes of a
run's trainable state). Along ``theta(alpha) = (1 - alpha) a + alpha b`` for ``points`` values of
``alpha`` in ``linspace(0, 1)`` only those tensors move; the rest of the model stays as built.
``torch.lerp`` is used, which returns ``a`` at ``alpha = 0`` and ``b`` at ``alpha = 1`` exactly.

The pre-trained endpoint of a run is its tuned tensors at their values before training; for
LoRA it is the fine-tuned adapter with ``lora_B`` set to zero (which is the pre-trained model
exactly) and ``lora_A`` kept, so that the path moves the merged weight ``W0 + alpha B A``
linearly, as interpolating full weights would.

The curve records, per ``alpha`` and split, the mean cross-entropy, the task metric and the ECE; on
request also per-example correctness on the training set (which examples are forgotten between
the ends). Barrier heights: for the loss ``max_alpha [L(alpha) - line(alpha)]`` with ``line``
the straight line between the end losses, for the metric ``max_alpha [line(alpha) - M(alpha)]``;
both are >= 0 and 0 for a path that never leaves the chord.

The interpolate stage (:func:`run_interpolate`, jobs from :func:`interpolate_jobs`) writes
``curve.parquet``, ``examples.parquet``, ``plot.png`` and ``metrics.json``, which adds to the
shared keys: ``pair`` (its name; ``method`` repeats it), ``endpoints`` (what a and b are),
``points``, ``head``, ``mode``, ``l2``, ``cosine``, ``norm_a``, ``norm_b``; per split
``{split}_loss_barrier``, ``{split}_metric_barrier``, ``{split}_loss_a``/``_b``,
``{split}_metric_a``/``_b``/``_mid`` and ``{split}_ece_mid``; with training examples tracked
``train_right_both_ends`` and ``train_forgotten`` (right at both ends, wrong somewhere between).

Memory: the endpoints' tensors are views of the loaded runs' parameters (the model evaluated is
run ``a``'s), so beside the model live the other endpoint and the point being evaluated: two
copies of the tuned tensors (with a pre-trained endpoint: its values and the point; the run's
values are the model's).

``dev_metric``/``test_metric``/``test_ece`` are taken at the path's midpoint (alpha = 0.5 when
it is on the grid, else the nearer of the two around it, the lower on a tie).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from lmft.evaluate import Split, evaluate
from lmft.io import LmftError, atomic_path, read_parquet, write_json, write_parquet
from lmft.runs import LoadedRun, build_for_run, cap_rows, encode_split, load_run, peak_mem_mb, resolve_device
from lmft.substitute import Substituted
from lmft.tasks import Task

log = logging.getLogger(__name__)


def check_endpoints(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    """Raise unless ``a`` and ``b`` hold the same tensor names with the same shapes."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise LmftError(f"interpolate: endpoints tune different tensors (only in a: {only_a[:5]}, only in b: "
                        f"{only_b[:5]}); both must come from the same method")
    for n in a:
        if a[n].shape != b[n].shape:
            raise LmftError(f"interpolate: {n!r} is {tuple(a[n].shape)} in a but {tuple(b[n].shape)} in b")


def lerp_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) a + alpha b`` per tensor (exactly ``a`` at 0 and ``b`` at 1)."""
    return {n: torch.lerp(a[n], b[n].to(a[n]), alpha) for n in a}


def pretrained_endpoint(pre: Mapping[str, Tensor], ft: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The pre-trained endpoint for the tuned tensors of ``ft`` (see the module docstring).

    ``pre`` holds the tensors' values before training (the classifier as built); LoRA
    ``lora_B`` tensors become zero and ``lora_A`` keep their fine-tuned values.
    """
    out = {}
    for n, t in ft.items():
        if "lora_B" in n:
            out[n] = torch.zeros_like(t)
        elif "lora_A" in n:
            out[n] = t
        elif n not in pre:
            raise LmftError(f"interpolate: tuned tensor {n!r} has no pre-trained value")
        else:
            out[n] = pre[n]
    check_endpoints(out, ft)
    return out


def endpoint_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, float]:
    """L2 distance and cosine similarity of the flattened endpoints (accumulated in float64)."""
    check_endpoints(a, b)
    dot = na = nb = dist = 0.0
    for n in a:
        x, y = a[n].double(), b[n].to(a[n].device).double()
        dot += float((x * y).sum())
        na += float((x * x).sum())
        nb += float((y * y).sum())
        dist += float(((x - y) ** 2).sum())
    cosine = dot / math.sqrt(na * nb) if na > 0 and nb > 0 else float("nan")
    return {"l2": math.sqrt(dist), "cosine": cosine, "norm_a": math.sqrt(na), "norm_b": math.sqrt(nb)}


def barrier(alphas: Sequence[float], values: Sequence[float], higher_is_better: bool = False) -> float:
    """Height of the curve above (loss) or below (``higher_is_better``, a metric) the chord between its ends."""
    x, y = np.asarray(alphas, dtype=float), np.asarray(values, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise LmftError(f"interpolate: barrier needs >= 2 matching alphas and values, got {x.shape} and {y.shape}")
    if not np.all(np.diff(x) > 0):
        raise LmftError(f"interpolate: alphas must increase, got {x.tolist()}")
    line = y[0] + (x - x[0]) / (x[-1] - x[0]) * (y[-1] - y[0])
    gap = line - y if higher_is_better else y - line
    return float(max(gap.max(), 0.0))


@dataclass
class Curve:
    """Output of :func:`interpolation_curve`."""

    curve: pd.DataFrame  # alpha, split, loss, metric, ece
    examples: pd.DataFrame | None  # alpha, example, correct (training set), when tracked


def alphas(points: int) -> list[float]:
    """``points`` values of alpha from 0 to 1 inclusive, evenly spaced."""
    if points < 2:
        raise LmftError(f"interpolate: points must be >= 2 (both ends), got {points}")
    return [float(x) for x in np.linspace(0.0, 1.0, points)]


def interpolation_curve(model: nn.Module, a: Mapping[str, Tensor], b: Mapping[str, Tensor],
                        splits: Mapping[str, Split], metric_name: str, points: int = 11,
                        track: Split | None = None, batch_size: int = 32) -> Curve:
    """Loss and metric (``acc``/``f1``) on each split along the path from ``a`` to ``b``.

    ``model`` is a Classifier whose tuned tensors are named as in ``a``/``b``; it is not modified
    (each point is a functional forward). ``track`` (the training split) adds per-example correctness.
    """
    check_endpoints(a, b)
    params = dict(model.named_parameters())
    missing = [n for n in a if n not in params]
    if missing:
        raise LmftError(f"interpolate: {missing[:5]} are not parameters of the model")
    device = next(iter(params.values())).device
    a = {n: t.to(device) for n, t in a.items()}
    b = {n: t.to(device) for n, t in b.items()}
    rows, examples = [], []
    for alpha in alphas(points):
        m = Substituted(model, lerp_state(a, b, alpha))
        for name, split in splits.items():
            ev = evaluate(m, split, metric_name, batch_size=batch_size, device=device)
            rows.append({"alpha": alpha, "split": name, "loss": ev.loss, "metric": ev.metric, "ece": ev.ece})
        if track is not None:
            ev = evaluate(m, track, metric_name, batch_size=batch_size, device=device)
            correct = (ev.preds == ev.labels).tolist()
            examples += [{"alpha": alpha, "example": i, "correct": c} for i, c in enumerate(correct)]
    return Curve(curve=pd.DataFrame(rows), examples=pd.DataFrame(examples) if track is not None else None)


def curve_metrics(curve: pd.DataFrame) -> dict[str, float]:
    """Barrier heights and end values per split of a curve table (see the module docstring)."""
    out: dict[str, float] = {}
    for split, part in curve.groupby("split", sort=False):
        part = part.sort_values("alpha")
        x = part["alpha"].to_numpy()
        out[f"{split}_loss_barrier"] = barrier(x, part["loss"].to_numpy())
        out[f"{split}_metric_barrier"] = barrier(x, part["metric"].to_numpy(), higher_is_better=True)
        for end, row in (("a", part.iloc[0]), ("b", part.iloc[-1])):
            out[f"{split}_loss_{end}"] = float(row["loss"])
            out[f"{split}_metric_{end}"] = float(row["metric"])
        mid = part.iloc[int(np.argmin(np.abs(x - 0.5)))]  # the first of two equally near: the lower alpha
        out[f"{split}_metric_mid"] = float(mid["metric"])
        if "ece" in part.columns:
            out[f"{split}_ece_mid"] = float(mid["ece"])
    return out


def forgetting(examples: pd.DataFrame) -> dict[str, int]:
    """Training examples right at both ends of the path, and those of them wrong somewhere between."""
    table = examples.pivot(index="example", columns="alpha", values="correct").sort_index(axis=1)
    ends = table.iloc[:, 0].astype(bool) & table.iloc[:, -1].astype(bool)
    inner = table.iloc[:, 1:-1].astype(bool)
    forgotten = ends & ~inner.all(axis=1)
    return {"train_right_both_ends": int(ends.sum()), "train_forgotten": int(forgotten.sum())}


def plot_curve(curve: pd.DataFrame, path: str | Path, title: str, metric_name: str = "metric") -> None:
    """Two panels, loss and metric vs alpha, one line per split; written atomically as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    ax_loss, ax_metric = fig.subplots(1, 2)
    for split, part in curve.groupby("split", sort=False):
        part = part.sort_values("alpha")
        ax_loss.plot(part["alpha"], part["loss"], marker="o", ms=3, label=split)
        ax_metric.plot(part["alpha"], part["metric"], marker="o", ms=3, label=split)
    for ax, name in ((ax_loss, "loss"), (ax_metric, metric_name)):
        ax.set_xlabel("alpha")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_metric.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


# --- the interpolate stage: one (model, eval task, pair) job -------------------------------------


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


def _load_endpoints(model_json: str | Path,
                    ends: Sequence[Endpoint]) -> tuple[list[dict[str, Tensor]], list[LoadedRun]]:
    """The tuned tensors of each endpoint, and the loaded runs (each run dir and step loaded once)."""
    runs: dict[tuple[Path, int | None], LoadedRun] = {}
    states, loaded = [], []
    for ep in ends:
        key = (Path(ep.run_dir), ep.step)
        if key not in runs:
            runs[key] = load_run(model_json, ep.task, ep.run_dir, ep.step)
        run = runs[key]
        state = {n: p.detach() for n, p in run.clf.named_parameters() if p.requires_grad}
        if not state:
            raise LmftError(f"interpolate: {ep.run_dir} is a {run.info['type']} run that tuned no parameters")
        if ep.pretrained:
            pre, _ = build_for_run(model_json, ep.task, run.info)
            state = pretrained_endpoint({n: p.detach() for n, p in pre.named_parameters()}, state)
        states.append(state)
        loaded.append(run)
    return states, loaded


def run_interpolate(model_json: str | Path, task: Task, a: Endpoint, b: Endpoint, splits: Mapping[str, str | Path],
                    out_dir: str | Path, *, model: str, k: int, seed: int, pair: str, points: int = 11,
                    track_train: bool = True, eval_cap: int | None = None, eval_batch_size: int = 32,
                    device: str = "auto") -> dict[str, Any]:
    """Interpolate from ``a`` to ``b`` and evaluate on ``task``'s splits (train/dev/test parquet files).

    Writes ``curve.parquet`` (alpha, split, loss, metric, ece), ``examples.parquet`` (alpha, example,
    correct on the training split; empty without ``track_train``), ``plot.png`` and
    ``metrics.json`` into ``out_dir``; returns the metrics (see the module docstring).
    """
    started = time.perf_counter()
    dev_ = resolve_device(device)
    if dev_.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev_)
    (state_a, state_b), (run_a, run_b) = _load_endpoints(model_json, (a, b))
    for key in ("head", "mode", "prompt", "max_length"):
        if run_a.info[key] != run_b.info[key]:
            raise LmftError(f"interpolate {pair}: the endpoints differ in {key} ({run_a.info[key]!r} vs "
                            f"{run_b.info[key]!r}); both runs must use the same head and trainable parameters")
    check_endpoints(state_a, state_b)
    for ep in (a, b):
        if tuple(ep.task.label_words) != tuple(task.label_words):
            raise LmftError(f"interpolate {pair}: endpoint task {ep.task.name!r} has label words "
                            f"{ep.task.label_words}, the evaluation task {task.name!r} {task.label_words}")
    clf, tokenizer, info = run_a.clf, run_a.tokenizer, run_a.info
    del run_b  # only its tuned tensors are needed
    clf.to(dev_).eval()
    state_a = {n: t.to(dev_) for n, t in state_a.items()}
    state_b = {n: t.to(dev_) for n, t in state_b.items()}

    def encode(split: str) -> Split:
        df = read_parquet(splits[split], ["text_a", "label"])
        if split == "test":
            df = df.iloc[cap_rows(len(df), eval_cap)].reset_index(drop=True)
        return encode_split(df, task, tokenizer, clf, prompt=info["prompt"], max_length=info["max_length"], name=split)

    evals = {s: encode(s) for s in ("dev", "test")}
    track = encode("train") if track_train else None
    log.info("interpolate %s %s %s: %s -> %s, %d points", model, task.name, pair, a.describe(), b.describe(), points)
    out = interpolation_curve(clf, state_a, state_b, evals, task.metric, points, track, eval_batch_size)
    curve = out.curve
    summary = curve_metrics(curve)
    examples = out.examples if out.examples is not None else pd.DataFrame(
        {"alpha": pd.Series(dtype=float), "example": pd.Series(dtype=int), "correct": pd.Series(dtype=bool)})

    out_dir = Path(out_dir)
    write_parquet(curve, out_dir / "curve.parquet")
    write_parquet(examples, out_dir / "examples.parquet")
    plot_curve(curve, out_dir / "plot.png", f"{model} {task.name}: {pair}", task.metric)
    metrics = {
        "stage": "interpolate", "task": task.name, "k": k, "seed": seed, "model": model, "method": pair,
        "pair": pair, "metric": task.metric, "dev_metric": summary["dev_metric_mid"],
        "test_metric": summary["test_metric_mid"], "test_ece": summary["test_ece_mid"],
        "endpoints": {"a": a.describe(), "b": b.describe()}, "points": points, "head": info["head"],
        "mode": info["mode"], **endpoint_distance(state_a, state_b), **summary,
        **(forgetting(examples) if track_train else {}),
        "n_dev": len(evals["dev"]), "n_test": len(evals["test"]), "device": str(dev_),
        "wall_time_s": time.perf_counter() - started, "peak_mem_mb": peak_mem_mb(dev_),
    }
    write_json(metrics, out_dir / "metrics.json")
    return metrics


_ENDPOINT_KEYS = {"method", "task", "k", "seed", "step", "pretrained"}
_PAIR_KEYS = {"a", "b", "tasks", "k", "seed"}


def interpolate_jobs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The interpolate jobs of a config: one per (model, evaluation task, pair) of ``interpolate.pairs``.

    ``interpolate.models`` narrows the models (default all; a pair runs only on the models both
    endpoints' methods run on). A pair is ``{a: endpoint, b: endpoint}`` with optional ``k``/``seed`` (default: the first of
    ``kshot``) and ``tasks`` (the evaluation tasks; default: the endpoints' tasks when they name
    any, else every task of the config). An endpoint names a ``finetune.methods`` entry
    (``method``) and may set ``task``, ``k``, ``seed`` (default: the job's), ``step`` (a
    ``save_steps`` checkpoint of that run) and ``pretrained: true`` (the run's values before
    training). Each job carries the endpoints resolved to ``{method, task, k, seed, step, pretrained}``.
    """
    section = config.get("interpolate") or {}
    methods = (config.get("finetune") or {}).get("methods") or {}
    kshot = config.get("kshot") or {}
    declared = list(config.get("models") or {})
    unknown_models = [m for m in section.get("models") or [] if m not in declared]
    if unknown_models:
        raise LmftError(f"config: interpolate.models names {unknown_models}, not among models: {declared}")
    jobs = []
    for pair, spec in (section.get("pairs") or {}).items():
        where = f"config: interpolate.pairs.{pair}"
        if not isinstance(spec, Mapping) or "a" not in spec or "b" not in spec:
            raise LmftError(f"{where}: needs endpoints a and b")
        unknown = sorted(set(spec) - _PAIR_KEYS)
        if unknown:
            raise LmftError(f"{where}: unknown key(s) {unknown}; known: {sorted(_PAIR_KEYS)}")
        k = spec.get("k", kshot.get("k", [16])[0])
        seed = spec.get("seed", kshot.get("seeds", [13])[0])
        ends = {}
        for end in ("a", "b"):
            ep = spec[end]
            bad = sorted(set(ep) - _ENDPOINT_KEYS)
            if bad or "method" not in ep:
                raise LmftError(f"{where}.{end}: an endpoint needs 'method' and takes {sorted(_ENDPOINT_KEYS)}"
                                f"{f'; unknown {bad}' if bad else ''}")
            if ep["method"] not in methods:
                raise LmftError(f"{where}.{end}: method {ep['method']!r} is not one of finetune.methods: "
                                f"{sorted(methods)}")
            step = ep.get("step")
            if step is not None and step not in (methods[ep["method"]].get("save_steps") or []):
                raise LmftError(f"{where}.{end}: step {step} is not in finetune.methods.{ep['method']}.save_steps "
                                f"({methods[ep['method']].get('save_steps') or []})")
            ends[end] = {"method": ep["method"], "task": ep.get("task"), "k": ep.get("k", k),
                         "seed": ep.get("seed", seed), "step": step, "pretrained": bool(ep.get("pretrained", False))}
        named = list(dict.fromkeys(e["task"] for e in ends.values() if e["task"]))
        tasks = spec.get("tasks") or named or list(config.get("tasks") or [])
        models = [m for m in (section.get("models") or declared)
                  if all(m in (methods[e["method"]].get("models") or [m]) for e in ends.values())]
        for model in models:
            for task in tasks:
                resolved = {end: {**e, "task": e["task"] or task} for end, e in ends.items()}
                jobs.append({"model": model, "task": task, "pair": pair, "k": k, "seed": seed, **resolved})
    return jobs

