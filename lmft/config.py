"""The workflow's config: validated against the schema (:mod:`lmft.schema`), and checks beyond it.

:func:`validate_schema` fills the schema's defaults in as Snakemake's ``validate(config, schema)``
does, so a library user who loads a config with :func:`load_config` gets the same values as a
workflow run; :func:`check_config` checks what a schema cannot (task names, models, method types).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lmft.data.tasks import BUILTIN, get_task
from lmft.io import LmftError
from lmft.schema import SCHEMA, raise_first, validator


def validate_schema(config: dict[str, Any], schema_path: Path = SCHEMA) -> None:
    """Validate ``config`` with the workflow's schema and fill its defaults in, as Snakemake does, then
    each ``finetune.methods`` entry with its type's schema (:mod:`lmft.finetune.methods`; plugins loaded)."""
    raise_first(validator(schema_path).iter_errors(config))
    _check_methods(config, resolve=False)


def check_config(config: dict[str, Any]) -> None:
    """Check that every task name resolves, that generation tasks are only where they can go, and
    that every model a section names is declared."""
    for name in config.get("tasks", []):
        get_task(name, config)
    for name in config.get("user_tasks") or {}:
        get_task(name, config)
    for name in config.get("task_overrides") or {}:
        get_task(name, config)
    _check_generation_tasks(config)
    models = set(config.get("models") or {})
    for name in ("finetune", "kernels", "graft", "interpolate"):
        sec = config.get(name) or {}
        for entry_name, entry in (sec.get("methods") or {}).items():
            for m in (entry or {}).get("models") or []:
                if m not in models:
                    raise LmftError(f"config: {name}.methods.{entry_name}.models names {m!r}, "
                                    f"not one of models: {sorted(models)}")
    for m in (config.get("memory") or {}).get("models") or []:
        if m not in models:
            raise LmftError(f"config: memory.models names {m!r}, not one of models: {sorted(models)}")
    _check_methods(config, resolve=True)


def _check_methods(config: Mapping[str, Any], resolve: bool) -> None:
    """Check each ``finetune.methods`` entry against its type (the config's plugins loaded): its values,
    or (``resolve``) its keys, values and grid lists (:func:`lmft.finetune.methods.resolve_spec`)."""
    methods = (config.get("finetune") or {}).get("methods") or {}
    if methods:
        from lmft.finetune.methods import check_values, load_plugins, resolve_spec  # heavy (torch): only where needed

        load_plugins(config)
        for name, spec in methods.items():
            (resolve_spec if resolve else check_values)(spec, name)


def _classification_only(config: dict[str, Any]) -> list[tuple[str, list[str], bool]]:
    """(config key, task names, whether the key is unset) wherever a stage that only classification
    tasks go through (kernels, graft, interpolate, memory) takes tasks; an unset key takes every task of the
    config, as the stages resolve it."""
    every = list(config.get("tasks") or [])
    out = []
    if (kernels := config.get("kernels")) is not None:
        unset = kernels.get("tasks") is None
        out.append(("kernels.tasks", every if unset else kernels["tasks"], unset))
    if (graft := config.get("graft")) is not None:
        out.append(("graft.tasks", graft.get("tasks") or every, not graft.get("tasks")))
        out += [(f"graft.ood.{task}", [task, *others], False) for task, others in (graft.get("ood") or {}).items()]
    if (memory := config.get("memory")) is not None and memory.get("tasks"):  # unset: the classification tasks
        out.append(("memory.tasks", memory["tasks"], False))
    for pair, spec in ((config.get("interpolate") or {}).get("pairs") or {}).items():
        ends = {end: e["task"] for end in ("a", "b") if isinstance(e := spec.get(end), dict) and e.get("task")}
        out += [(f"interpolate.pairs.{pair}.{end}.task", [task], False) for end, task in ends.items()]
        out.append((f"interpolate.pairs.{pair}.tasks", spec.get("tasks") or list(ends.values()) or every,
                    not (spec.get("tasks") or ends)))
    return out


def _check_generation_tasks(config: dict[str, Any]) -> None:
    """Generation tasks have no labels: no kernels, grafts, interpolations or balanced test sets."""
    known = set(BUILTIN) | set(config.get("user_tasks") or {})  # unknown names are the stages' own errors

    def generation(names: list[str]) -> list[str]:
        return [n for n in names if n in known and get_task(n, config).kind == "generation"]

    for key, names, unset in _classification_only(config):
        if gen := generation(names):
            where = f"{key} is unset, so it takes every task of the config, including" if unset else f"{key} names"
            fix = f"set {key} to the classification tasks" if unset else "name classification tasks only"
            raise LmftError(f"config: {where} the generation task(s) {gen}; kernels, grafts, interpolations and "
                            f"memory measurements are for classification tasks only: {fix}")
    balance = (config.get("kshot") or {}).get("test_balance")
    if isinstance(balance, list) and (gen := generation(balance)):
        raise LmftError(f"config: kshot.test_balance names the generation task(s) {gen}, which have no labels to "
                        "balance; their capped test set is a fixed random subset (see lmft/data/kshot.py)")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read, schema-validate (defaults filled in) and check a config file (for use outside Snakemake)."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    validate_schema(config)
    check_config(config)
    return config
