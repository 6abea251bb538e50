"""The fine-tuning stage's runner for generation tasks (summarisation, QA) on a causal LM.

The method types mean what they mean for classification, with text out instead of a class:

``zeroshot``  greedy decoding (:mod:`lmft.decode`) after the task's prompt
``icl``       the same after ``demos`` demonstrations of the k-shot train set (:func:`lmft.lm_targets.icl_prompts`;
              ``demos: null`` takes all k, the problem set's protocol)
``ft``        first-order fine-tuning on the target tokens (labels -100 on prompt and padding), in
              a parameter mode of :func:`lmft.params.select_trainable` (all, blocks, bias, norm,
              LoRA), then decoding; the best dev checkpoint is kept
``mezo``      the same with MeZO's zeroth-order steps

Dev selection is by teacher forcing: at each evaluation the target tokens' accuracy (argmax equals
the reference token) ranks checkpoints, ties to the lower target loss, so no decoding runs inside
the loop; the kept checkpoint then decodes dev and test once. Test rows are capped like the
classification runs' (:func:`lmft.runs.cap_rows`).

Writes the same run directory as :func:`lmft.finetune.run_finetune`: ``metrics.json`` (``metric``
is the task's primary score, ROUGE-L or token F1; ``dev_metric``/``test_metric`` those scores,
``test_se`` its standard error over the test examples, ``dev_scores``/``test_scores`` every score of
the task metric, ``dev_loss`` the dev target loss, ``dev_token_acc`` its token accuracy,
``gen_tokens_mean`` the mean generated length), ``predictions.parquet`` (``index``, ``target``,
``prediction``, ``score``), ``curve.parquet``, ``model.safetensors`` (the trained tensors, else
empty) and an empty ``steps/``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lmft.checkpoint import save_trainable
from lmft.decode import generate_texts
from lmft.heads import Classifier
from lmft.io import LmftError, read_parquet, save_tensors, write_json, write_parquet
from lmft.lm_targets import LMSplit, icl_prompts, lm_split, prompts, target_logits, target_loss
from lmft.models import load
from lmft.params import count_trainable, parse_mode, select_trainable
from lmft.runs import FORMAT, cap_rows, peak_mem_mb
from lmft.tasks import GenerationTask
from lmft.textmetrics import PRIMARY, example_scores, mean_scores
from lmft.train import FirstOrder, LoopConfig, ZerothOrder, train_loop

log = logging.getLogger(__name__)

TYPES = ("zeroshot", "icl", "ft", "mezo")
_NO_GENERATION_MODES = ("prefix", "head")  # a prefix lives in the classifier's forward; the head is tied


def build_lm(model_json: Path | str, cfg: Mapping[str, Any], seed: int) -> tuple[Classifier, Any]:
    """The causal LM of ``model_json`` inside a head-less :class:`Classifier` (what parameter modes
    and checkpoints work on), its parameters selected by ``cfg``'s mode (frozen for zeroshot/icl)."""
    with torch.random.fork_rng(devices=[]):  # loading and LoRA's A draw from the RNG; keep the caller's stream
        torch.manual_seed(seed)
        tokenizer, backbone, manifest = load(model_json, lm_head=True)
        if manifest["kind"] != "causal":
            raise LmftError(f"{model_json}: generation tasks need a causal LM, this model is {manifest['kind']}")
        clf = Classifier(backbone, "causal", 0, causal=True, notes=[f"model {manifest['source']} "
                                                                    f"({manifest['model_type']}), greedy decoding"])
        if cfg["type"] in ("ft", "mezo"):
            kind, _ = parse_mode(cfg["mode"])
            if kind in _NO_GENERATION_MODES:
                raise LmftError(f"mode {cfg['mode']!r} cannot decode text; use all, last/first/middle:N, bias, "
                                "norm or lora:R for a generation task")
            select_trainable(clf, cfg["mode"], **{k: cfg[k] for k in ("freeze_embeddings", "lora_targets",
                                                                      "lora_alpha", "lora_dropout")})
        else:
            clf.requires_grad_(False)
    return clf.eval(), tokenizer


