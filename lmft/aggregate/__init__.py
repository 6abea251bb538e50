"""The aggregate stage (rules/aggregate.smk): the runs gathered into tables, plots, findings and the report."""
