"""lmft.finetune.peak (peak memory increase of a block), the memory stage (lmft.finetune.memory) on a tiny causal LM,
its plan and config section, and its rows in runs.parquet."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmft.aggregate.gather import load_runs
from lmft.aggregate.stage import aggregate
from lmft.aggregate.topics import topics_for
from lmft.config import check_config, validate_schema
from lmft.data.tasks import get_task
from lmft.finetune import peak as memory
from lmft.finetune.memory import WHATS, run_memory
from lmft.finetune.peak import NOT_MEASURED, PeakIncrease, measure_name
from lmft.io import LmftError, read_json, write_json
from lmft.plan import Plan

sys.path.insert(0, str(Path(__file__).parent))
from tiny import make_config, make_tokenizer, write_tiny_splits  # noqa: E402

MB = 2**20
linux = pytest.mark.skipif(measure_name("cpu") == NOT_MEASURED, reason="peak RSS cannot be reset here")


# --- the measure ---------------------------------------------------------------------------------

@linux
def test_cpu_peak_increase_sees_a_300_mb_tensor_and_nothing_else():
    with PeakIncrease("cpu") as peak:
        x = torch.ones(300 * MB // 4)
        del x
    assert peak.measure == memory.LINUX_MEASURE
    assert 295 < peak.mb < 310
    with PeakIncrease("cpu") as idle:
        pass
    assert idle.mb < 2


@linux
def test_cpu_peak_increase_sees_heap_blocks_that_reuse_freed_ones():
    """glibc keeps freed heap blocks resident; the entry trims them, so reusing them counts."""
    big = torch.ones(8 * MB // 4)
    del big  # glibc raises its mmap threshold past 1 MB: the blocks below come from the heap
    blocks = [torch.ones(MB // 4) for _ in range(300)]
    del blocks[::2]  # 150 MB of holes in the heap
    with PeakIncrease("cpu") as peak:
        more = [torch.ones(MB // 4) for _ in range(100)]
    del more, blocks
    assert 95 < peak.mb < 106


def test_not_measured_where_the_peak_cannot_be_reset(monkeypatch):
    assert measure_name("meta") == NOT_MEASURED
    monkeypatch.setattr(memory, "_linux_peak_resettable", lambda: False)
    with PeakIncrease("cpu") as peak:
        torch.ones(10 * MB // 4)
    assert peak.measure == NOT_MEASURED and peak.mb is None and peak.bytes is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_peak_increase_is_the_allocation_above_entry():
    kept = torch.ones(100 * MB // 4, device="cuda")
    with PeakIncrease("cuda") as peak:
        x = torch.ones(300 * MB // 4, device="cuda")
        del x
    assert peak.measure == memory.CUDA_MEASURE and peak.mb == pytest.approx(300, abs=1)
    del kept


# --- the job on a tiny Llama -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """A 2-layer Llama 512 wide (8.9M parameters, 34 MB): optimiser state and gradients dwarf activations."""
    from transformers import AutoModelForCausalLM

    from lmft.models.load import prepare

    root = tmp_path_factory.mktemp("wide")
    tokenizer = make_tokenizer("llama")
    config = make_config("llama", tokenizer)
    config.hidden_size, config.intermediate_size, config.head_dim = 512, 2048, 64
    config.num_attention_heads = config.num_key_value_heads = 8
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    prepare(str(root / "hf"), root / "prepared")
    return root / "prepared" / "model.json", write_tiny_splits(root)["train"]


@pytest.fixture(scope="module")
def measured(wide_llama, tmp_path_factory):
    model_json, train = wide_llama
    out = tmp_path_factory.mktemp("memory") / "memory" / "wide" / "sst-2" / "16-13" / "metrics.json"
    run_memory(model_json, get_task("sst-2"), train, out, model="wide", k=16, seed=13, modes=["prefix:2", "all"],
               batch_size=8, steps=2, repeats=2)
    return out


def test_the_job_writes_one_row_per_mode_and_method(measured):
    m = read_json(measured)
    assert {k: m[k] for k in ("stage", "model", "task", "k", "seed", "device", "head", "loss", "batch_size", "steps",
                              "repeats")} == {
        "stage": "memory", "model": "wide", "task": "sst-2", "k": 16, "seed": 13, "device": "cpu", "head": "causal",
        "loss": "label-words", "batch_size": 8, "steps": 2, "repeats": 2}
    assert m["measure"] == measure_name("cpu") and m["seq_len"] > 5 and m["wall_time_s"] > 0
    assert [(r["mode"], r["what"]) for r in m["rows"]] == [(mode, what) for mode in ("prefix:2", "all")
                                                           for what in WHATS]
    for r in m["rows"]:
        assert len(r["peak_mb"]) == len(r["step_s"]) == 2 and r["params_mb"] > 33
    trainable = {r["mode"]: r["trainable_params"] for r in m["rows"]}
    assert trainable["prefix:2"] == 2 * 2 * 2 * 512  # layers x (key, value) x P x width
    assert trainable["all"] > 8_800_000


@linux
def test_adamw_needs_more_than_sgd_which_needs_more_than_mezo(measured):
    """Full-parameter steps: AdamW's two moments (34 MB each) come on top of what SGD needs (the gradients,
    34 MB), which MeZO never holds; MeZO's own buffers stay below the gradients."""
    peak = {r["what"]: np.median(r["peak_mb"]) for r in read_json(measured)["rows"] if r["mode"] == "all"}
    assert peak["ft-adamw"] > peak["ft-sgd"] + 40 and peak["ft-sgd"] > peak["mezo"] + 10
    assert peak["mezo"] < 34 and peak["inference"] < peak["mezo"]


