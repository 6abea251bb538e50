"""The data stage's part of the plan (:mod:`lmft.plan`): each task's config entry, its raw files, and the
k-shot splits with their settings.

Every key of ``kshot:`` and its default is in the config schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmft.data.kshot import balances_test
from lmft.data.raw import source_files
from lmft.data.tasks import BUILTIN, get_task
from lmft.paths import kshot_files


def task_config(config: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The part of the config that defines one task (a param of its jobs): its change reruns that
    task's jobs only."""
    entry: dict[str, Any] = {"user_tasks": {}, "task_overrides": {}}
    for key in ("user_tasks", "task_overrides"):
        if task in config[key]:
            entry[key][task] = config[key][task]
    if get_task(task, config).source.get("kind") == "snli":
        entry["snli_source"] = config["snli_source"]
    return entry


def raw_inputs(config: Mapping[str, Any], task: str) -> list[str]:
    """The local files the download job of ``task`` reads (:func:`lmft.data.raw.source_files`)."""
    return source_files(get_task(task, config), Path(config["data_dir"]), dict(config))


def generation_tasks(config: Mapping[str, Any]) -> list[str]:
    """Every generation task the config can name (built-in and the user's): their k-shot splits hold
    k examples, not k per label (rule ``kshot_examples``), and their runs fill the generation table."""
    return sorted(t for t in [*BUILTIN, *config["user_tasks"]] if get_task(t, config).kind == "generation")


def kshot_settings(config: Mapping[str, Any], task: str) -> dict[str, Any]:
    """What a k-shot job of ``task`` depends on (its rule's params): the test cap, and whether its test set
    is balanced (a per-task bool, so that changing ``test_balance`` reruns only the tasks it flips)."""
    kshot = config["kshot"]
    return {"test_cap": kshot["test_cap"], "test_balance": balances_test(task, kshot["test_balance"])}


def kshot_targets(config: Mapping[str, Any]) -> list[str]:
    """Every k-shot file of the config's tasks, k and seeds."""
    kshot = config["kshot"]
    return [f for t in config["tasks"] for k in kshot["k"] for s in kshot["seeds"]
            for f in kshot_files(config["data_dir"], t, k, s).values()]
