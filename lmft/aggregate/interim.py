"""Interim tables of a run that has not finished: the aggregate on the runs it has written so far.

    python -m lmft.aggregate.interim [RUN_DIR] [--configfile CONFIG ...] [--out DIR]
    make findings-interim        (config/findings.yaml's run in this folder)

A long configuration (``config/findings.yaml``: hours on 2 cores) can be read before it ends. The
jobs the configuration plans (:class:`lmft.plan.Plan`) whose ``metrics.json`` exists in ``RUN_DIR``
go through the aggregate stage (:func:`lmft.aggregate.stage.aggregate`) with the same rule as the
final tables, the topics limited to the stages that have finished runs; a claim whose runs are
missing reads "not measured". Only finished runs count: a job writes its ``metrics.json`` last,
atomically. The tables go to ``OUT`` (default ``RUN_DIR/results/interim``), never to
``results/tables``, which only the finished run's aggregate job writes. Several config files are
merged as Snakemake merges ``--configfile`` (later files update nested keys, lists replaced).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lmft.aggregate.coverage import merged
from lmft.aggregate.stage import aggregate
from lmft.aggregate.topics import topics_for
from lmft.config import check_config, validate_schema
from lmft.io import LmftError
from lmft.plan import Plan


def read_configs(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The config files merged in order, validated (defaults filled in) and checked."""
    config: dict[str, Any] = {}
    for path in paths:
        config = merged(config, yaml.safe_load(Path(path).read_text()) or {})
    validate_schema(config)
    check_config(config)
    return config


def interim(config: dict[str, Any], run_dir: str | Path, out: str | Path) -> list[Path]:
    """Aggregate the finished runs of ``config`` in ``run_dir`` into ``out`` (``runs.parquet``, ``tables/``,
    ``plots/``); returns the files written. Raises :class:`LmftError` when no run has finished."""
    root, out = Path(run_dir), Path(out)
    plan = Plan(config)
    metrics = {stage: [root / f for f in files if (root / f).exists()] for stage, files in plan.metrics.items()}
    done = {stage for stage, files in metrics.items() if files}
    if not done:
        raise LmftError(f"{root}: no finished run of this configuration yet (none of its jobs' metrics.json exists); "
                        "run it first (e.g. make findings)")
    curves = [root / f for f in plan.curves if (root / f).exists()]
    zo = [root / f for f in plan.zo_curves if (root / f).exists()]
    files = sorted({f for fs in metrics.values() for f in fs})
    total = len({f for fs in plan.metrics.values() for f in fs})
    print(f"interim: {len(files)} of the {total} runs this configuration plans have finished")
    return aggregate(files, curves, out / "runs.parquet", out / "tables", out / "plots", topics_for(done, zo=bool(zo)),
                     labels=plan.aggregate_settings["labels"], task_order=plan.aggregate_settings["task_order"],
                     pair_kinds=plan.pair_kinds, zo_curves=zo)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", nargs="?", default=".", help="the run's folder (Snakemake's working directory)")
    ap.add_argument("--configfile", nargs="+", default=["config/findings.yaml"], help="as given to snakemake")
    ap.add_argument("--out", help="where the tables go (default RUN_DIR/results/interim)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.run_dir) / "results" / "interim"
    try:
        interim(read_configs(args.configfile), args.run_dir, out)
    except LmftError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"interim tables: {out / 'tables'} (findings.md), plots: {out / 'plots'}")


if __name__ == "__main__":
    main()
