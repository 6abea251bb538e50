"""The models stage (rules/models.smk) and what every stage does with a model: load, heads, parameters,
evaluation, losses, checkpoints."""
