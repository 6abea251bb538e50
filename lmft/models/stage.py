"""The models stage (rules/models.smk): each configured model resolved once into a plain Hugging Face
folder and its ``results/models/{model}/model.json`` manifest (:func:`lmft.models.load.prepare`).

:mod:`lmft.models.plan` gives each model's source; the other stages load the prepared folder
through the manifest (:func:`lmft.models.load.load`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lmft.io import PathLike
from lmft.models.load import prepare

log = logging.getLogger(__name__)


def run_prepare(model: str, source: str, manifest: PathLike) -> dict[str, Any]:
    """Prepare ``model`` from ``source`` into the folder of ``manifest`` (its ``model.json``); returns the manifest."""
    out = prepare(source, Path(manifest).parent)
    log.info("model %s: source %s -> %s", model, out["source"], out["path"])
    log.info("kind %s (%s), %d parameters, prepared in %.1f s", out["kind"], out["model_type"], out["n_params"],
             out["prepare_s"])
    for note in out["notes"]:
        log.info("note: %s", note)
    return out
