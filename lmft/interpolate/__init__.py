"""The interpolation stage (rules/interpolate.smk): linear mode connectivity between checkpoints."""
