"""Config checks beyond the JSON schema: names that must refer to something."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lmft.io import LmftError
from lmft.tasks import get_task

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def validate_schema(config: dict[str, Any], schema_path: Path = SCHEMA) -> None:
    """Validate ``config`` with the workflow's schema (as Snakemake does), then each ``finetune.methods``
    entry with its type's schema (:mod:`lmft.methods`; plugins loaded)."""
    check_against(yaml.safe_load(schema_path.read_text()), config)
    _check_methods(config, resolve=False)


def check_against(schema: Mapping[str, Any], instance: Any, where: str = "") -> None:
    """Raise the first error (by path) of ``instance`` under the JSON ``schema``, as ``config: {where}.{path}: ...``;
    a value outside an ``enum`` is named as unknown, with the choices."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        path = ".".join(str(p) for p in e.absolute_path)
        message = e.message
        if e.validator == "enum":
            message = f"unknown {path or 'value'} {e.instance!r}; one of {', '.join(map(str, e.validator_value))}"
        raise LmftError(f"config: {'.'.join(p for p in (where, path) if p) or '(top level)'}: {message}")


def check_config(config: dict[str, Any]) -> None:
    """Check that every task name resolves and every model a section names is declared."""
    for name in config.get("tasks", []):
        get_task(name, config)
    for name in config.get("user_tasks") or {}:
        get_task(name, config)
    for name in config.get("task_overrides") or {}:
        get_task(name, config)
    models = set(config.get("models") or {})
    for section in ("finetune", "kernels", "graft", "interpolate"):
        sec = config.get(section) or {}
        for entry_name, entry in (sec.get("methods") or {}).items():
            for m in (entry or {}).get("models") or []:
                if m not in models:
                    raise LmftError(f"config: {section}.methods.{entry_name}.models names {m!r}, "
                                    f"not one of models: {sorted(models)}")
    _check_methods(config, resolve=True)


def _check_methods(config: Mapping[str, Any], resolve: bool) -> None:
    """Check each ``finetune.methods`` entry against its type (the config's plugins loaded): its values,
    or (``resolve``) its keys, values and grid lists (:func:`lmft.methods.resolve_spec`)."""
    methods = (config.get("finetune") or {}).get("methods") or {}
    if methods:
        from lmft.methods import check_values, load_plugins, resolve_spec  # heavy (torch): only where needed

        load_plugins(config)
        for name, spec in methods.items():
            (resolve_spec if resolve else check_values)(spec, name)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read, schema-validate and check a config file (for use outside Snakemake)."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    validate_schema(config)
    check_config(config)
    return config
