"""The kernel stage (rules/kernels.smk): eNTK shards, merged kernels and kernel solvers."""
