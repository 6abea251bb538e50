"""The registry of method types, plugins, and a method entry's settings resolved against its type.

:data:`TYPES` maps a type's name to its :class:`~lmft.finetune.methods.base.MethodType`: the built-in
types, registered when :mod:`lmft.finetune.methods` is imported, then those of the config's plugins.
A plugin is a module named in ``finetune.plugins`` that defines ``METHOD = MethodType(...)``;
:func:`load_plugins` imports it (from the working directory or the Python path) and registers
that type. The config check, the Snakemake run and every job load the same plugins, so a
plugin's type is valid wherever a built-in one is.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from lmft.finetune.grid import grid_keys
from lmft.finetune.methods.base import WORKFLOW_KEYS, MethodType
from lmft.io import LmftError
from lmft.schema import check_against

TYPES: dict[str, MethodType] = {}


def register(method: MethodType) -> MethodType:
    """Add ``method`` to :data:`TYPES` (again: nothing); a second type of the same name is an error."""
    if TYPES.get(method.name, method) is not method:
        raise LmftError(f"a method type named {method.name!r} is registered already (built in, or by another plugin)")
    TYPES[method.name] = method
    return method


def get_type(name: Any, method: str | None = None) -> MethodType:
    """The registered type ``name``; ``method``, the config entry that asks, is named in the error."""
    if name not in TYPES:
        where = f"finetune method {method!r}: type" if method else "method type"
        raise LmftError(f"{where} must be one of {', '.join(TYPES)}, got {name!r} (a type of your own: name its "
                        "module in finetune.plugins)")
    return TYPES[name]


def load_plugins(config: Mapping[str, Any]) -> None:
    """Import each module of the config's ``finetune.plugins`` and register its ``METHOD``."""
    names = (config.get("finetune") or {}).get("plugins") or []
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # the working directory's modules, as `python -m` finds them (jobs run there)
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise  # the plugin itself imports something missing: its own traceback says what
            raise LmftError(f"config: finetune.plugins: no module {name!r} in {os.getcwd()} or on the Python "
                            "path") from None
        method = getattr(module, "METHOD", None)
        if not isinstance(method, MethodType):
            raise LmftError(f"config: finetune.plugins: module {name!r} defines no "
                            "METHOD = lmft.finetune.methods.MethodType(...)")
        register(method)


def job_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A method's settings without the workflow's keys: what the job's results depend on (the rule's params)."""
    return {k: v for k, v in spec.items() if k not in WORKFLOW_KEYS}


def check_values(spec: Mapping[str, Any], method: str = "method") -> None:
    """Validate a method entry's values against its type's schema; the message names the method and the key."""
    check_against(get_type(spec.get("type"), method).schema, job_spec(spec), f"finetune.methods.{method}")


def resolve_spec(spec: Mapping[str, Any], method: str = "method", *, grid: bool = True) -> dict[str, Any]:
    """The method's settings with its type's defaults filled in; raises on an unknown type, key or value.

    A grid's lists (:mod:`lmft.finetune.grid`) are checked and stay lists; ``grid=False`` (a job's
    settings, which are one trial's) refuses them.
    """
    t = get_type(spec.get("type"), method)
    unknown = sorted(set(spec) - set(t.settings) - {"type"} - WORKFLOW_KEYS)
    if unknown:
        raise LmftError(f"finetune method {method!r} (type {t.name}): unknown key(s) {unknown}; "
                        f"known: {sorted({'type', *t.settings})}")
    listed = grid_keys(spec, method)
    if listed and not grid:
        raise LmftError(f"finetune method {method!r}: {', '.join(listed)} given as lists make a grid; a job "
                        "runs one trial's settings (lmft.finetune.grid.trials)")
    check_values(spec, method)
    out = {"type": t.name} | t.defaults() | job_spec(spec)
    return out if t.resolve is None else t.resolve(spec, out, method)
