"""The models stage's part of the plan (:mod:`lmft.plan`): the source each configured model is prepared from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmft.io import LmftError


def model_source(config: Mapping[str, Any], model: str) -> str:
    """The source of ``model`` (a hub id, a local folder or ``embedded:NAME``; :mod:`lmft.models.load`)."""
    models = config.get("models") or {}
    if model not in models:
        raise LmftError(f"config: models has no {model!r}; one of {sorted(models)}")
    return models[model]["source"]
