# lmft: one reproducible workflow from raw data to paper tables. See README.md and rules/*.smk.
from snakemake.utils import min_version, validate

min_version("9.0")

if not config:  # no --configfile / --config: run the embedded default
    configfile: "config.yaml"

validate(config, "workflow/schemas/config.schema.yaml")

# common.smk first: it plans every job (PLAN); the stages' rules files read the plan, in any order
include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/finetune.smk"
include: "rules/kernels.smk"
include: "rules/graft.smk"
include: "rules/interpolate.smk"
include: "rules/aggregate.smk"

report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        PLAN.targets,
