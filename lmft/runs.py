"""What the stages share about fine-tuning runs: the job's device and memory, the
tokenisation, and rebuilding a finished run from its run directory.

The fine-tuning stage (:mod:`lmft.finetune.stage`) writes the runs; grafting, interpolation and the
kernel stage read them, or cap and tokenise their data the same way, through this module.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lmft.models.batching import encode_frame, label_ids, pad_id
from lmft.models.checkpoint import load_trainable
from lmft.models.evaluate import Split
from lmft.models.heads import Classifier, build_classifier
from lmft.io import ArtifactError, LmftError, load_tensor_metadata
from lmft.data.tasks import Task
from lmft.data.templates import Encoded

FORMAT = 2  # version of the checkpoint metadata (2: the cls head's pooling)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LmftError(f"device {device!r} requested but torch sees no CUDA GPU")
    return torch.device(device)


def peak_mem_mb(device: torch.device) -> float:
    """Peak memory of the job: CUDA memory allocated on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def encode_plain(df: pd.DataFrame, tokenizer: Any, max_length: int) -> list[Encoded]:
    """No-prompt input ``[CLS] a [SEP] (b [SEP])`` (the tokenizer's own pair format), truncated longest first.

    ``mask_pos`` is 0: the ``cls`` head of an encoder reads the first token.
    """
    text_b = df["text_b"].tolist() if "text_b" in df.columns else [None] * len(df)
    out = []
    for a, b in zip(df["text_a"].tolist(), text_b):
        b = None if b is None or (isinstance(b, float) and math.isnan(b)) else str(b)
        enc = tokenizer(str(a), b, truncation=True, max_length=max_length)
        types = enc.get("token_type_ids") or [0] * len(enc["input_ids"])
        out.append(Encoded(list(enc["input_ids"]), list(types), 0))
    return out


def uses_prompt(clf: Classifier, prompt: bool | None) -> bool:
    """Whether inputs are rendered with the task's template (always, except a cls head on an encoder)."""
    if clf.head != "cls" or clf.causal:
        return True
    return bool(prompt)


def encode_split(df: pd.DataFrame, task: Task, tokenizer: Any, clf: Classifier, *, prompt: bool | None = None,
                 max_length: int | None = None, name: str = "split") -> Split:
    """Tokenise a k-shot table for ``clf`` the way the fine-tuning stage does (see :mod:`lmft.finetune.stage`)."""
    max_length = max_length or task.max_length
    if clf.causal:
        items = encode_frame(df, task, tokenizer, causal=True, max_length=max_length)
    elif uses_prompt(clf, prompt):
        items = encode_frame(df, task, tokenizer, max_length=max_length)
    else:
        items = encode_plain(df, tokenizer, max_length)
    return Split(items, label_ids(df, task), pad_id(tokenizer), name)


def build_for_run(model_json: Path | str, task: Task, info: Mapping[str, Any]) -> tuple[Classifier, Any]:
    """Build the classifier of a run from its settings (``info``: type, head, mode, select, model_seed),
    prepared as its method type prepares it (:mod:`lmft.finetune.methods`).

    The cls head and LoRA's A matrices initialise from ``model_seed``, so a training run starts
    from the same weights as this rebuild.
    """
    from lmft.finetune.methods import get_type  # deferred: the method types build on this module

    clf, tokenizer = build_classifier(model_json, task, info["head"], seed=info["model_seed"], pooling=info["pooling"])
    get_type(info["type"]).prepare(clf, info)
    return clf, tokenizer


def checkpoint_metadata(info: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors metadata of a run's checkpoint: ``info`` as JSON under ``lmft`` (what :func:`load_run`
    rebuilds from) and a few keys readable at a glance."""
    return {"lmft": json.dumps(info, sort_keys=True), "mode": str(info["mode"]), "head": info["head"],
            "task": info["task"], "method": info["method"]}


@dataclass
class LoadedRun:
    """A finished run rebuilt: the classifier (eval mode, tuned tensors loaded), its tokenizer and settings."""

    clf: Classifier
    tokenizer: Any
    info: dict[str, Any]

    def split(self, df: pd.DataFrame, task: Task, name: str = "split") -> Split:
        """Tokenise ``df`` as the run did (not for ``icl`` runs, whose prompts depend on demonstrations)."""
        return encode_split(df, task, self.tokenizer, self.clf, prompt=self.info["prompt"],
                            max_length=self.info["max_length"], name=name)


def load_run(model_json: Path | str, task: Task, run_dir: Path | str, step: int | None = None) -> LoadedRun:
    """Rebuild a run of :func:`lmft.finetune.stage.run_finetune` from ``run_dir``: its best checkpoint, or
    ``steps/step-{step}``."""
    run_dir = Path(run_dir)
    path = run_dir / "model.safetensors" if step is None else run_dir / "steps" / f"step-{step}.safetensors"
    meta = load_tensor_metadata(path)
    if "lmft" not in meta:
        raise ArtifactError(f"{path}: no 'lmft' metadata; not a checkpoint of the finetune stage")
    info = json.loads(meta["lmft"])
    if info.get("format") != FORMAT:
        raise ArtifactError(f"{path}: checkpoint format {info.get('format')!r}, expected {FORMAT}; rerun the job")
    if info["task"] != task.name:
        raise LmftError(f"{path}: a checkpoint of task {info['task']!r}, not {task.name!r}")
    clf, tokenizer = build_for_run(model_json, task, info)
    load_trainable(clf, path)
    return LoadedRun(clf.eval(), tokenizer, info)


def load_finetuned(model_json: Path | str, task: Task, run_dir: Path | str, step: int | None = None) -> Classifier:
    """The classifier of a finished run (eval mode); ``step`` picks a ``save_steps`` checkpoint instead of the best.

    For ``zeroshot`` and ``icl`` runs this is the untouched pre-trained classifier.
    """
    return load_run(model_json, task, run_dir, step).clf
