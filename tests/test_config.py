"""Config validation: schema errors name the key; names must resolve."""

import copy

import pytest
import yaml

from lmft.config import check_config, load_config, validate_schema
from lmft.io import LmftError
from lmft.schema import SCHEMA, section, with_defaults


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


@pytest.mark.parametrize("cfg", ["config.yaml", "config/paper.yaml", "config/findings.yaml"])
def test_shipped_configs_valid(cfg):
    path = SCHEMA.parent.parent.parent / cfg
    if not path.exists():
        pytest.skip(f"{cfg} not present")
    load_config(path)


def generation_entry(**kw):
    return {"kind": "generation", "path": "docs.csv", "text_columns": ["doc"], "target_column": "summary",
            "prompt": "{text_a}\nSummary:"} | kw


def test_schema_user_generation_task(default):
    cfg = copy.deepcopy(default) | {"user_tasks": {"summ": generation_entry(metric="rouge", max_new_tokens=32,
                                                                            stop=["\n"])}}
    validate_schema(cfg)
    check_config(cfg)
    missing = copy.deepcopy(cfg)
    del missing["user_tasks"]["summ"]["prompt"]
    with pytest.raises(LmftError, match=r"config: user_tasks.summ: 'prompt' is a required property"):
        validate_schema(missing)
    classification = {"path": "x.csv", "text_columns": ["t"], "label_column": "l"}
    with pytest.raises(LmftError, match=r"config: user_tasks.toy: 'label_words' is a required property"):
        validate_schema(copy.deepcopy(default) | {"user_tasks": {"toy": classification}})
    with pytest.raises(LmftError, match=r"config: user_tasks.summ.max_new_tokens: 0 is less than the minimum of 1"):
        validate_schema(copy.deepcopy(default) | {"user_tasks": {"summ": generation_entry(max_new_tokens=0)}})


def test_schema_adds_no_defaults_to_classification_tasks(default):
    entry = {"path": "x.csv", "text_columns": ["t"], "label_column": "l", "label_words": {"a": "x", "b": "y"}}
    cfg = copy.deepcopy(default) | {"user_tasks": {"toy": dict(entry)}, "task_overrides": {"sst-2": {"max_length": 64}}}
    validate_schema(cfg)
    # no default filled in: the download jobs' params of classification tasks stay as they were
    assert cfg["user_tasks"]["toy"] == entry and cfg["task_overrides"]["sst-2"] == {"max_length": 64}


@pytest.mark.parametrize("section,message", [
    ({"kernels": {}}, r"kernels.tasks is unset, so it takes every task of the config, including the generation "
                      r"task\(s\) \['bbc-summary'\].*set kernels.tasks to the classification tasks"),
    ({"kernels": {"tasks": ["bbc-summary"]}}, r"kernels.tasks names the generation task\(s\) \['bbc-summary'\]"),
    ({"graft": {"tasks": ["rt-polarity", "summ"]}}, r"graft.tasks names the generation task\(s\) \['summ'\]"),
    ({"graft": {"tasks": ["rt-polarity"], "ood": {"rt-polarity": ["bbc-summary"]}}},
     r"graft.ood.rt-polarity names the generation task\(s\) \['bbc-summary'\]"),
    ({"graft": {}}, r"graft.tasks is unset"),
    ({"interpolate": {"pairs": {"p": {"a": {"method": "m", "task": "bbc-summary"}, "b": {"method": "m"}}}}},
     r"interpolate.pairs.p.a.task names the generation task\(s\) \['bbc-summary'\]"),
    ({"interpolate": {"pairs": {"p": {"a": {"method": "m"}, "b": {"method": "m"}}}}},
     r"interpolate.pairs.p.tasks is unset"),
    ({"kshot": {"test_balance": ["rt-polarity", "bbc-summary"]}}, r"kshot.test_balance names the generation task"),
])
def test_generation_tasks_refused_by_classification_only_stages(section, message):
    cfg = {"models": {"m": {"source": "x"}}, "tasks": ["rt-polarity", "bbc-summary"],
           "user_tasks": {"summ": generation_entry()}} | section
    with pytest.raises(LmftError, match=message):
        check_config(cfg)


def test_classification_only_stages_accept_named_classification_tasks():
    cfg = {"models": {"m": {"source": "x"}}, "tasks": ["rt-polarity", "bbc-summary"],
           "kernels": {"tasks": ["rt-polarity"]},
           "graft": {"tasks": ["rt-polarity"], "ood": {"rt-polarity": ["tweets-2"]}},
           "interpolate": {"pairs": {"p": {"a": {"method": "m"}, "b": {"method": "m"}, "tasks": ["rt-polarity"]}}},
           "kshot": {"test_balance": ["rt-polarity", "not-a-task"]}}
    check_config(cfg)


@pytest.mark.parametrize("cfg", ["config.yaml", "config/paper.yaml", "config/findings.yaml"])
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
