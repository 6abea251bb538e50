"""The per-example files behind the runs' scores, aligned for paired comparisons.

Every scored run leaves its test predictions beside its ``metrics.json`` (the aggregate rule
declares them as inputs, :func:`lmft.paths.evidence_files`):

``predictions.parquet``
    finetune and kernel-solve runs: ``index`` (row of the split), ``label``, ``pred``, ``probs``;
    generation runs: ``index``, ``score`` (the primary score of each test example); graft runs: the
    graft's rows with ``model`` = ``graft`` and ``split`` = ``test`` or ``ood:{task}``, and the
    reference evaluation of the same fine-tuning run (``../reference/predictions.parquet``: the
    ``pre`` and ``ft`` rows).
``losses.parquet``
    interpolation pairs: ``alpha``, ``split``, ``index``, ``loss``, ``correct``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmft.aggregate.estimates import Estimate
from lmft.io import LmftError, read_parquet
from lmft.paths import GRAFT_REFERENCE as REFERENCE
from lmft.paths import LOSSES, PREDICTIONS


class Missing(Exception):
    """A file a comparison needs is not there (older runs): the finding is "not measured"."""


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise Missing(f"{path} is missing (rerun the job that writes it)")
    return read_parquet(path)


def predictions(row: Mapping[str, Any]) -> pd.DataFrame:
    """A finetune, generation or kernel run's test predictions."""
    return _read(Path(row["path"]).with_name(PREDICTIONS))


def graft_predictions(row: Mapping[str, Any], model: str, split: str = "test") -> pd.DataFrame:
    """The ``model`` (``graft``, ``pre`` or ``ft``) rows of a graft run's ``split`` (``test``, ``ood:{task}``)."""
    here = Path(row["path"]).parent
    frame = _read(here / PREDICTIONS if model == "graft" else here.parent / REFERENCE / PREDICTIONS)
    part = frame[(frame["model"] == model) & (frame["split"] == split)]
    if part.empty:
        raise Missing(f"no {model} predictions on {split} in {here}")
    return part.drop(columns=["model", "split"]).reset_index(drop=True)


def losses(row: Mapping[str, Any], split: str = "test") -> pd.DataFrame:
    """An interpolation pair's per-example losses on ``split``: ``alpha``, ``index``, ``loss``, ``correct``."""
    frame = _read(Path(row["path"]).with_name(LOSSES))
    part = frame[frame["split"] == split]
    if part.empty:
        raise Missing(f"no {split} losses in {Path(row['path']).with_name(LOSSES)}")
    return part.drop(columns=["split"]).reset_index(drop=True)


def by_seed(e: Estimate, load: Callable[[Mapping[str, Any]], pd.DataFrame]) -> dict[int, pd.DataFrame]:
    """Each seed's frame of an estimate's runs."""
    return {int(r["seed"]): load(r) for r in e.rows}


def aligned(sides: Mapping[str, Mapping[int, pd.DataFrame]]) -> list[dict[str, pd.DataFrame]]:
    """Per seed that every side has, each side's frame restricted to the test examples all share,
    in ``index`` order. Raises :class:`Missing` when the sides share no seed or no example, and
    :class:`LmftError` when two sides give one example different labels (different test sets)."""
    seeds = sorted(reduce(set.intersection, (set(v) for v in sides.values())))
    if not seeds:
        ran = "; ".join(f"{n}: seeds {sorted(v)}" for n, v in sides.items())
        raise Missing(f"the runs share no data seed ({ran})")
    out = []
    for s in seeds:
        frames = {n: v[s] for n, v in sides.items()}
        common = reduce(np.intersect1d, [f["index"].to_numpy() for f in frames.values()])
        if common.size == 0:
            raise Missing(f"seed {s}: the runs share no test example")
        part = {n: f.set_index("index").loc[common].reset_index() for n, f in frames.items()}
        labelled = [f["label"].to_numpy() for f in part.values() if "label" in f.columns]
        if any(not np.array_equal(labelled[0], x) for x in labelled[1:]):
            raise LmftError(f"findings: seed {s}: the compared runs give the same test rows different labels "
                            f"({', '.join(part)}); they were not scored on one test set")
        out.append(part)
    return out
