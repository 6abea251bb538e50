"""The data stage (rules/data.smk): task registry, raw sources read into tables, k-shot splits."""
