"""Snakemake adapter: a model source from the config -> results/models/{model}/model.json."""

import logging
from pathlib import Path

from lmft.models.load import prepare
from lmft.runtime import run_script


def main(smk):
    out = Path(smk.output[0])
    manifest = prepare(smk.params.source, out.parent)
    log = logging.getLogger("lmft.prepare_model")
    log.info("model %s: source %s -> %s", smk.wildcards.model, manifest["source"], manifest["path"])
    log.info("kind %s (%s), %d parameters, prepared in %.1f s", manifest["kind"], manifest["model_type"],
             manifest["n_params"], manifest["prepare_s"])
    for note in manifest["notes"]:
        log.info("note: %s", note)


run_script(main, snakemake)  # noqa: F821
