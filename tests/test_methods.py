"""lmft.finetune.methods: the registry of method types, their schemas and defaults, and loading plugins."""

from __future__ import annotations

import pytest

from lmft.config import validate_schema
from lmft.finetune.methods import BUILTIN, TYPES, MethodType, check_values, get_type, load_plugins, register, resolve_spec
from lmft.finetune.methods.settings import COMMON, setting
from lmft.finetune.methods.zeroshot import run as zeroshot_run
from lmft.io import LmftError


def test_the_builtin_types_are_registered_in_order() -> None:
    assert BUILTIN == ("zeroshot", "icl", "linear-probe", "ft", "mezo", "fzoo", "mezo-svrg")  # the tables' row order
    assert [name for name, t in TYPES.items() if t.trains] == ["ft", "mezo", "fzoo", "mezo-svrg"]


@pytest.mark.parametrize("name", BUILTIN)
def test_each_types_defaults_satisfy_its_own_schema(name: str) -> None:
    t = get_type(name)
    check_values({"type": name, **t.defaults()}, name)
    assert resolve_spec({"type": name}) == {"type": name, **t.defaults()}


@pytest.mark.parametrize("spec, message", [
    ({"type": "ft", "optimizer": "adam"}, "m.optimizer: unknown optimizer 'adam'; one of adamw, sgd"),
    ({"type": "mezo", "n_perturbations": 0}, "m.n_perturbations: 0 is less than the minimum of 1"),
    ({"type": "mezo", "eps": 0}, "m.eps: 0 is not valid under any of the given schemas"),  # a number or a grid's list
    ({"type": "icl", "demos_per_label": 1.5}, "m.demos_per_label: 1.5 is not of type 'integer'"),
    ({"type": "linear-probe", "C_grid": []}, r"m.C_grid: \[\] should be non-empty"),
])
def test_values_are_checked_against_the_type_naming_method_and_key(spec, message) -> None:
    with pytest.raises(LmftError, match="config: finetune.methods." + message):
        resolve_spec(spec, "m")
    config = {"models": {"x": {"source": "x"}}, "tasks": ["sst-2"], "finetune": {"methods": {"m": spec}}}
    with pytest.raises(LmftError, match="config: finetune.methods." + message):
        validate_schema(config)
    config["finetune"]["methods"]["m"] = {"type": "sft"}
    with pytest.raises(LmftError, match="method 'm': type must be one of zeroshot, icl, linear-probe, ft, mezo, fzoo, mezo-svrg, got"):
        validate_schema(config)


def test_a_type_is_declared_with_documented_defaults() -> None:
    with pytest.raises(LmftError, match=r"settings \['alpha'\] need a default and a description"):
        MethodType("toy", COMMON | {"alpha": {"type": "number"}}, zeroshot_run)
    with pytest.raises(LmftError, match=r"settings \['seeds'\] are the workflow's keys"):
        MethodType("toy", COMMON | {"seeds": setting([], "which seeds", type="array")}, zeroshot_run)
    with pytest.raises(LmftError, match="a type that trains takes the mode keys"):
        MethodType("toy", COMMON, zeroshot_run, trains=True)
    with pytest.raises(LmftError, match=r"unknown head\(s\) \['mlm'\]"):
        MethodType("toy", COMMON, zeroshot_run, heads=("mlm",))


def test_register_refuses_a_second_type_of_the_same_name() -> None:
    register(TYPES["zeroshot"])  # the same type again: nothing happens
    with pytest.raises(LmftError, match="a method type named 'zeroshot' is registered already"):
        register(MethodType("zeroshot", COMMON, zeroshot_run))
    with pytest.raises(LmftError, match="method type must be one of zeroshot, .*, got 'toy' .* finetune.plugins"):
        get_type("toy")


@pytest.mark.parametrize("module, message", [
    ("lmft_no_such_plugin", "config: finetune.plugins: no module 'lmft_no_such_plugin' in .* or on the Python path"),
    ("json", r"config: finetune.plugins: module 'json' defines no METHOD = lmft.finetune.methods.MethodType\(...\)"),
])
def test_plugins_that_define_no_type_are_named(module: str, message: str) -> None:
    with pytest.raises(LmftError, match=message):
        load_plugins({"finetune": {"plugins": [module]}})
    assert set(TYPES) == set(BUILTIN)
