"""Snakemake adapter: a model source from the plan -> results/models/{model}/model.json."""

from lmft.models.stage import run_prepare
from lmft.runtime import run_script


def main(smk):
    run_prepare(smk.wildcards.model, smk.params.source, smk.output[0])


run_script(main, snakemake)  # noqa: F821
