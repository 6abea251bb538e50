"""The fine-tuning stage's runner for generation tasks (summarisation, QA) on a causal LM.

A method type takes part through its ``generate`` hook (:class:`lmft.finetune.methods.MethodType`):

``zeroshot``  the task's prompts as they are
``icl``       prompts after ``demos`` demonstrations of the k-shot train set
              (:func:`lmft.finetune.lm_targets.icl_prompts`; ``demos: null`` takes all k, the problem set's protocol)
``ft``        first-order fine-tuning on the target tokens (labels -100 on prompt and padding), in a
              parameter mode of :func:`lmft.models.params.select_trainable` (all, blocks, bias, norm, LoRA);
              the best dev checkpoint kept
``mezo``      the same with MeZO's zeroth-order steps

The hook returns the dev and test prompts; :func:`run_generation` decodes them greedily
(:mod:`lmft.finetune.decode`), cuts at the task's stop strings and scores them against the targets
(:mod:`lmft.finetune.textmetrics`). Dev selection inside a training loop is by teacher forcing: the target
tokens' accuracy (argmax equals the reference token) ranks checkpoints, ties to the lower target
loss, so no decoding runs in the loop. Test rows are capped like the classification runs'
(:func:`lmft.data.kshot.cap_rows`).

Writes the same run directory as :func:`lmft.finetune.stage.run_finetune`: ``metrics.json`` (``stage``
``generation``, so the aggregate sets it apart from the classification runs; ``metric`` is the task's primary score, ROUGE-L or token F1, and
``dev_metric``/``test_metric`` its values, ``test_se`` its standard error over the test examples,
``dev_scores``/``test_scores`` every score of the task metric, ``dev_loss`` and ``dev_token_acc``
the teacher-forced dev target loss and token accuracy, ``gen_tokens_mean`` the mean generated
length), ``predictions.parquet`` (``index``, ``target``, ``prediction``, ``score``),
``curve.parquet``, ``model.safetensors`` (the trained tensors, else empty) and an empty ``steps/``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lmft.data.kshot import cap_rows
from lmft.data.tasks import GenerationTask
from lmft.finetune.decode import generate_texts
from lmft.finetune.methods import GenerationJob, MethodType
from lmft.finetune.methods.base import freeze
from lmft.finetune.methods.training import selection
from lmft.finetune.textmetrics import PRIMARY, example_scores, mean_scores
from lmft.io import LmftError, read_parquet, save_tensors, write_json, write_parquet
from lmft.models.checkpoint import FORMAT, checkpoint_metadata, save_trainable
from lmft.models.heads import Classifier
from lmft.models.load import load
from lmft.models.params import count_trainable, parse_mode
from lmft.paths import EVAL_SPLITS, SPLITS
from lmft.runtime import peak_mem_mb

log = logging.getLogger(__name__)

_NO_GENERATION_MODES = ("prefix", "head")  # a prefix lives in the classifier's forward; SmolLM2's head is tied


def build_lm(model_json: Path | str, kind: MethodType, info: Mapping[str, Any]) -> tuple[Classifier, Any]:
    """The causal LM of ``model_json`` in a head-less :class:`Classifier` (what parameter modes and
    checkpoints work on), prepared by the type (``info``: mode, select, model_seed); eval mode."""
    with torch.random.fork_rng(devices=[]):  # loading draws from the RNG; keep the caller's stream
        tokenizer, backbone, manifest = load(model_json, lm_head=True)
    if manifest["kind"] != "causal":
        raise LmftError(f"{model_json}: generation tasks need a causal LM, this model is {manifest['kind']}")
    clf = Classifier(backbone, "causal", 0, causal=True,
                     notes=[f"model {manifest['source']} ({manifest['model_type']}), greedy decoding"])
    if kind.trains:
        mode, _ = parse_mode(info["mode"])
        if mode in _NO_GENERATION_MODES:
            raise LmftError(f"mode {info['mode']!r} cannot decode text; use all, last/first/middle:N, bias, norm or "
                            "lora:R for a generation task")
    (kind.prepare if kind.trains else freeze)(clf, info)
    return clf.eval(), tokenizer


def decode(job: GenerationJob, prompt_ids: list[list[int]], desc: str) -> list[str]:
    """Greedy continuations of ``prompt_ids`` by the job's model, cut at the task's stop strings, stripped."""
    log.info("decoding %s: %d prompts, up to %d new tokens", desc, len(prompt_ids), job.task.max_new_tokens)
    texts = generate_texts(job.clf.backbone, job.tokenizer, prompt_ids, max_new_tokens=job.task.max_new_tokens,
                           stop=job.task.stop, batch_size=int(job.cfg["eval_batch_size"]), device=job.device,
                           desc=f"decode {desc}")
    return [t.strip() for t in texts]


def run_generation(model_json: Path | str, task: GenerationTask, splits: Mapping[str, Path | str],
                   out_dir: Path | str, *, kind: MethodType, cfg: dict[str, Any], model: str, k: int, seed: int,
                   method: str, trial_fields: Mapping[str, Any], eval_cap: int | None,
                   device: torch.device) -> dict[str, Any]:
    """Run one job of a generation task and write its run directory (module doc); returns the metrics.

    ``cfg`` is the method's resolved settings (:func:`lmft.finetune.methods.resolve_spec`), ``trial_fields``
    the grid trial's keys for ``metrics.json``.
    """
    started = time.perf_counter()
    if kind.generate is None:
        raise LmftError(f"finetune method {method!r}: type {kind.name} does not apply to the generation task "
                        f"{task.name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_seed = seed if cfg["model_seed"] is None else int(cfg["model_seed"])
    info = {"format": FORMAT, "model": model, "task": task.name, "k": k, "seed": seed, "method": method,
            "type": kind.name, "head": "generate", "mode": cfg["mode"] if kind.trains else None,
            "select": selection(cfg) if kind.trains else {}, "model_seed": model_seed}
    clf, tokenizer = build_lm(model_json, kind, info)
    clf.to(device)
    frames = {s: read_parquet(splits[s], ["text_a", "target"]) for s in SPLITS}
    test_rows = cap_rows(len(frames["test"]), eval_cap)
    frames["test"] = frames["test"].iloc[test_rows].reset_index(drop=True)
    log.info("%s %s k=%d seed=%d %s (%s, generation): train %d, dev %d, test %d on %s", model, task.name, k, seed,
             method, kind.name, *(len(f) for f in frames.values()), device)
    if not cfg["eval_dev"] and trial_fields:
        raise LmftError(f"finetune method {method!r}: eval_dev false, but dev's scores choose among its grid trials")
    job = GenerationJob(task, frames, clf, tokenizer, cfg, device, seed, model_seed, kind.trains)
    outcome = kind.generate(job)

    primary = PRIMARY[task.metric]
    decoded = EVAL_SPLITS if cfg["eval_dev"] else ("test",)
    texts = {s: decode(job, outcome.prompts[s], s) for s in decoded}
    each = {s: example_scores(texts[s], list(frames[s]["target"]), task.metric) for s in texts}
    scores = {s: mean_scores(each[s]) for s in each}
    if "dev" not in scores:  # nothing is chosen on dev: it is not decoded
        scores["dev"] = dict.fromkeys(scores["test"], math.nan)
    test_se = float(np.std(each["test"][primary], ddof=1) / math.sqrt(len(test_rows))) if len(test_rows) > 1 else math.nan
    curve = [*outcome.curve, {"step": outcome.best_step, "split": "test", "loss": math.nan,
                              "metric": scores["test"][primary]}]
    log.info("test: %s", ", ".join(f"{key} {v:.4f}" for key, v in scores["test"].items()))

    meta = checkpoint_metadata(info | {"step": outcome.best_step})
    if count_trainable(clf):
        save_trainable(clf, out / "model.safetensors", meta)
    else:
        save_tensors({}, out / "model.safetensors", meta)
    (out / "steps").mkdir(exist_ok=True)
    write_parquet(pd.DataFrame({"index": test_rows, "target": list(frames["test"]["target"]),
                                "prediction": texts["test"], "score": each["test"][primary]}),
                  out / "predictions.parquet")
    write_parquet(pd.DataFrame(curve, columns=["step", "split", "loss", "metric"]), out / "curve.parquet")
    gen_tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts["test"]]
    metrics = {"stage": "generation", "task": task.name, "k": k, "seed": seed,
               "model": model, "method": method, "type": kind.name, "mode": info["mode"] or kind.tuned,
               "head": "generate", "metric": primary, "dev_metric": scores["dev"][primary],
               "test_metric": scores["test"][primary], "test_se": test_se, "dev_scores": scores["dev"],
               "test_scores": scores["test"], "dev_loss": outcome.dev_loss, "dev_token_acc": outcome.dev_token_acc,
               "n_trainable": count_trainable(clf), "steps": outcome.steps, "best_step": outcome.best_step,
               "model_seed": model_seed, "n_train": len(frames["train"]), "n_dev": len(frames["dev"]),
               "n_test": len(frames["test"]), "device": str(device), "gen_tokens_mean": float(np.mean(gen_tokens)),
               "notes": [*clf.notes, *outcome.notes], "wall_time_s": time.perf_counter() - started,
               "peak_mem_mb": peak_mem_mb(device)} | outcome.metrics | dict(trial_fields)
    write_json(metrics, out / "metrics.json")
    return metrics