def teacher_forced(clf: Classifier, split: LMSplit, batch_size: int, device: torch.device,
                   desc: str = "dev") -> tuple[float, float]:
    """(target-token accuracy, mean target-token cross-entropy) of ``split``, in eval mode, no gradients."""
    was_training = clf.training
    clf.eval()
    hits, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            batch = {k: v.to(device) for k, v in split.batch(range(start, min(start + batch_size, len(split)))).items()}
            logits, targets = target_logits(clf.backbone, batch)
            hits += int((logits.argmax(-1) == targets).sum())
            loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            total += targets.numel()
    clf.train(was_training)
    return hits / total, loss_sum / total


def decode_split(clf: Classifier, tokenizer: Any, prompt_ids: list[list[int]], task: GenerationTask,
                 batch_size: int, device: torch.device, desc: str) -> list[str]:
    """Greedy continuations of ``prompt_ids``, cut at the task's stop strings, stripped."""
    log.info("decoding %s: %d prompts, up to %d new tokens", desc, len(prompt_ids), task.max_new_tokens)
    texts = generate_texts(clf.backbone, tokenizer, prompt_ids, max_new_tokens=task.max_new_tokens,
                           stop=task.stop, batch_size=batch_size, device=device)
    return [t.strip() for t in texts]


def run_generation(model_json: Path | str, task: GenerationTask, splits: Mapping[str, Path | str],
                   out_dir: Path | str, *, cfg: Mapping[str, Any], model: str, k: int, seed: int, method: str,
                   trial_fields: Mapping[str, Any], eval_cap: int | None, device: torch.device) -> dict[str, Any]:
    """Run one job of a generation task and write its run directory (module doc); returns the metrics.

    ``cfg`` is the method's resolved settings (:func:`lmft.finetune.resolve_spec`), ``trial_fields``
    the grid trial's keys for ``metrics.json``.
    """
    started = time.perf_counter()
    kind = cfg["type"]
    if kind not in TYPES:
        raise LmftError(f"finetune method {method!r}: type {kind} does not apply to the generation task "
                        f"{task.name!r}; use one of {', '.join(TYPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_seed = seed if cfg["model_seed"] is None else int(cfg["model_seed"])
    clf, tokenizer = build_lm(model_json, cfg, model_seed)
    clf.to(device)
    notes = list(clf.notes)
    frames = {s: read_parquet(splits[s], ["text_a", "target"]) for s in ("train", "dev", "test")}
    test_rows = cap_rows(len(frames["test"]), eval_cap)
    frames["test"] = frames["test"].iloc[test_rows].reset_index(drop=True)
    bs = int(cfg["eval_batch_size"])
    dev = lm_split(frames["dev"], task, tokenizer, "dev")
    steps = best_step = 0
    extra: dict[str, Any] = {}
    if kind in ("ft", "mezo"):
        train = lm_split(frames["train"], task, tokenizer, "train")
        curve, steps, best_step = _train(clf, cfg, train, dev, model_seed, device)
        dev_acc, dev_loss = next((r["metric"], r["loss"]) for r in curve if r["step"] == best_step and r["split"] == "dev")
    else:
        dev_acc, dev_loss = teacher_forced(clf, dev, bs, device)
        curve = [{"step": 0, "split": "dev", "loss": dev_loss, "metric": dev_acc}]
    if kind == "icl":
        demos = len(frames["train"]) if cfg["demos"] is None else int(cfg["demos"])  # None: the whole support set
        inputs = {s: icl_prompts(frames[s], frames["train"], task, tokenizer, demos, seed + i)
                  for i, s in enumerate(("dev", "test"))}
        extra["demos"] = demos
        notes.append(f"icl: {demos} demonstration(s) of the k-shot train set per prompt, in a seeded random order")
    else:
        inputs = {s: prompts(frames[s], task, tokenizer) for s in ("dev", "test")}
    outputs = {s: decode_split(clf, tokenizer, inputs[s], task, bs, device, s) for s in ("dev", "test")}
    primary = PRIMARY[task.metric]
    each = {s: example_scores(outputs[s], list(frames[s]["target"]), task.metric) for s in ("dev", "test")}
    scores = {s: mean_scores(each[s]) for s in each}
    test_se = float(np.std(each["test"][primary], ddof=1) / np.sqrt(len(test_rows))) if len(test_rows) > 1 else math.nan
    curve.append({"step": best_step, "split": "test", "loss": float("nan"), "metric": scores["test"][primary]})
    log.info("test %s: %s", primary, ", ".join(f"{k} {v:.4f}" for k, v in scores["test"].items()))

    info = {"format": FORMAT, "model": model, "task": task.name, "k": k, "seed": seed, "method": method,
            "type": kind, "head": "generate", "mode": cfg.get("mode") if kind in ("ft", "mezo") else None,
            "model_seed": model_seed, "step": best_step}
    meta = {"lmft": json.dumps(info, sort_keys=True), "task": task.name, "method": method}
    if count_trainable(clf):
        save_trainable(clf, out / "model.safetensors", meta)
    else:
        save_tensors({}, out / "model.safetensors", meta)
    (out / "steps").mkdir(exist_ok=True)
    write_parquet(pd.DataFrame({"index": test_rows, "target": list(frames["test"]["target"]),
                                "prediction": outputs["test"], "score": each["test"][primary]}), out / "predictions.parquet")
    write_parquet(pd.DataFrame(curve, columns=["step", "split", "loss", "metric"]), out / "curve.parquet")
    gen_tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in outputs["test"]]
    metrics = {"stage": "finetune", "task_kind": "generation", "task": task.name, "k": k, "seed": seed,
               "model": model, "method": method, "type": kind, "mode": info["mode"] or "none", "head": "generate",
               "metric": primary, "dev_metric": scores["dev"][primary], "test_metric": scores["test"][primary],
               "test_se": test_se, "dev_scores": scores["dev"], "test_scores": scores["test"], "dev_loss": dev_loss,
               "dev_token_acc": dev_acc, "n_trainable": count_trainable(clf), "steps": steps,
               "best_step": best_step, "model_seed": model_seed, "n_train": len(frames["train"]),
               "n_dev": len(frames["dev"]), "n_test": len(frames["test"]), "device": str(device),
               "gen_tokens_mean": sum(gen_tokens) / len(gen_tokens), "notes": notes,
               "wall_time_s": time.perf_counter() - started, "peak_mem_mb": peak_mem_mb(device)} | extra
    metrics |= dict(trial_fields)
    write_json(metrics, out / "metrics.json")
    return metrics


