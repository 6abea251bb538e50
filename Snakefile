# lmft: one reproducible workflow from raw data to paper tables. See README.md and rules/*.smk.
from snakemake.utils import min_version, validate

min_version("9.0")

if not config:  # no --configfile / --config: run the embedded default
    configfile: "config.yaml"

validate(config, "workflow/schemas/config.schema.yaml")

include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
# stage rules files go here; aggregate.smk reads what they register, so it comes last
include: "rules/aggregate.smk"

report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
