"""Artifact paths: the exact strings finished runs are found by, with values and with the rules' wildcards."""

import re

from lmft import paths as p

W = {"model": "{model}", "task": "{task}", "k": "{k}", "seed": "{seed}"}


def test_kshot_and_model_paths():
    assert p.kshot_files("data", "sst-2", 16, 13) == {
        "train": "data/kshot/sst-2/16-13/train.parquet", "dev": "data/kshot/sst-2/16-13/dev.parquet",
        "test": "data/kshot/sst-2/16-13/test.parquet", "info": "data/kshot/sst-2/16-13/info.json"}
    assert list(p.kshot_splits("data", "sst-2", 16, 13)) == ["train", "dev", "test"]
    assert p.kshot_split("data", "{task}", "{k}", "{seed}", "{split}") == "data/kshot/{task}/{k}-{seed}/{split}.parquet"
    assert p.model_manifest("results", "{model}") == "results/models/{model}/model.json"


def test_run_folders_take_values_and_wildcards():
    assert p.finetune_run("results", **W, run="ft~lr-1e-05") == "results/finetune/{model}/{task}/{k}-{seed}/ft~lr-1e-05"
    assert p.graft_dir("r", "m", "t", 16, 13, "ft", 1e-4) == "r/graft/m/t/16-13/ft/sparsity-0.0001"
    assert (p.graft_dir("r", **W, method="{method}", sparsity="{sparsity}")
            == "r/graft/{model}/{task}/{k}-{seed}/{method}/sparsity-{sparsity}")
    assert p.graft_reference("r", **W, method="{method}") == "r/graft/{model}/{task}/{k}-{seed}/{method}/reference"
    assert p.overlap_tasks("r", "m", 16, 13, "ft", 0.01) == "r/graft/m/overlap-tasks/16-13/ft/sparsity-0.01.parquet"
    assert p.overlap_seeds("r", "m", "t", 16, "ft", 0.01) == "r/graft/m/overlap-seeds/t/16/ft/sparsity-0.01.parquet"
    assert p.interpolate_dir("r", "m", "t", "seed13-seed21") == "r/interpolate/m/t/seed13-seed21"
    assert (p.tables_dir("r"), p.plots_dir("r"), p.runs_table("r")) == ("r/tables", "r/plots", "r/tables/runs.parquet")


def test_kernel_paths():
    kdir = p.kernel_dir("results", **W)
    assert kdir == "results/kernels/{model}/{task}/{k}-{seed}"
    assert p.kernel_dir("results", "m", "t", 16, 13, published_dir="pub") == "pub/m/t/16-13"
    assert p.kernel_file(kdir, "sgd", "{prompt}", "dev") == f"{kdir}/sgd-{{prompt}}/dev.pt"
    assert p.kernel_file(kdir, "f0", "prompt", "test") == f"{kdir}/f0-prompt/test.pt"
    assert p.kernel_shard(kdir, "noprompt", "train", 0, 1) == f"{kdir}/shards-noprompt/train/0-1"
    solve = p.kernel_solve_dir("results", "m", "t", 16, 13)
    assert (p.kernel_solve_metrics(solve, "sgd", "prompt", "lstsq")
            == "results/kernel_solve/m/t/16-13/sgd-prompt/lstsq/metrics.json")


def test_wildcard_constraints_match_exactly_the_names():
    pattern = p.one_of(["sgd", "asymmetric-signgd", "ft~lr-0.001"])
    assert all(re.fullmatch(pattern, name) for name in ("sgd", "asymmetric-signgd", "ft~lr-0.001"))
    assert not any(re.fullmatch(pattern, name) for name in ("signgd", "ft~lr-0x001", ""))
    assert re.fullmatch(p.one_of([]), "") is None and re.fullmatch(p.one_of([]), "sgd") is None
