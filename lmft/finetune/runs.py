"""Rebuilding a finished fine-tuning run from its run directory: the classifier, its tokenizer and settings.

The fine-tuning stage (:mod:`lmft.finetune.stage`) writes the runs; grafting, interpolation and the
memory job rebuild them here, from the checkpoint's metadata (:func:`lmft.models.checkpoint.checkpoint_metadata`)
and the method type's ``prepare`` (:mod:`lmft.finetune.methods`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lmft.data.tasks import Task
from lmft.finetune.methods import get_type
from lmft.io import ArtifactError, LmftError, load_tensor_metadata
from lmft.models.checkpoint import FORMAT, load_trainable
from lmft.models.encode import encode_split
from lmft.models.evaluate import Split
from lmft.models.heads import Classifier, build_classifier


def build_for_run(model_json: Path | str, task: Task, info: Mapping[str, Any]) -> tuple[Classifier, Any]:
    """Build the classifier of a run from its settings (``info``: type, head, mode, select, model_seed),
    prepared as its method type prepares it (:mod:`lmft.finetune.methods`).

    The cls head and LoRA's A matrices initialise from ``model_seed``, so a training run starts
    from the same weights as this rebuild.
    """
    clf, tokenizer = build_classifier(model_json, task, info["head"], seed=info["model_seed"], pooling=info["pooling"])
    get_type(info["type"]).prepare(clf, info)
    return clf, tokenizer


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