def _train(clf: Classifier, cfg: Mapping[str, Any], train: LMSplit, dev: LMSplit, seed: int,
           device: torch.device) -> tuple[list[dict[str, Any]], int, int]:
    """Fine-tune on the target loss with dev selection by teacher forcing; returns (curve, steps, best step)."""
    if cfg["steps"] is None:
        raise LmftError("a generation task's ft/mezo method needs steps")
    loop = LoopConfig(steps=int(cfg["steps"]), batch_size=int(cfg["batch_size"]), eval_every=int(cfg["eval_every"]),
                      eval_batch_size=int(cfg["eval_batch_size"]), save_every=0, save_steps=())

    def objective(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return target_loss(model.backbone, batch)

    common = {"total_steps": loop.steps, "lr": float(cfg["lr"]), "weight_decay": float(cfg["weight_decay"]),
              "warmup_steps": int(cfg["warmup_steps"]), "schedule": cfg["schedule"], "objective": objective}
    if cfg["type"] == "ft":
        stepper: FirstOrder | ZerothOrder = FirstOrder(clf, optimizer=cfg["optimizer"], momentum=float(cfg["momentum"]),
                                                       max_grad_norm=float(cfg["max_grad_norm"]), **common)
    else:
        stepper = ZerothOrder(clf, eps=float(cfg["eps"]), n_perturbations=int(cfg["n_perturbations"]), seed=seed,
                              **common)
    result = train_loop(clf, stepper, train, dev, "token_acc", loop, seed, device=device,
                        score_dev=lambda m, desc: teacher_forced(m, dev, loop.eval_batch_size, device, desc))
    return result.curve, result.steps, result.best_step
