"""lmft.finetune.grid: expansion of hyper-parameter lists into trials, their names and run directories, the
trial's job and metrics, the aggregate's best dev trial per seed, and stages that refuse grids."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from lmft.aggregate import gather, summary
from lmft.config import validate_schema
from lmft.data.tasks import get_task
from lmft.finetune.grid import check_pinned, expand_methods, grid_keys, split_run, trial_fields, trials
from lmft.finetune.methods import job_spec, resolve_spec
from lmft.finetune.stage import run_finetune
from lmft.io import LmftError
from lmft.plan import finetune_targets
from test_aggregate import finetune as write_finetune_metrics
from tiny import make_tiny_model_dir, write_tiny_splits

MEZO = {"type": "mezo", "lr": [1e-3, 1e-4], "batch_size": [8, 16], "eps": 1e-3, "seeds": [13], "resources": {"gpu": 1}}


def test_trials_are_the_product_in_a_fixed_order() -> None:
    runs = trials("mezo", MEZO)
    assert list(runs) == ["mezo~lr-0.001~bs-8", "mezo~lr-0.001~bs-16", "mezo~lr-0.0001~bs-8", "mezo~lr-0.0001~bs-16"]
    assert runs["mezo~lr-0.0001~bs-8"] == MEZO | {"lr": 1e-4, "batch_size": 8}  # the rest as configured
    # GRID_KEYS order, not the config's: the same grid written the other way round has the same trials
    swapped = {"batch_size": MEZO["batch_size"], **{k: v for k, v in MEZO.items() if k != "batch_size"}}
    assert list(trials("mezo", swapped)) == list(runs)
    names = trials("m", {"type": "mezo", "weight_decay": [0, 0.1], "steps": [100], "eps": [1e-2, 1e-5]})
    assert list(names) == ["m~eps-0.01~steps-100~wd-0", "m~eps-0.01~steps-100~wd-0.1",
                           "m~eps-1e-05~steps-100~wd-0", "m~eps-1e-05~steps-100~wd-0.1"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.:+~-]+", name) for name in names)  # one path component


def test_single_values_keep_the_method_as_it_is() -> None:
    spec = {"type": "ft", "lr": 1e-3, "batch_size": 8, "save_steps": [2, 4]}  # a list, but not a grid key
    assert trials("ft", spec) == {"ft": spec} and grid_keys(spec) == []
    methods = {"zs": {"type": "zeroshot"}, "mezo": MEZO, "ft": spec}
    assert list(expand_methods(methods)) == ["zs", *trials("mezo", MEZO), "ft"]


@pytest.mark.parametrize("value, message", [
    ([], "lr is an empty list"),
    (["1e-5"], r"lr holds \['1e-5'\], not finite numbers .*1.0e-5"),
    ([True, 1e-3], r"lr holds \[True\], not finite"),
    ([math.inf], r"lr holds \[inf\], not finite"),
    ([1e-3, 0.001], "lr lists a value twice"),
])
def test_invalid_lists_are_named(value, message) -> None:
    with pytest.raises(LmftError, match=f"finetune method 'ft': {message}"):
        trials("ft", {"type": "ft", "lr": value})
    with pytest.raises(LmftError, match=message):  # the config check (lmft.config) resolves every method
        resolve_spec({"type": "ft", "lr": value}, "ft")


def test_split_run_recovers_the_method() -> None:
    assert split_run("mezo~lr-0.001~bs-8") == ("mezo", "mezo~lr-0.001~bs-8")
    assert split_run("ft-prompt") == ("ft-prompt", None)


def test_resolve_spec_of_a_trial() -> None:
    name, trial = list(trials("mezo", MEZO).items())[1]
    cfg = resolve_spec(trial, name, grid=False)
    assert (cfg["lr"], cfg["batch_size"], cfg["eps"], cfg["steps"]) == (1e-3, 16, 1e-3, 100_000)  # default steps
    assert "seeds" not in job_spec(trial) and job_spec(trial)["lr"] == 1e-3  # the rule's params: single values
    assert resolve_spec(MEZO, "mezo")["lr"] == [1e-3, 1e-4]  # the method as configured: lists checked and kept
    with pytest.raises(LmftError, match="lr, batch_size given as lists make a grid; a job runs one trial"):
        resolve_spec(MEZO, "mezo", grid=False)
    with pytest.raises(LmftError, match="set steps or epochs, not both"):
        resolve_spec({"type": "ft", "steps": [10, 20], "epochs": 2}, "ft")
    with pytest.raises(LmftError, match=r"unknown key\(s\) \['eps'\]"):  # ft takes no eps, listed or not
        resolve_spec({"type": "ft", "eps": [1e-3]}, "ft")


def test_finetune_targets_of_a_grid() -> None:
    config = {"models": {"m": {}}, "tasks": ["t"], "kshot": {"k": [16], "seeds": [13, 21]}, "results_dir": "res",
              "finetune": {"methods": {"zs": {"type": "zeroshot"},
                                       "ft": {"type": "ft", "lr": [1e-3, 1e-2], "seeds": [13]}}}}
    assert finetune_targets(config) == ["res/finetune/m/t/16-13/zs/metrics.json",  # as without grids
                                        "res/finetune/m/t/16-21/zs/metrics.json",
                                        "res/finetune/m/t/16-13/ft~lr-0.001/metrics.json",
                                        "res/finetune/m/t/16-13/ft~lr-0.01/metrics.json"]


def test_trial_jobs_record_method_and_trial_and_the_best_dev_trial_is_selected(tmp_path: Path) -> None:
    model_json = make_tiny_model_dir(tmp_path / "model", "bert")
    splits = write_tiny_splits(tmp_path / "kshot")
    grid = {"type": "ft", "lr": [1e-4, 1e-2], "steps": 2, "eval_every": 1, "batch_size": 4}
    paths = []
    for name, spec in trials("ft", grid).items():
        out = tmp_path / "results" / name
        m = run_finetune(model_json, get_task("sst-2"), splits, out, model="tiny", k=6, seed=13, method=name,
                         spec=job_spec(spec))
        assert (m["method"], m["trial"]) == ("ft", name)
        assert m["hparams"] == {"lr": spec["lr"], "batch_size": 4, "steps": 2, "weight_decay": 0.0}
        paths.append(out / "metrics.json")
    with pytest.raises(LmftError, match="a job runs one trial"):
        run_finetune(model_json, get_task("sst-2"), splits, tmp_path / "ft", model="tiny", k=6, seed=13,
                     method="ft", spec=grid)
    runs = gather.load_runs(paths)
    best = runs["dev_metric"].astype(float).idxmax()  # the first of equal values, as the aggregate breaks ties
    assert runs["selected"].tolist() == [i == best for i in range(len(runs))]


def test_aggregate_keeps_the_best_dev_trial_per_seed(tmp_path: Path) -> None:
    names = list(trials("ft", {"type": "ft", "lr": [1e-5, 2e-5, 5e-5]}))
    dev = {13: (0.6, 0.8, 0.7), 21: (0.9, 0.5, 0.9)}  # seed 21: a tie goes to the first trial
    paths = [write_finetune_metrics(tmp_path, "alpha", seed, "ft", test=0.5 + i / 10, dev=d, trial=name)
             for seed, devs in dev.items() for i, (name, d) in enumerate(zip(names, devs))]
    paths.append(write_finetune_metrics(tmp_path, "alpha", 13, "zeroshot", 0.5, kind="zeroshot"))
    runs = gather.load_runs(paths)
    chosen = runs[runs["selected"]].set_index(["method", "seed"])["trial"]
    assert chosen.to_dict() == {("ft", 13): names[1], ("ft", 21): names[0], ("zeroshot", 13): None}
    row = summary.summarize(runs).set_index("method").loc["ft"]
    assert row["n"] == 2 and row["mean"] == pytest.approx((0.6 + 0.5) / 2)  # the selected trials only


def test_stages_that_read_a_run_refuse_grid_methods() -> None:
    config = {"finetune": {"methods": {"ft": {"type": "ft", "lr": 1e-3},
                                       "ft-grid": {"type": "ft", "lr": [1e-3, 1e-2], "batch_size": [4, 8]}}}}
    check_pinned(config, [("graft.methods", "ft"), ("interpolate.pairs.p.a", "ft")])
    with pytest.raises(LmftError, match=r"config: interpolate.pairs.p.b reads finetune method 'ft-grid', a grid over "
                                        r"lr and batch_size: .* pin one value of lr and batch_size in "
                                        r"finetune.methods.ft-grid or name a non-grid method"):
        check_pinned(config, [("interpolate.pairs.p.a", "ft"), ("interpolate.pairs.p.b", "ft-grid")])


def test_trial_fields_leave_plain_methods_alone() -> None:
    assert trial_fields(None, {"lr": 1e-3}) == {}
    assert trial_fields("m~eps-0.1", {"lr": 1e-3, "eps": 0.1, "mode": "all"}) == {
        "trial": "m~eps-0.1", "hparams": {"lr": 1e-3, "eps": 0.1}}


@pytest.mark.parametrize("lr, ok", [(1e-3, True), ([1e-3, 1e-2], True), ([], False), (["1e-5"], False),
                                    ([1e-3, 1e-3], False)])
def test_schema_takes_a_number_or_a_non_empty_list(lr, ok) -> None:
    config = {"models": {"m": {"source": "x"}}, "tasks": ["sst-2"],
              "finetune": {"methods": {"ft": {"type": "ft", "lr": lr, "batch_size": [4, 8], "steps": [10]}}}}
    if ok:
        validate_schema(config)
    else:
        with pytest.raises(LmftError, match="finetune.methods.ft.lr: .* is not valid under any of the given schemas"):
            validate_schema(config)
