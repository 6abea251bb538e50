"""The workflow's config: the JSON schema (every key and its default), and checks beyond it.

The schema (``workflow/schemas/config.schema.yaml``) is the one place that gives a key its default.
:func:`validate_schema` fills them in as Snakemake's ``validate(config, schema)`` does (a key's
``default`` is set where the key is missing, level by level, in the schema's order), so a library
user who loads a config with :func:`load_config` gets the same values as a workflow run;
:func:`with_defaults` fills them into a copy without validating, for the planners (:mod:`lmft.plan`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from lmft.io import LmftError
from lmft.tasks import get_task

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def _validator(schema_path: Path) -> Any:
    """A validator of the schema at ``schema_path`` that sets each missing key's default before it
    validates the object's properties (jsonschema's FAQ recipe, which Snakemake's ``validate`` uses)."""
    import jsonschema

    schema = yaml.safe_load(schema_path.read_text())
    base = jsonschema.validators.validator_for(schema)
    check_properties = base.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))  # the schema's own stays as it is
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})(schema)


def validate_schema(config: dict[str, Any], schema_path: Path = SCHEMA) -> None:
    """Validate ``config`` with the workflow's schema and fill its defaults in, as Snakemake does."""
    errors = sorted(_validator(schema_path).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise LmftError(f"config: {where}: {e.message}")


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with the schema's defaults filled in, valid or not (checking it is
    :func:`validate_schema`'s job); a config that Snakemake validated comes back equal."""
    out = copy.deepcopy(dict(config))
    for _ in _validator(SCHEMA).iter_errors(out):  # the walk over the schema sets the defaults
        pass
    return out


def section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config's section ``name`` with the schema's defaults, also where the config has none."""
    return with_defaults({name: config.get(name) or {}})[name]


def check_config(config: dict[str, Any]) -> None:
    """Check that every task name resolves and every model a section names is declared."""
    for name in config.get("tasks", []):
        get_task(name, config)
    for name in config.get("user_tasks") or {}:
        get_task(name, config)
    for name in config.get("task_overrides") or {}:
        get_task(name, config)
    models = set(config.get("models") or {})
    for name in ("finetune", "kernels", "graft", "interpolate"):
        sec = config.get(name) or {}
        for entry_name, entry in (sec.get("methods") or {}).items():
            for m in (entry or {}).get("models") or []:
                if m not in models:
                    raise LmftError(f"config: {name}.methods.{entry_name}.models names {m!r}, "
                                    f"not one of models: {sorted(models)}")
    methods = (config.get("finetune") or {}).get("methods") or {}
    if methods:
        from lmft.finetune import resolve_spec  # heavy (torch): only where a finetune section needs it

        for name, spec in methods.items():
            resolve_spec(spec, name)  # the keys that the method's type takes


def load_config(path: str | Path) -> dict[str, Any]:
    """Read, schema-validate (defaults filled in) and check a config file (for use outside Snakemake)."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    validate_schema(config)
    check_config(config)
    return config
