"""The config's JSON schema (``workflow/schemas/config.schema.yaml``): its defaults, and checking against it.

The schema is the one place that gives a key its default. :func:`validator` fills them in as
Snakemake's ``validate(config, schema)`` does (a key's ``default`` is set where the key is missing,
level by level, in the schema's order); :func:`with_defaults` fills them into a copy without
validating, for the planners (:mod:`lmft.plan`); :func:`check_against` checks a value against any
JSON schema (a method type's settings too) and raises the first error as an :class:`LmftError`.
This module imports nothing of lmft but :mod:`lmft.io`, so every layer may use it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from lmft.io import LmftError

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def validator(schema_path: Path) -> Any:
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


def check_against(schema: Mapping[str, Any], instance: Any, where: str = "") -> None:
    """Raise the first error (by path) of ``instance`` under the JSON ``schema``, as ``config: {where}.{path}: ...``."""
    import jsonschema

    raise_first(jsonschema.validators.validator_for(schema)(schema).iter_errors(instance), where)


def raise_first(errors: Iterable[Any], where: str = "") -> None:
    """Raise the first of jsonschema's ``errors`` by path; a value outside an ``enum`` is named as unknown, with the choices."""
    errors = sorted(errors, key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        path = ".".join(str(p) for p in e.absolute_path)
        message = e.message
        if e.validator == "enum":
            message = f"unknown {path or 'value'} {e.instance!r}; one of {', '.join(map(str, e.validator_value))}"
        raise LmftError(f"config: {'.'.join(p for p in (where, path) if p) or '(top level)'}: {message}")


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with the schema's defaults filled in, valid or not (checking it is
    :func:`validate_schema`'s job); a config that Snakemake validated comes back equal."""
    out = copy.deepcopy(dict(config))
    for _ in validator(SCHEMA).iter_errors(out):  # the walk over the schema sets the defaults
        pass
    return out


def section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config's section ``name`` with the schema's defaults, also where the config has none."""
    return with_defaults({name: config.get(name) or {}})[name]
