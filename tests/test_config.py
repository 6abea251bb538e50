"""Config validation: schema errors name the key; names must resolve."""

import copy

import pytest
import yaml

from lmft.config import SCHEMA, check_config, load_config, validate_schema
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
