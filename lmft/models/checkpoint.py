"""Checkpoints of the trainable part of a Classifier (safetensors), and tensor states by name.

A checkpoint holds only the parameters with ``requires_grad=True`` (for LoRA: the adapters and
the linear head, if any), under their ``named_parameters`` names, plus string metadata (mode,
head, source, task, ...). To reload it, build the same classifier, apply the same mode with
:func:`lmft.models.params.select_trainable`, then :func:`load_trainable`: the frozen rest comes from
the pre-trained model, which is why the checkpoint stays small.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmft.io import ArtifactError, LmftError, load_tensor_metadata, load_tensors, save_tensors

FORMAT = 2  # version of the checkpoint metadata (2: the cls head's pooling)


def trainable_state(clf: nn.Module) -> dict[str, Tensor]:
    """The trainable tensors by name, detached copies in ``named_parameters`` order."""
    return {name: p.detach().clone() for name, p in clf.named_parameters() if p.requires_grad}


def apply_state(clf: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` (name -> tensor) into ``clf``'s parameters of the same names, in place.

    Any subset of parameters may be given (grafting and interpolation write tuned tensors onto a
    pre-trained classifier); an unknown name or a shape mismatch raises :class:`LmftError`.
    """
    params = dict(clf.named_parameters())
    unknown = [k for k in state if k not in params]
    if unknown:
        raise LmftError(f"state names not in the classifier: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(params[k].shape)}" for k, v in state.items() if v.shape != params[k].shape]
    if bad:
        raise LmftError(f"state shapes differ from the classifier's: {bad[:5]}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def save_trainable(clf: nn.Module, path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """Write the trainable tensors of ``clf`` to ``path`` (safetensors, atomic) with string ``metadata``."""
    state = trainable_state(clf)
    if not state:
        raise LmftError("the classifier has no trainable parameters to save; call lmft.models.params.select_trainable first")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta["n_trainable"] = str(sum(v.numel() for v in state.values()))
    save_tensors(state, path, metadata=meta)


def load_trainable(clf: nn.Module, path: Path | str) -> dict[str, str]:
    """Load a :func:`save_trainable` checkpoint onto ``clf`` (same model, head and mode); return its metadata.

    The checkpoint's names must equal ``clf``'s trainable names and the shapes must match, else
    :class:`ArtifactError` names the file and the difference.
    """
    tensors = load_tensors(path)
    meta = load_tensor_metadata(path)
    expected = {name: p for name, p in clf.named_parameters() if p.requires_grad}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ArtifactError(f"{path}: checkpoint does not fit the classifier (mode {meta.get('mode', '?')!r} in the "
                            f"file): missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected "
                            f"{extra[:3]}{' ...' if len(extra) > 3 else ''}; build it with the same model, head "
                            "and select_trainable mode")
    bad = [f"{k} {tuple(tensors[k].shape)} vs {tuple(p.shape)}" for k, p in expected.items()
           if tensors[k].shape != p.shape]
    if bad:
        raise ArtifactError(f"{path}: tensor shapes differ from the classifier's: {bad[:3]}")
    apply_state(clf, {k: tensors[k].to(expected[k].dtype) for k in expected})
    return meta


def checkpoint_metadata(info: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors metadata of a run's checkpoint: ``info`` as JSON under ``lmft`` (what
    :func:`lmft.finetune.runs.load_run` rebuilds from) and a few keys readable at a glance."""
    return {"lmft": json.dumps(info, sort_keys=True), "mode": str(info["mode"]), "head": info["head"],
            "task": info["task"], "method": info["method"]}
