"""lmft.plan: every stage's jobs and targets from one config, with the schema's defaults."""

import pytest

from lmft.graft.plan import OPTIONS
from lmft.io import LmftError
from lmft.plan import Plan

CONFIG = {"models": {"m": {"source": "x"}}, "tasks": ["sst-2", "snli"], "kshot": {"k": [16], "seeds": [13, 21]},
          "task_overrides": {"sst-2": {"template": "*cls**sent_0*_It_was*mask*.*sep+*"}},
          "finetune": {"eval_cap": 100, "resources": {"mem_mb": 3000},
                       "methods": {"ft": {"type": "ft", "eval_cap": 50, "resources": {"gpu": 1}},
                                   "zs": {"type": "zeroshot", "seeds": [13]}}}}


def test_a_config_with_finetuning_alone_plans_its_runs_and_the_tables():
    plan = Plan(CONFIG)
    assert plan.targets[:6] == [f"data/kshot/sst-2/16-13/{name}" for name in
                                ("train.parquet", "dev.parquet", "test.parquet", "info.json")] + [
        "data/kshot/sst-2/16-21/train.parquet", "data/kshot/sst-2/16-21/dev.parquet"]
    assert plan.finetune_metrics == [f"results/finetune/m/{t}/16-{s}/ft/metrics.json" for t in ("sst-2", "snli")
                                     for s in (13, 21)] + [f"results/finetune/m/{t}/16-13/zs/metrics.json"
                                                           for t in ("sst-2", "snli")]
    assert list(plan.metrics) == ["finetune"] and plan.topics == ["main", "findings"]
    assert plan.kernel_metrics == [] and plan.graft_jobs == [] and plan.interpolate_jobs == {}  # no sections
    assert plan.targets[-1] == "results/tables/findings.html" and "results/tables/runs.parquet" in plan.targets
    assert plan.zo_curves == []


def test_zeroth_order_methods_add_their_curves_and_the_zo_topic():
    methods = CONFIG["finetune"]["methods"] | {"mezo": {"type": "mezo", "tasks": ["sst-2"]},
                                               "fzoo": {"type": "fzoo", "tasks": ["sst-2"], "lr": [1e-3, 1e-2]}}
    plan = Plan(CONFIG | {"finetune": {"methods": methods}})
    assert plan.zo_curves == [f"results/finetune/m/sst-2/16-{s}/{run}/curve.parquet" for run in
                              ("mezo", "fzoo~lr-0.001", "fzoo~lr-0.01") for s in (13, 21)]
    assert plan.topics == ["main", "zo", "findings"]
    assert "results/plots/zo_forward_passes.png" in plan.targets


def test_job_settings_fall_back_from_the_method_to_the_section_to_the_schema():
    plan = Plan(CONFIG)
    assert (plan.run_setting("ft", "eval_cap"), plan.run_setting("zs", "eval_cap")) == (50, 100)
    assert plan.run_setting("zs", "threads") == 1  # the schema's default
    assert plan.run_resources("ft") == {"mem_mb": 3000, "runtime": 60, "gpu": 1}  # the plan's default runtime
    assert plan.run_resources("zs") == {"mem_mb": 3000, "runtime": 60, "gpu": 0}
    assert (plan.eval_cap("ft"), plan.eval_cap("zs"), plan.eval_cap("other")) == (50, 100, 100)
    assert plan.finetune["device"] == "auto" and plan.graft["sparsities"] == [1e-4, 1e-3, 1e-2]


def test_task_configs_hold_what_defines_each_task():
    plan = Plan(CONFIG)
    sst2 = {"user_tasks": {}, "task_overrides": {"sst-2": CONFIG["task_overrides"]["sst-2"]}}
    assert plan.task_config("sst-2") == sst2
    assert plan.task_config("snli") == {"user_tasks": {}, "task_overrides": {}, "snli_source": "auto"}
    assert plan.tasks_config(["sst-2", "snli"]) == sst2 | {"snli_source": "auto"}


def test_each_stage_section_adds_its_runs_and_topics():
    config = CONFIG | {"kernels": {"solvers": ["lstsq"]},
                       "graft": {"methods": {"ft": {"lr": 5.0}}, "sparsities": [0.01], "ood": {"sst-2": ["snli"]}},
                       "interpolate": {"pairs": {"pre-ft": {"a": {"method": "ft", "pretrained": True},
                                                            "b": {"method": "ft"}}}}}
    plan = Plan(config)
    assert list(plan.metrics) == ["finetune", "kernel", "graft", "interpolate"]
    assert plan.topics == ["main", "kernel", "graft", "interpolate", "findings"]
    assert len(plan.kernel_metrics) == 2 * 2 and len(plan.graft_jobs) == 2 * 2
    options = plan.graft_options("ft")  # the method's lr, the schema's defaults of the rest
    assert options["lr"] == 5.0 and list(options) == list(OPTIONS) and plan.graft_ood("sst-2") == ["snli"]
    assert len(plan.overlap_groups) == 2 + 2  # per seed the tasks' masks, per task the seeds'
    assert list(plan.interpolate_jobs) == ["results/interpolate/m/sst-2/pre-ft", "results/interpolate/m/snli/pre-ft"]
    assert plan.curves == [f"{path}/curve.parquet" for path in plan.interpolate_jobs]
    assert plan.pair_kinds == {"pre-ft": "pretrained-ft"}
    grid = config | {"finetune": {"methods": {"ft": {"type": "ft", "lr": [1e-3, 1e-2]}}}}
    with pytest.raises(LmftError, match="graft.methods reads finetune method 'ft', a grid over lr"):
        Plan(grid).graft_jobs


def test_paper_grid_sets_each_kernel_beside_fine_tuning_with_and_without_the_prompt():
    """config/paper.yaml: each eNTK cell (model, task, k, seed) has FT of that model with the head its
    prompt setting compares with (prompt -> prompt head, noprompt -> cls head); the paper-grid proxy
    found the no-prompt kernel claim never measured when no-prompt FT ran on roberta-large only."""
    from pathlib import Path

    from lmft.config import load_config

    plan = Plan(load_config(Path(__file__).resolve().parent.parent / "config/paper.yaml"))
    heads = {"prompt": "prompt", "noprompt": "cls"}
    ft = {(*path.split("/")[2:5], plan.finetune_runs[path.split("/")[5]].get("head")) for path in plan.finetune_metrics}
    cells = {(*path.split("/")[2:5], path.split("/")[5].rsplit("-", 1)[1]) for path in plan.kernel_metrics}
    assert cells and {prompt for *_, prompt in cells} == set(heads)
    missing = sorted(c for c in cells if (*c[:3], heads[c[3]]) not in ft)
    assert not missing, missing[:5]
