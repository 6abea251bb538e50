"""The data stage (rules/data.smk): each task's raw data read into tables, then its k-shot splits.

:func:`run_download` reads a task's source (:mod:`lmft.data.raw`) into ``data/raw/{task}/{train,test}.parquet``
and ``source.json``; :func:`run_download_lmbff` fetches LM-BFF's packed original data once for the
tasks that read it. :func:`run_kshot` makes LM-BFF's k-shot splits of a classification task
(:mod:`lmft.data.kshot`), :func:`run_kshot_examples` the k-example splits of a generation task, both
``data/kshot/{task}/{k}-{seed}/{train,dev,test}.parquet`` with ``info.json``. :mod:`lmft.data.plan`
plans the jobs and resolves their settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmft.data.download import LMBFF_URL, extract_tar, fetch_or_reuse
from lmft.data.kshot import (cap_test, cap_test_examples, examples_info, kshot_examples, kshot_split,
                             split_info)
from lmft.data.raw import GENERATION_COLUMNS, load_raw
from lmft.data.tasks import get_task
from lmft.io import PathLike, read_json, read_parquet, write_json, write_parquet
from lmft.paths import SPLITS

log = logging.getLogger(__name__)


def run_download_lmbff(archive: PathLike, out_dir: PathLike) -> None:
    """Fetch (or reuse) LM-BFF's ``datasets.tar`` at ``archive`` and unpack its ``original/`` as ``out_dir``."""
    out = Path(out_dir)
    fetch_or_reuse(LMBFF_URL, Path(archive), "lm-bff tasks")
    extract_tar(Path(archive), out.parent / "_extract")
    (out.parent / "_extract" / "original").rename(out)
    (out.parent / "_extract").rmdir()


def run_download(task: str, task_config: Mapping[str, Any], data_dir: PathLike, out: Mapping[str, PathLike]) -> None:
    """Read ``task``'s raw data (its definition in ``task_config``, :func:`lmft.data.plan.task_config`) into
    ``out["train"]``, ``out["test"]`` (parquet) and ``out["source"]`` (what was read, JSON)."""
    train, test, info = load_raw(get_task(task, task_config), Path(data_dir), task_config)
    write_parquet(train, out["train"])
    write_parquet(test, out["test"])
    write_json(info, out["source"])


def run_kshot(task: str, k: int, seed: int, raw: Mapping[str, PathLike], out: Mapping[str, PathLike], *,
              test_cap: int | None, test_balance: bool) -> None:
    """The k-shot splits of a classification task from its raw ``train``/``test``/``source`` files:
    k per label for train and dev (:func:`lmft.data.kshot.kshot_split`), the test set capped at
    ``test_cap`` rows, balanced by label where ``test_balance`` (else in the source's style)."""
    cols = ["text_a", "text_b", "label"]
    train, test = read_parquet(raw["train"], cols), read_parquet(raw["test"], cols)
    style = "balanced" if test_balance else read_json(raw["source"])["test_cap_style"]
    labels = sorted(set(train["label"]) | set(test["label"]))
    tr, dev = kshot_split(train, k, seed, task=task)
    capped = cap_test(test, test_cap, style, labels)
    info = split_info({"train": tr, "dev": dev, "test": capped}, labels, style, test_cap, len(test))
    log.info("%s %s-%s: test %s of %d rows, per label %s (majority baseline %.3f)", task, k, seed, style, len(test),
             info["label_counts"]["test"], info["majority_baseline"])
    _write_splits({"train": tr, "dev": dev, "test": capped}, info, out)


def run_kshot_examples(task: str, k: int, seed: int, raw: Mapping[str, PathLike], out: Mapping[str, PathLike], *,
                       test_cap: int | None) -> None:
    """The k-example splits of a generation task (:func:`lmft.data.kshot.kshot_examples`), the test set
    capped at ``test_cap`` rows."""
    train, test = read_parquet(raw["train"], GENERATION_COLUMNS), read_parquet(raw["test"], GENERATION_COLUMNS)
    tr, dev = kshot_examples(train, k, seed, task=task)
    capped = cap_test_examples(test, test_cap)
    info = examples_info({"train": tr, "dev": dev, "test": capped}, test_cap, len(test))
    log.info("%s %s-%s: %s; test %d of %d rows", task, k, seed, info["counts"], len(capped), len(test))
    _write_splits({"train": tr, "dev": dev, "test": capped}, info, out)


def _write_splits(splits: Mapping[str, Any], info: Mapping[str, Any], out: Mapping[str, PathLike]) -> None:
    for name in SPLITS:
        write_parquet(splits[name], out[name])
    write_json(dict(info), out["info"])
