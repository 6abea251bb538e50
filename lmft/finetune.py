"""The fine-tuning stage: one (model, task, k, seed, method) job, from k-shot tables to a run directory.

A *method* is a named entry of the config's ``finetune.methods`` with a ``type`` and settings
(:data:`DEFAULTS` lists every key and its default per type):

================  =================================================================================
type              what the job does
================  =================================================================================
``ft``            first-order fine-tuning (AdamW or SGD; :mod:`lmft.train`), best dev checkpoint kept
``mezo``          zeroth-order fine-tuning (:mod:`lmft.mezo` through :mod:`lmft.train`), best dev kept
``linear-probe``  logistic regression on frozen features, C chosen on dev (:mod:`lmft.probe`)
``zeroshot``      the prompt or causal head as it is, no training
``icl``           in-context demonstrations from the k-shot train set, no training (:mod:`lmft.icl`)
================  =================================================================================

Shared keys: ``head`` (``prompt`` | ``cls`` | ``causal``; default ``causal`` for causal LMs,
``prompt`` otherwise), ``mode`` (trainable parameters, :func:`lmft.params.select_trainable`;
``ft``/``mezo`` only) with ``freeze_embeddings``/``lora_targets``/``lora_alpha``/``lora_dropout``,
``model_seed`` (the training seed: initialises the ``cls`` head and LoRA, orders the batches, seeds
dropout and MeZO's perturbations; default: the data seed, so two runs of the same data can differ
in it alone), ``prompt`` (whether a ``cls`` head on an encoder reads a
prompt; default no: LM-BFF's standard fine-tuning input ``[CLS] a [SEP] b [SEP]``), ``pooling``
(``cls`` | ``mean`` | ``last``, the ``cls`` head's sentence vector, also what its linear probe
reads; default: as the model was trained, the manifest's ``pooling``), ``max_length``
(default: the task's, for ``icl`` the model's) and ``eval_batch_size``. ``ft``/``mezo`` also take
``loss`` (``label-words``: cross-entropy of the class logits, the default; ``lm``: full-vocabulary
cross-entropy of the label word, for prompt heads with an MLM head and causal heads;
:func:`lmft.mezo.classifier_loss`). The keys ``models``,
``tasks``, ``k``, ``seeds``, ``resources``, ``threads`` and ``eval_cap`` belong to the workflow
(rules/finetune.smk: which runs to make, and how) and are ignored here; ``eval_cap`` reaches
:func:`run_finetune` as an argument.

Inputs are tokenised with ``task.causal_template`` and ``encode(causal=True)`` for causal LMs,
``task.template`` for prompt heads. Test is capped at ``eval_cap`` examples: a fixed subset drawn
once with ``RandomState(42)``, kept in file order.

Grids: ``lr``, ``batch_size``, ``eps``, ``steps`` and ``weight_decay`` may each be a list; the
lists expand into trials, one job each, named ``{method}~{key}-{value}...`` (e.g.
``ft~lr-1e-05~bs-8``; :mod:`lmft.grid` defines the scheme). A method without lists keeps its name.

Run directory ``results/finetune/{model}/{task}/{k}-{seed}/{run}/`` (:func:`lmft.paths.finetune_run`), ``{run}``
the method's or the trial's name:

``metrics.json``
    the shared keys (``stage="finetune"``, task, k, seed, model, method, metric, dev_metric,
    test_metric, test_ece, wall_time_s, peak_mem_mb) and ``type``, ``mode``, ``head``,
    ``dev_loss``, ``test_loss``, ``n_trainable``, ``steps``, ``best_step``, ``notes`` (the
    classifier's and the method's), ``model_seed``, ``n_train``/``n_dev``/``n_test``,
    ``test_majority`` (the most frequent class's share of the scored test labels), ``device``,
    ``resumed_from``; ``linear-probe`` adds ``probe_C`` and ``probe_grid``; ``icl`` adds
    ``demos_mean`` (demonstrations per prompt after truncation) and ``demos_dropped`` (prompts that lost some).
    ``method`` is the configured name; a trial adds ``trial`` (its run name) and ``hparams`` (its
    settings of the grid keys), so the aggregate keeps the best dev trial per seed.
    ``mode`` is the parameter mode for ``ft``/``mezo``, ``linear`` for a probe, ``none`` otherwise.
    ``peak_mem_mb`` is the process's peak resident set (``getrusage``) on the CPU, or
    ``torch.cuda.max_memory_allocated`` on a GPU.
``curve.parquet``
    ``step, split, loss, metric``: train loss per step, dev at each evaluation (step 0 included),
    and one test row at ``best_step``.
``predictions.parquet``
    test predictions: ``index`` (row of ``test.parquet``), ``label``, ``pred``, ``probs`` (list).
``model.safetensors``
    the trainable tensors at the best step (nothing for ``zeroshot``/``icl``), with the run's
    settings as JSON in the metadata key ``lmft``: :func:`lmft.runs.load_finetuned` rebuilds the classifier
    from them.
``steps/step-{n}.safetensors``
    the trainable tensors after step n for each n of ``save_steps`` (the folder is empty without).
``resume.pt``
    only while an ``ft``/``mezo`` job with ``save_every`` runs (see :mod:`lmft.train`). It is not
    a Snakemake output, so it survives a failed or killed job (Snakemake deletes only declared
    outputs) and the rerun continues from it; it is deleted once ``metrics.json`` is written.
    Step checkpoints wait in ``.pending-steps/{fingerprint}/`` for the same reason and move to
    ``steps/`` at the end (the fingerprint hashes the run's settings: files of other settings are dropped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lmft.batching import label_ids, pad_id
from lmft.checkpoint import save_trainable
from lmft.evaluate import Evaluation, Split, evaluate
from lmft.grid import grid_keys, split_run, trial_fields
from lmft.heads import Classifier
from lmft.icl import icl_encode
from lmft.io import LmftError, read_parquet, save_tensors, write_json, write_parquet
from lmft.models import read_manifest
from lmft.params import count_trainable
from lmft.probe import C_GRID, extract_features, fit_probe
from lmft.runs import FORMAT, build_for_run, cap_rows, encode_split, peak_mem_mb, resolve_device, uses_prompt
from lmft.tasks import Task
from lmft.train import FirstOrder, LoopConfig, ZerothOrder, train_loop

log = logging.getLogger(__name__)

TYPES = ("ft", "mezo", "linear-probe", "zeroshot", "icl")

_WORKFLOW_KEYS = frozenset({"models", "tasks", "k", "seeds", "resources", "threads", "eval_cap"})
_COMMON = {"type": None, "head": None, "model_seed": None, "prompt": None, "pooling": None, "max_length": None,
           "eval_batch_size": 32}
_SELECT = {"mode": "all", "freeze_embeddings": False, "lora_targets": None, "lora_alpha": None, "lora_dropout": 0.0}
_LOOP = {"steps": None, "epochs": None, "eval_every": 0, "save_every": 0, "save_steps": [], "loss": "label-words"}
DEFAULTS: dict[str, dict[str, Any]] = {
    # LM-BFF: batch 8, lr 1e-5, 1000 steps, dev every 100, AdamW, no weight decay, linear decay.
    "ft": _COMMON | _SELECT | _LOOP | {"batch_size": 8, "steps": 1000, "eval_every": 100, "optimizer": "adamw",
                                        "lr": 1e-5, "weight_decay": 0.0, "momentum": 0.0, "warmup_steps": 0,
                                        "schedule": "linear", "max_grad_norm": 1.0},
    # MeZO (RoBERTa-large, k=16): batch 64, lr 1e-6, eps 1e-3, 100k steps, dev every 10k, constant lr.
    "mezo": _COMMON | _SELECT | _LOOP | {"batch_size": 64, "steps": 100_000, "eval_every": 10_000, "lr": 1e-6,
                                          "eps": 1e-3, "weight_decay": 0.0, "n_perturbations": 1,
                                          "warmup_steps": 0, "schedule": "constant"},
    "linear-probe": _COMMON | {"C_grid": list(C_GRID), "max_iter": 1000},
    "zeroshot": dict(_COMMON),
    "icl": _COMMON | {"demos_per_label": 1},
}


def resolve_spec(spec: Mapping[str, Any], method: str = "method", *, grid: bool = True) -> dict[str, Any]:
    """The method's settings with defaults filled in; raises on an unknown type or key.

    A grid's lists (:mod:`lmft.grid`) are checked and stay lists; ``grid=False`` (a job's
    settings, which are one trial's) refuses them.
    """
    kind = spec.get("type")
    if kind not in DEFAULTS:
        raise LmftError(f"finetune method {method!r}: type must be one of {', '.join(TYPES)}, got {kind!r}")
    unknown = sorted(set(spec) - set(DEFAULTS[kind]) - set(_WORKFLOW_KEYS))
    if unknown:
        raise LmftError(f"finetune method {method!r} (type {kind}): unknown key(s) {unknown}; "
                        f"known: {sorted(DEFAULTS[kind])}")
    listed = grid_keys(spec, method)
    if listed and not grid:
        raise LmftError(f"finetune method {method!r}: {', '.join(listed)} given as lists make a grid; a job "
                        "runs one trial's settings (lmft.grid.trials)")
    out = DEFAULTS[kind] | job_spec(spec)
    if kind in ("ft", "mezo") and spec.get("epochs") is not None:
        if spec.get("steps") is not None:
            raise LmftError(f"finetune method {method!r}: set steps or epochs, not both")
        out["steps"] = None  # epochs decide
    return out


def job_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A method's settings without the workflow's keys: what the job's results depend on (the rule's params)."""
    return {k: v for k, v in spec.items() if k not in _WORKFLOW_KEYS}


