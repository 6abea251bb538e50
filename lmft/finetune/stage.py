"""The fine-tuning stage: one (model, task, k, seed, method) job, from k-shot tables to a run directory.

A *method* is a named entry of the config's ``finetune.methods`` with a ``type`` and settings.
The types (``ft``, ``mezo``, ``linear-probe``, ``zeroshot``, ``icl`` and those of the config's
``finetune.plugins``) are in :mod:`lmft.finetune.methods`, one module each, with every key they take
and its default; :func:`lmft.finetune.methods.resolve_spec` checks an entry and fills the defaults in.
The keys ``models``, ``tasks``, ``k``, ``seeds``, ``resources``, ``threads`` and ``eval_cap``
belong to the workflow (rules/finetune.smk: which runs to make, and how) and are ignored here;
``eval_cap`` reaches :func:`run_finetune` as an argument.

:func:`run_finetune` is the runner that every type shares: it builds the classifier with the
head (``head``; default ``causal`` for causal LMs, ``prompt`` otherwise) and the preparation of
the type, reads the k-shot tables, caps test at ``eval_cap`` examples (a fixed subset drawn once
with ``RandomState(42)``, kept in file order), calls the type's run and writes the run directory
from what it returns. Inputs are tokenised with ``task.causal_template`` and ``encode(causal=True)``
for causal LMs, ``task.template`` for prompt heads. A generation task's job goes to
:func:`lmft.finetune.generation.run_generation` (the type's ``generate`` hook: text out, not class scores).

Grids: ``lr``, ``batch_size``, ``eps``, ``steps`` and ``weight_decay`` may each be a list; the
lists expand into trials, one job each, named ``{method}~{key}-{value}...`` (e.g.
``ft~lr-1e-05~bs-8``; :mod:`lmft.finetune.grid` defines the scheme). A method without lists keeps its name.

Run directory ``results/finetune/{model}/{task}/{k}-{seed}/{run}/`` (:func:`lmft.paths.finetune_run`), ``{run}``
the method's or the trial's name:

``metrics.json``
    the shared keys (``stage="finetune"``, task, k, seed, model, method, metric, dev_metric,
    test_metric, test_ece, wall_time_s, peak_mem_mb) and ``type``, ``mode``, ``head``,
    ``dev_loss``, ``test_loss``, ``n_trainable``, ``steps``, ``best_step``, ``notes`` (the
    classifier's and the method's), ``model_seed``, ``n_train``/``n_dev``/``n_test``,
    ``test_majority`` (the most frequent class's share of the scored test labels), ``device``,
    ``resumed_from``; then the type's own keys (``linear-probe``: ``probe_C``, ``probe_grid``;
    ``icl``: ``demos_mean``, ``demos_dropped``; the types that train: ``passes``, ``pass_unit``,
    ``best_passes``, ``train_s``, :func:`lmft.finetune.methods.training.cost_metrics`).
    ``method`` is the configured name; a trial adds ``trial`` (its run name) and ``hparams`` (its
    settings of the grid keys), so the aggregate keeps the best dev trial per seed.
    ``mode`` is the parameter mode of a type that trains, else the type's ``tuned`` (``linear`` for
    a probe, ``none`` for the others).
    ``peak_mem_mb`` is the process's peak resident set (``getrusage``) on the CPU, or
    ``torch.cuda.max_memory_allocated`` on a GPU.
``curve.parquet``
    ``step, split, loss, metric, passes, train_s``: train loss per step, dev at each evaluation
    (step 0 included), and test at ``best_step`` (with ``eval_test``: at each evaluation, the
    kept step's row among them); ``passes`` and ``train_s`` are the training cost so far
    (:mod:`lmft.finetune.loop`: passes over a training batch, seconds in training steps), null for the
    types that do not train.
``predictions.parquet``
    test predictions (:meth:`lmft.models.evaluate.Evaluation.predictions`): ``index`` (row of ``test.parquet``),
    ``label``, ``pred``, ``probs`` (list).
``model.safetensors``
    the trainable tensors at the best step (nothing for ``zeroshot``/``icl``), with the run's
    settings as JSON in the metadata key ``lmft``: :func:`lmft.finetune.runs.load_finetuned` rebuilds the classifier
    from them.
``steps/step-{n}.safetensors``
    the trainable tensors after step n for each n of ``save_steps`` (the folder is empty without).
``resume.pt``
    only while a job of a training type (``ft``, ``mezo``) with ``save_every`` runs (see
    :mod:`lmft.finetune.loop`). It is not a Snakemake output, so it survives a failed or killed job
    (Snakemake deletes only declared outputs) and the rerun continues from it; it is deleted once
    ``metrics.json`` is written.
    Step checkpoints wait in ``.pending-steps/{fingerprint}/`` for the same reason and move to
    ``steps/`` at the end (the fingerprint hashes the run's settings: files of other settings are dropped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lmft.data.kshot import cap_rows
from lmft.data.tasks import GenerationTask, Task
from lmft.finetune.generation import run_generation
from lmft.finetune.grid import split_run, trial_fields
from lmft.finetune.methods import Job, get_type, resolve_spec
from lmft.finetune.methods.training import selection
from lmft.finetune.runs import build_for_run
from lmft.io import LmftError, read_parquet, save_tensors, write_json, write_parquet
from lmft.models.checkpoint import FORMAT, checkpoint_metadata, save_trainable
from lmft.models.encode import uses_prompt
from lmft.models.load import read_manifest
from lmft.models.metrics import majority_share
from lmft.models.params import count_trainable
from lmft.paths import SPLITS
from lmft.runtime import peak_mem_mb, resolve_device

log = logging.getLogger(__name__)
CURVE_COST = ("passes", "train_s")  # curve.parquet's cost columns (lmft.finetune.loop; null where a type does not train)


def default_head(model_json: Path | str) -> str:
    return "causal" if read_manifest(model_json)["kind"] == "causal" else "prompt"


def _fingerprint(**kw: Any) -> str:
    return hashlib.sha256(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()


def run_finetune(model_json: Path | str, task: Task | GenerationTask, splits: Mapping[str, Path | str], out_dir: Path | str, *,
                 model: str, k: int, seed: int, method: str, spec: Mapping[str, Any], eval_cap: int | None = None,
                 device: str = "auto", on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run one fine-tuning job and write its run directory (see the module doc); returns the metrics.

    ``splits`` maps ``train``/``dev``/``test`` to k-shot parquet files. ``method`` is the run name:
    a configured method, or a trial of its grid (:mod:`lmft.finetune.grid`) whose settings ``spec`` holds.
    ``on_step`` is passed to the training loop (tests use it to simulate a kill).
    """
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    method, trial = split_run(method)
    cfg = resolve_spec(spec, method, grid=False)
    kind = get_type(cfg["type"])
    dev_ = resolve_device(device)
    if dev_.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev_)
    if task.kind == "generation":
        return run_generation(model_json, task, splits, out, kind=kind, cfg=cfg, model=model, k=k, seed=seed,
                              method=method, trial_fields=trial_fields(trial, cfg), eval_cap=eval_cap, device=dev_)
    head = cfg["head"] or default_head(model_json)
    if head not in kind.heads:
        raise LmftError(f"finetune method {method!r}: {kind.name} needs the {' or '.join(kind.heads)} head, not {head}")
    model_seed = seed if cfg["model_seed"] is None else int(cfg["model_seed"])
    info = {"format": FORMAT, "model": model, "task": task.name, "k": k, "seed": seed, "method": method,
            "type": kind.name, "head": head, "mode": cfg["mode"] if kind.trains else None,
            "select": selection(cfg) if kind.trains else {}, "model_seed": model_seed,
            "prompt": cfg["prompt"], "pooling": cfg["pooling"], "max_length": cfg["max_length"]}

    clf, tokenizer = build_for_run(model_json, task, info)
    info["prompt"] = uses_prompt(clf, cfg["prompt"])
    info["pooling"] = clf.pooling  # as resolved from the manifest: a rebuild pools the same way
    for note in clf.notes:
        log.info("classifier: %s", note)
    clf.to(dev_)

    frames = {s: read_parquet(splits[s], ["text_a", "label"]) for s in SPLITS}
    test_rows = cap_rows(len(frames["test"]), eval_cap)
    frames["test"] = frames["test"].iloc[test_rows].reset_index(drop=True)
    log.info("%s %s k=%d seed=%d %s (%s, head %s): train %d, dev %d, test %d on %s", model, task.name, k, seed,
             method, kind.name, head, *(len(f) for f in frames.values()), dev_)
    fingerprint = _fingerprint(info=info, cfg=cfg, n=[len(f) for f in frames.values()])
    pending = out / ".pending-steps" / fingerprint[:16]  # a killed run's step files, kept for its resumption
    job = Job(task, frames, clf, tokenizer, cfg, info, dev_, seed, model_seed, resume_path=out / "resume.pt",
              pending_steps=pending, fingerprint=fingerprint, on_step=on_step)
    outcome = kind.run(job)
    test_ev = outcome.test
    curve = outcome.curve
    if not any(r["step"] == outcome.best_step and r["split"] == "test" for r in curve):  # eval_test wrote it
        at_best = next((r for r in curve if r["step"] == outcome.best_step and r["split"] == "dev"), {})
        curve = [*curve, {"step": outcome.best_step, "split": "test", "loss": test_ev.loss, "metric": test_ev.metric,
                          **{c: at_best.get(c) for c in CURVE_COST}}]
    log.info("test: loss %.4f %s %.4f ECE %.4f (best step %d)", test_ev.loss, task.metric, test_ev.metric,
             test_ev.ece, outcome.best_step)

    ckpt_meta = checkpoint_metadata(info | {"step": outcome.best_step})
    if count_trainable(clf):
        save_trainable(clf, out / "model.safetensors", ckpt_meta)
    else:
        save_tensors({}, out / "model.safetensors", ckpt_meta)
    _finish_steps(pending, out / "steps")
    write_parquet(test_ev.predictions(test_rows), out / "predictions.parquet")
    write_parquet(pd.DataFrame(curve, columns=["step", "split", "loss", "metric", *CURVE_COST]), out / "curve.parquet")
    metrics = {"stage": "finetune", "task": task.name, "k": k, "seed": seed, "model": model, "method": method,
               "type": kind.name, "mode": info["mode"] or kind.tuned, "head": head, "metric": task.metric,
               "dev_metric": outcome.dev_metric, "dev_loss": outcome.dev_loss, "test_metric": test_ev.metric,
               "test_loss": test_ev.loss, "test_ece": test_ev.ece, "n_trainable": count_trainable(clf),
               "steps": outcome.steps, "best_step": outcome.best_step, "model_seed": model_seed,
               "n_train": len(frames["train"]), "n_dev": len(frames["dev"]), "n_test": len(frames["test"]),
               "device": str(dev_), "test_majority": majority_share(test_ev.labels),
               "resumed_from": outcome.resumed_from, "notes": [*clf.notes, *outcome.notes],
               "wall_time_s": time.perf_counter() - started, "peak_mem_mb": peak_mem_mb(dev_),
               } | outcome.metrics | trial_fields(trial, cfg)
    write_json(metrics, out / "metrics.json")
    job.resume_path.unlink(missing_ok=True)
    return metrics


def _finish_steps(pending: Path, steps_dir: Path) -> None:
    """Move this run's step checkpoints into ``steps/`` (created even when empty); drop all pending ones."""
    steps_dir.mkdir(parents=True, exist_ok=True)
    if pending.is_dir():
        for f in sorted(pending.glob("step-*.safetensors")):
            f.replace(steps_dir / f.name)
    shutil.rmtree(pending.parent, ignore_errors=True)
