"""Interim tables of an unfinished run: only finished runs are aggregated, topics follow them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmft.aggregate import interim as im
from lmft.aggregate.topics import topics_for
from lmft.io import LmftError
from lmft.plan import Plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def findings_config():
    return im.read_configs([ROOT / "config/findings.yaml"])


def test_no_finished_run_is_an_error_that_says_what_to_run(findings_config, tmp_path):
    with pytest.raises(LmftError, match="no finished run of this configuration yet"):
        im.interim(findings_config, tmp_path, tmp_path / "out")


def test_only_the_finished_runs_are_aggregated(findings_config, tmp_path, monkeypatch):
    plan = Plan(findings_config)
    finished = [plan.metrics["finetune"][0], plan.metrics["finetune"][1]]
    started_only = Path(plan.metrics["finetune"][2]).parent / "resume.pt"  # a run under way: no metrics.json yet
    for f in (*finished, started_only):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("{}")
    seen = {}
    monkeypatch.setattr(im, "aggregate", lambda metrics, curves, runs, tables, plots, topics, **kw:
                        seen.update(metrics=metrics, runs=runs, tables=tables, topics=topics) or [])
    im.interim(findings_config, tmp_path, tmp_path / "out")
    assert seen["metrics"] == sorted(tmp_path / f for f in finished)
    assert seen["topics"] == topics_for({"finetune"})  # no kernel, graft or interpolation topic without runs
    assert seen["tables"] == tmp_path / "out" / "tables" and seen["runs"] == tmp_path / "out" / "runs.parquet"


def test_config_files_merge_as_snakemake_merges_them(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"kshot": {"seeds": [13]}}))
    config = im.read_configs([ROOT / "config/findings.yaml", overlay])
    assert config["kshot"]["seeds"] == [13] and config["kshot"]["test_cap"] == 500  # nested keys kept


def test_a_bad_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"kshot": {"sedes": [13]}}))
    with pytest.raises(LmftError, match="sedes"):
        im.read_configs([ROOT / "config/findings.yaml", bad])