def default_head(model_json: Path | str) -> str:
    return "causal" if read_manifest(model_json)["kind"] == "causal" else "prompt"


def model_max_length(clf: Classifier, tokenizer: Any) -> int:
    """Longest input the model takes: its position table (RoBERTa's minus its 2 offset rows), the tokenizer's limit."""
    config = clf.backbone.config
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 512
    if "roberta" in config.model_type:
        n -= 2
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 10**6:
        n = min(n, tok_max)
    return int(n)


def _select_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: cfg[k] for k in ("freeze_embeddings", "lora_targets", "lora_alpha", "lora_dropout")}


def _fingerprint(**kw: Any) -> str:
    return hashlib.sha256(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()


def _predictions(ev: Evaluation, rows: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"index": rows, "label": ev.labels.tolist(), "pred": ev.preds.tolist(),
                         "probs": [p for p in ev.probs.double().numpy()]})


def run_finetune(model_json: Path | str, task: Task, splits: Mapping[str, Path | str], out_dir: Path | str, *,
                 model: str, k: int, seed: int, method: str, spec: Mapping[str, Any], eval_cap: int | None = None,
                 device: str = "auto", on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run one fine-tuning job and write its run directory (see the module doc); returns the metrics.

    ``splits`` maps ``train``/``dev``/``test`` to k-shot parquet files. ``method`` is the run name:
    a configured method, or a trial of its grid (:mod:`lmft.grid`) whose settings ``spec`` holds.
    ``on_step`` is passed to the training loop (tests use it to simulate a kill).
    """
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    method, trial = split_run(method)
    cfg = resolve_spec(spec, method, grid=False)
    kind = cfg["type"]
    dev_ = resolve_device(device)
    if dev_.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev_)
    head = cfg["head"] or default_head(model_json)
    if kind in ("zeroshot", "icl") and head == "cls":
        raise LmftError(f"finetune method {method!r}: {kind} needs the prompt or causal head (a cls head is untrained)")
    model_seed = seed if cfg["model_seed"] is None else int(cfg["model_seed"])
    info = {"format": FORMAT, "model": model, "task": task.name, "k": k, "seed": seed, "method": method,
            "type": kind, "head": head, "mode": cfg.get("mode") if kind in ("ft", "mezo") else None,
            "select": _select_kwargs(cfg) if kind in ("ft", "mezo") else {}, "model_seed": model_seed,
            "prompt": cfg["prompt"], "pooling": cfg["pooling"], "max_length": cfg["max_length"]}

    clf, tokenizer = build_for_run(model_json, task, info)
    info["prompt"] = uses_prompt(clf, cfg["prompt"])
    info["pooling"] = clf.pooling  # as resolved from the manifest: a rebuild pools the same way
    notes = list(clf.notes)
    for note in notes:
        log.info("classifier: %s", note)
    clf.to(dev_)

    frames = {s: read_parquet(splits[s], ["text_a", "label"]) for s in ("train", "dev", "test")}
    test_rows = cap_rows(len(frames["test"]), eval_cap)
    frames["test"] = frames["test"].iloc[test_rows].reset_index(drop=True)
    extra: dict[str, Any] = {}
    if kind == "icl":
        data, extra = _icl_splits(frames, task, tokenizer, clf, cfg, seed, notes)
    else:
        data = {s: encode_split(df, task, tokenizer, clf, prompt=cfg["prompt"], max_length=cfg["max_length"],
                                name=s) for s, df in frames.items()}
    log.info("%s %s k=%d seed=%d %s (%s, head %s): train %d, dev %d, test %d on %s", model, task.name, k, seed,
             method, kind, head, len(frames["train"]), len(data["dev"]), len(data["test"]), dev_)

    bs = int(cfg["eval_batch_size"])
    steps, best_step, resumed_from = 0, 0, 0
    resume = out / "resume.pt"
    fingerprint = _fingerprint(info=info, cfg=cfg, n=[len(v) for v in data.values()])
    pending = out / ".pending-steps" / fingerprint[:16]  # a killed run's step files, kept for its resumption
    if kind in ("ft", "mezo"):
        loop = _loop_config(cfg, len(data["train"]))
        stepper = _stepper(clf, cfg, loop.steps, model_seed)

        def save_step(step: int) -> None:
            save_trainable(clf, pending / f"step-{step}.safetensors", _metadata(info | {"step": step}))

        result = train_loop(clf, stepper, data["train"], data["dev"], task.metric, loop, model_seed, device=dev_,
                            resume_path=resume, save_step=save_step, on_step=on_step, fingerprint=fingerprint)
        curve = result.curve
        steps, best_step, resumed_from = result.steps, result.best_step, result.resumed_from
        dev_metric, dev_loss = result.best_dev_metric, result.best_dev_loss
        test_ev = evaluate(clf, data["test"], task.metric, bs, dev_, desc="test")
    elif kind == "linear-probe":
        x = {s: extract_features(clf, data[s], bs, dev_) for s in data}
        y = {s: torch.tensor(data[s].labels) for s in data}
        fit = fit_probe(clf, x["train"], y["train"], x["dev"], y["dev"], task.metric,
                        grid=tuple(cfg["C_grid"]), max_iter=int(cfg["max_iter"]))
        with torch.no_grad():
            test_ev = Evaluation(clf.linear(x["test"].to(dev_)).float().cpu(), y["test"], task.metric)
        dev_metric, dev_loss = fit.dev_metric, fit.dev_loss
        curve = [{"step": 0, "split": "dev", "loss": dev_loss, "metric": dev_metric}]
        extra = {"probe_C": fit.C, "probe_grid": fit.grid}
        notes.append(f"linear probe on the {clf.feature_name} hidden state, C={fit.C:g} chosen on dev")
    else:
        dev_ev = evaluate(clf, data["dev"], task.metric, bs, dev_, desc="dev")
        test_ev = evaluate(clf, data["test"], task.metric, bs, dev_, desc="test")
        dev_metric, dev_loss = dev_ev.metric, dev_ev.loss
        curve = [{"step": 0, "split": "dev", "loss": dev_loss, "metric": dev_metric}]
    curve.append({"step": best_step, "split": "test", "loss": test_ev.loss, "metric": test_ev.metric})
    log.info("test: loss %.4f %s %.4f ECE %.4f (best step %d)", test_ev.loss, task.metric, test_ev.metric,
             test_ev.ece, best_step)

    ckpt_meta = _metadata(info | {"step": best_step})
    if count_trainable(clf):
        save_trainable(clf, out / "model.safetensors", ckpt_meta)
    else:
        save_tensors({}, out / "model.safetensors", ckpt_meta)
    _finish_steps(pending, out / "steps")
    write_parquet(_predictions(test_ev, test_rows), out / "predictions.parquet")
    write_parquet(pd.DataFrame(curve, columns=["step", "split", "loss", "metric"]), out / "curve.parquet")
    metrics = {"stage": "finetune", "task": task.name, "k": k, "seed": seed, "model": model, "method": method,
               "type": kind, "mode": info["mode"] or ("linear" if kind == "linear-probe" else "none"), "head": head,
               "metric": task.metric, "dev_metric": dev_metric, "dev_loss": dev_loss, "test_metric": test_ev.metric,
               "test_loss": test_ev.loss, "test_ece": test_ev.ece, "n_trainable": count_trainable(clf),
               "steps": steps, "best_step": best_step, "model_seed": model_seed, "n_train": len(frames["train"]),
               "n_dev": len(data["dev"]), "n_test": len(data["test"]), "device": str(dev_),
               "test_majority": test_ev.labels.bincount().max().item() / test_ev.labels.numel(),
               "resumed_from": resumed_from, "notes": notes, "wall_time_s": time.perf_counter() - started,
               "peak_mem_mb": peak_mem_mb(dev_)} | extra | trial_fields(trial, cfg)
    write_json(metrics, out / "metrics.json")
    resume.unlink(missing_ok=True)
    return metrics


def _metadata(info: Mapping[str, Any]) -> dict[str, str]:
    return {"lmft": json.dumps(info, sort_keys=True), "mode": str(info["mode"]), "head": info["head"],
            "task": info["task"], "method": info["method"]}


def _stepper(clf: Classifier, cfg: Mapping[str, Any], total: int, seed: int) -> FirstOrder | ZerothOrder:
    if cfg["type"] == "ft":
        return FirstOrder(clf, total_steps=total, optimizer=cfg["optimizer"], lr=float(cfg["lr"]),
                          weight_decay=float(cfg["weight_decay"]), momentum=float(cfg["momentum"]),
                          warmup_steps=int(cfg["warmup_steps"]), schedule=cfg["schedule"],
                          max_grad_norm=float(cfg["max_grad_norm"]), loss=cfg["loss"])
    return ZerothOrder(clf, total_steps=total, lr=float(cfg["lr"]), eps=float(cfg["eps"]),
                       weight_decay=float(cfg["weight_decay"]), n_perturbations=int(cfg["n_perturbations"]),
                       seed=seed, warmup_steps=int(cfg["warmup_steps"]), schedule=cfg["schedule"], loss=cfg["loss"])


def _loop_config(cfg: Mapping[str, Any], n_train: int) -> LoopConfig:
    steps = cfg["steps"]
    if steps is None:
        if not cfg["epochs"]:
            raise LmftError("set steps or epochs")
        steps = int(cfg["epochs"]) * math.ceil(n_train / int(cfg["batch_size"]))
    return LoopConfig(steps=int(steps), batch_size=int(cfg["batch_size"]), eval_every=int(cfg["eval_every"]),
                      eval_batch_size=int(cfg["eval_batch_size"]), save_every=int(cfg["save_every"]),
                      save_steps=tuple(int(s) for s in cfg["save_steps"]))


def _finish_steps(pending: Path, steps_dir: Path) -> None:
    """Move this run's step checkpoints into ``steps/`` (created even when empty); drop all pending ones."""
    steps_dir.mkdir(parents=True, exist_ok=True)
    if pending.is_dir():
        for f in sorted(pending.glob("step-*.safetensors")):
            f.replace(steps_dir / f.name)
    shutil.rmtree(pending.parent, ignore_errors=True)


def _icl_splits(frames: Mapping[str, pd.DataFrame], task: Task, tokenizer: Any, clf: Classifier,
                cfg: Mapping[str, Any], seed: int, notes: list[str]) -> tuple[dict[str, Split], dict[str, Any]]:
    """Dev and test prompts with demonstrations drawn from train."""
    max_length = cfg["max_length"] or model_max_length(clf, tokenizer)
    train_labels = label_ids(frames["train"], task)
    data: dict[str, Split] = {}
    used, dropped = [], 0
    for s in ("dev", "test"):
        prompts = icl_encode(frames[s], frames["train"], train_labels, task, tokenizer, clf.causal, max_length,
                             int(cfg["demos_per_label"]), seed, s)
        data[s] = Split([p.encoded for p in prompts], label_ids(frames[s], task), pad_id(tokenizer), s)
        if s == "test":
            used = [p.n_demos for p in prompts]
            dropped = sum(p.n_demos < p.n_sampled for p in prompts)
    notes.append(f"icl: {cfg['demos_per_label']} demonstration(s) per label, max_length {max_length}; "
                 f"{dropped} test prompt(s) lost demonstrations to truncation")
    return data, {"demos_mean": float(np.mean(used)), "demos_dropped": dropped}
