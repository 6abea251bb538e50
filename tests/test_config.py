"""Config validation: schema errors name the key; names must resolve."""

import copy

import pytest
import yaml

from lmft.config import SCHEMA, check_config, load_config, section, validate_schema, with_defaults
from lmft.io import LmftError


@pytest.fixture
def default():
    return yaml.safe_load((SCHEMA.parent.parent.parent / "config.yaml").read_text())


def test_default_config_is_valid(default):
    validate_schema(default)
    check_config(default)


def test_unknown_key_is_named(default):
    bad = copy.deepcopy(default)
    bad["kshot"]["kk"] = [16]
    with pytest.raises(LmftError, match=r"config: kshot: .*'kk' was unexpected"):
        validate_schema(bad)


def test_wrong_type_is_named(default):
    bad = copy.deepcopy(default)
    bad["kshot"]["k"] = "16"
    with pytest.raises(LmftError, match="config: kshot.k: '16' is not of type 'array'"):
        validate_schema(bad)


def test_unknown_task_in_config(default, tmp_path):
    bad = copy.deepcopy(default)
    bad["tasks"] = ["tweets-2", "nope"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(LmftError, match="unknown task 'nope'"):
        load_config(path)


@pytest.mark.parametrize("cfg", ["config.yaml", "config/paper.yaml"])
def test_shipped_configs_valid(cfg):
    path = SCHEMA.parent.parent.parent / cfg
    if not path.exists():
        pytest.skip(f"{cfg} not present")
    load_config(path)


@pytest.mark.parametrize("cfg", ["config.yaml", "config/paper.yaml"])
def test_validation_fills_the_defaults_snakemake_fills(cfg):
    """The schema is the one place of the defaults: validate_schema fills them as Snakemake's validate does
    (same values, same key order, which the rules' params depend on); with_defaults on the result changes nothing."""
    from snakemake.utils import validate

    raw = yaml.safe_load((SCHEMA.parent.parent.parent / cfg).read_text())
    ours, theirs = copy.deepcopy(raw), copy.deepcopy(raw)
    validate_schema(ours)
    validate(theirs, str(SCHEMA))
    assert ours == theirs and repr(ours) == repr(theirs)
    assert repr(with_defaults(ours)) == repr(ours)


def test_with_defaults_fills_a_copy_and_section_fills_an_absent_one():
    config = {"models": {"m": {}}, "tasks": ["t"], "graft": {"epochs": 2}}
    filled = with_defaults(config)
    assert config == {"models": {"m": {}}, "tasks": ["t"], "graft": {"epochs": 2}}  # not changed in place
    assert filled["graft"]["epochs"] == 2 and filled["graft"]["sparsities"] == [1e-4, 1e-3, 1e-2]
    assert filled["kshot"]["k"] == [16] and "kernels" not in filled  # an absent stage stays absent
    assert section(config, "kernels")["formulas"] == ["sgd"] and section(config, "graft")["epochs"] == 2