def test_nothing_runs_where_memory_is_not_measured(wide_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "_linux_peak_resettable", lambda: False)
    model_json, train = wide_llama
    m = run_memory(model_json, get_task("sst-2"), train, tmp_path / "m.json", model="wide", k=16, seed=13,
                   modes=["all"], batch_size=4, steps=1, repeats=2)
    assert m["measure"] == NOT_MEASURED and all(r["peak_mb"] == [None, None] for r in m["rows"])


def test_a_batch_larger_than_the_train_split_is_refused(wide_llama, tmp_path):
    model_json, train = wide_llama
    with pytest.raises(LmftError, match="memory.batch_size 64 is larger than the 12 training examples"):
        run_memory(model_json, get_task("sst-2"), train, tmp_path / "m.json", model="wide", k=16, seed=13,
                   modes=["all"], batch_size=64, steps=1, repeats=1)


# --- gathered into runs.parquet ----------------------------------------------------------------

def test_memory_rows_in_the_runs_table_beside_finetune_runs(measured, tmp_path):
    ft = tmp_path / "finetune" / "metrics.json"
    write_json({"stage": "finetune", "task": "sst-2", "k": 16, "seed": 13, "model": "wide", "method": "ft",
                "type": "ft", "head": "causal", "mode": "all", "metric": "acc", "dev_metric": 0.5, "test_metric": 0.5,
                "test_ece": 0.1, "n_test": 10, "test_majority": 0.5}, ft)
    runs = load_runs([ft, measured])
    mem = runs[runs["stage"] == "memory"]
    assert len(mem) == 8 and mem["selected"].all()
    row = mem[(mem["mode"] == "all") & (mem["what"] == "ft-adamw")].iloc[0]
    peaks = json.loads(row["peak_mb"])
    assert (row["peak_mb_min"], row["peak_mb_median"], row["peak_mb_max"]) == (min(peaks), np.median(peaks), max(peaks))
    assert row["trainable_params"] > 8_800_000 and row["steps"] == 2
    topics = topics_for(["finetune", "memory"])
    assert topics == ["main", "findings"]
    written = aggregate([ft, measured], [], tmp_path / "runs.parquet", tmp_path / "tables", tmp_path / "plots", topics)
    assert (tmp_path / "tables" / "findings.md") in written


def test_unmeasured_peaks_gather_as_nan(tmp_path):
    path = tmp_path / "m.json"
    write_json({"stage": "memory", "model": "m", "task": "t", "k": 16, "seed": 13, "measure": NOT_MEASURED,
                "rows": [{"mode": "all", "what": "mezo", "peak_mb": [None, None], "trainable_params": 3}]}, path)
    row = load_runs([path]).iloc[0]
    assert np.isnan(row["peak_mb_median"]) and row["what"] == "mezo"
    write_json({"stage": "memory", "model": "m", "task": "t", "k": 16, "seed": 13, "rows": [{"mode": "all"}]}, path)
    with pytest.raises(LmftError, match=r"m.json: rows\[0\] needs strings 'mode' and 'what'"):
        load_runs([path])


# --- plan and config -------------------------------------------------------------------------------

CONFIG = {"models": {"m": {"source": "x"}, "n": {"source": "y"}}, "tasks": ["rt-polarity", "bbc-summary"],
          "kshot": {"k": [16], "seeds": [13, 21]}}


def test_the_memory_section_plans_a_job_per_classification_task_and_feeds_the_aggregate():
    plan = Plan(CONFIG | {"memory": {"models": ["m"], "seeds": [13], "modes": ["prefix:5", "all"]}})
    assert plan.memory_jobs == [{"model": "m", "task": "rt-polarity", "k": 16, "seed": 13}]  # not the generation task
    assert plan.memory_metrics == ["results/memory/m/rt-polarity/16-13/metrics.json"]
    assert plan.metrics == {"memory": plan.memory_metrics} and plan.memory_metrics[0] in plan.targets
    assert plan.topics == ["findings"] and "results/tables/findings.md" in plan.targets
    assert plan.memory_settings == {"modes": ["prefix:5", "all"], "batch_size": 8, "steps": 2, "repeats": 3}
    assert (plan.memory["device"], plan.memory["threads"]) == ("auto", 1)
    assert plan.memory_resources == {"mem_mb": 4000, "runtime": 30, "gpu": 0}
    assert Plan(CONFIG | {"memory": {"resources": {"mem_mb": 8000}}}).memory_resources["mem_mb"] == 8000
    assert Plan(CONFIG).memory_jobs == [] and "memory" not in Plan(CONFIG).metrics  # no section, no jobs
    every = Plan(CONFIG | {"memory": {}}).memory_jobs
    assert [(j["model"], j["seed"]) for j in every] == [("m", 13), ("m", 21), ("n", 13), ("n", 21)]


def test_the_memory_section_is_checked():
    with pytest.raises(LmftError, match=r"config: memory: .*'mode' was unexpected"):
        validate_schema(CONFIG | {"memory": {"mode": ["all"]}})
    with pytest.raises(LmftError, match=r"config: memory.repeats: 0 is less than the minimum of 1"):
        validate_schema(CONFIG | {"memory": {"repeats": 0}})
    with pytest.raises(LmftError, match=r"config: memory.modes: unknown trainable-parameter mode 'everything'"):
        Plan(CONFIG | {"memory": {"modes": ["everything"]}}).memory_jobs
    with pytest.raises(LmftError, match=r"memory.models names 'x', not one of models"):
        check_config(CONFIG | {"memory": {"models": ["x"]}})
    with pytest.raises(LmftError, match=r"memory.tasks names the generation task\(s\) \['bbc-summary'\]"):
        check_config(CONFIG | {"memory": {"tasks": ["bbc-summary"]}})
    check_config(CONFIG | {"memory": {}})  # unset tasks: the classification ones
