"""The paper grid's proxy (issue 18): fabricated network sources in their upstream formats, tiny models of
the grid's families, the overlay's promise (sizes and sources only) and the job-shape coverage."""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lmft.aggregate import coverage
from lmft.data import fabricate
from lmft.data.download import extract_tar
from lmft.data.raw import load_raw
from lmft.data.sources_network import lmbff_root
from lmft.data.tasks import get_task
from lmft.data.templates import label_word_ids

ROOT = Path(__file__).resolve().parent.parent
PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
OVERLAY = yaml.safe_load((ROOT / "config/paper-proxy.yaml").read_text())
GLUE_LABELS = {"CoLA": {"0", "1"}, "MNLI": {"contradiction", "entailment", "neutral"}, "MRPC": {"0", "1"},
               "QNLI": {"entailment", "not_entailment"}, "QQP": {"0", "1"}, "RTE": {"entailment", "not_entailment"},
               "SNLI": {"contradiction", "entailment", "neutral"}, "SST-2": {"0", "1"}, "STS-B": {0, 1},
               "WNLI": {"0", "1"}}


def lmbff_label(task: str, line: str) -> str | int:
    """LM-BFF's ``tools/generate_k_shot_data.py``: ``get_label`` of a GLUE-style line."""
    fields = line.strip().split("\t")
    if task == "CoLA":
        return fields[1]
    if task == "MRPC":
        return fields[0]
    if task == "STS-B":
        return 0 if float(fields[-1]) < 2.5 else 1
    return fields[-1]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    paths = fabricate.write_sources(data)
    return data, paths


def test_lmbff_archive_has_the_layout_lmbffs_tools_read(sources):
    """The members ``data/download_dataset.sh`` untars and ``generate_k_shot_data.py`` reads, with its label rules:
    a header line but for CoLA, GLUE's columns, every label of the task; headerless label,text CSVs for the rest."""
    _, paths = sources
    with tarfile.open(paths["lmbff"]) as tar:
        members = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}
    for task, labels in GLUE_LABELS.items():
        splits = ["train", "dev_matched", "dev_mismatched"] if task == "MNLI" else ["train", "dev"]
        for split in splits:
            lines = members[f"original/{task}/{split}.tsv"].splitlines(keepends=True)
            header, rows = ([], lines) if task == "CoLA" else (lines[:1], lines[1:])
            assert {lmbff_label(task, line) for line in rows} == labels, (task, split)
            widths = {len(line.rstrip("\n").split("\t")) for line in rows}
            assert len(widths) == 1 and (not header or len(header[0].split("\t")) == widths.pop())
    assert members["original/MRPC/train.tsv"].startswith("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
    assert members["original/QNLI/dev.tsv"].startswith("index\tquestion\tsentence\tlabel\n")
    assert members["original/MNLI/train.tsv"].split("\n")[0].split("\t")[8:] == ["sentence1", "sentence2", "label1",
                                                                                "gold_label"]
    assert members["original/MNLI/dev_matched.tsv"].split("\n")[0].count("\t") == 15  # label1..label5, gold_label
    assert members["original/SNLI/train.tsv"].split("\n")[0].split("\t")[7:9] == ["sentence1", "sentence2"]
    for task, (labels, _) in fabricate.CSV_TASKS.items():
        for split in ("train", "test"):
            rows = list(csv.reader(io.StringIO(members[f"original/{task}/{split}.csv"])))
            assert {r[0] for r in rows} == set(labels) and {len(r) for r in rows} == {2}  # no header


def test_every_network_reader_reads_its_fabricated_source(sources):
    """Placed where the offline message says, each network source of config/paper.yaml reads through lmft's readers."""
    data, paths = sources
    root = lmbff_root(data)
    extract_tar(paths["lmbff"], root.with_name("_extract"))  # as the download_lmbff job does
    (root.with_name("_extract") / "original").rename(root)
    config = {"snli_source": PAPER["snli_source"]}
    for name in PAPER["tasks"]:
        task = get_task(name)
        train, test, info = load_raw(task, data, config)
        assert len(train) >= 2 * 4 and len(test) >= 5, name
        if task.kind == "classification":
            per_label = train["label"].value_counts()
            assert set(per_label.index) == set(task.labels) and per_label.min() >= 2 * 4, name  # k = 4: train + dev
    assert load_raw(get_task("xsum"), data)[2]["dropped_empty"]["train"]  # the row with an empty document
    babi = load_raw(get_task("babi"), data)[0]
    assert babi["text_b"].iloc[0].startswith("Where is ") and babi["target"].isin(fabricate.PLACES).all()


def test_sources_are_the_same_bytes_every_time(sources, tmp_path):
    _, first = sources
    again = fabricate.write_sources(tmp_path)
    for name, path in first.items():
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            assert f.read_bytes() == (again[name] / f.relative_to(path) if path.is_dir() else again[name]).read_bytes()
    with zipfile.ZipFile(first["snli"]) as z:
        gold = [yaml.safe_load(line)["gold_label"] for line in z.read("snli_1.0/snli_1.0_dev.jsonl").decode().splitlines()]
    assert "-" in gold  # the real files' pairs without a consensus label


@pytest.mark.parametrize("family,kind,cls", [("roberta", "masked", "RobertaTokenizer"),
                                             ("gpt2", "causal", "GPT2Tokenizer")])
def test_tiny_models_have_the_family_head_and_tokenizer_of_the_real_ones(tmp_path, family, kind, cls):
    from lmft.models import tiny
    from lmft.models.load import load, prepare

    folder = tiny.build(family, tmp_path / family, fabricate.corpus()[:20], layers=2)
    manifest = prepare(str(folder), tmp_path / "prepared")
    tokenizer, model, _ = load(tmp_path / "prepared/model.json")
    assert manifest["kind"] == kind and type(tokenizer).__name__ == cls and manifest["num_layers"] == 2
    assert len(set(label_word_ids(tokenizer, tiny.label_words()))) == len(tiny.label_words())  # each one token
    if family == "roberta":
        assert model.config.max_position_embeddings == 514 and tokenizer.convert_tokens_to_ids(
            ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, 4]
        pieces = tokenizer.convert_ids_to_tokens(tokenizer("It was <mask>.")["input_ids"])
        assert pieces[-3:] == ["<mask>", ".", "</s>"] and pieces[-4] != "Ġ"  # <mask> takes the space before it
    else:
        assert tokenizer.pad_token is None and tokenizer.mask_token is None and model.config.n_positions == 1024
    again = tiny.build(family, tmp_path / "again", fabricate.corpus()[:20], layers=2)
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_the_overlay_changes_sizes_and_sources_only():
    merged = coverage.merged(PAPER, OVERLAY)
    assert coverage.overlay_changes(PAPER, merged) == []
    assert merged["finetune"]["methods"]["mezo"]["mode"] == "all" and merged["finetune"]["methods"]["mezo"]["steps"] == 2
    assert merged["graft"]["sparsities"] == PAPER["graft"]["sparsities"] and merged["kernels"]["solvers"] == \
        PAPER["kernels"]["solvers"]
    bad = {"finetune": {"methods": {"ft-cls": {"head": "prompt"}}}, "kernels": {"solvers": ["lstsq"]},
           "interpolate": {"pairs": {"seed-seed": {"b": {"method": "ft-base"}}}}}
    changes = coverage.overlay_changes(PAPER, coverage.merged(PAPER, bad))
    assert changes == ["finetune.methods.ft-cls.head: 'cls' -> 'prompt'",
                       "interpolate.pairs.seed-seed.b.method: 'ft-base-s2' -> 'ft-base'",
                       "kernels.solvers: ['lstsq', 'logistic', 'asym'] -> ['lstsq']"]


DRY_RUN = """\
[Mon Dec  7 00:28:24 2026]
localrule finetune:
    input: data/kshot/sst-2/16-13/train.parquet
    output: results/finetune/roberta-large/sst-2/16-13/ft-cls~lr-1e-05~bs-2/metrics.json
    log: logs/finetune/roberta-large/sst-2/16-13/ft-cls~lr-1e-05~bs-2.log
    jobid: 7
    benchmark: benchmarks/finetune/roberta-large/sst-2/16-13/ft-cls~lr-1e-05~bs-2.tsv
    reason: Missing output files
    wildcards: model=roberta-large, task=sst-2, k=16, seed=13, method=ft-cls~lr-1e-05~bs-2
    resources: tmpdir=/tmp, mem_mb=32000
[Mon Dec  7 00:28:24 2026]
rule graft:
    benchmark: benchmarks/graft/roberta-base/mnli/64-21/ft-sgd/sparsity-0.001.tsv
    wildcards: model=roberta-base, task=mnli, k=64, seed=21, method=ft-sgd, sparsity=0.001
rule download_lmbff:
    benchmark: benchmarks/download/_lmbff.tsv
rule all:
    input: x
"""


def test_dry_run_jobs_and_their_shapes():
    jobs = coverage.parse_dry_run(DRY_RUN)
    assert [j.rule for j in jobs] == ["finetune", "graft", "download_lmbff"]
    assert jobs[0].benchmark == "benchmarks/finetune/roberta-large/sst-2/16-13/ft-cls~lr-1e-05~bs-2.tsv"
    shapes = [coverage.shape(j, PAPER) for j in jobs]
    assert shapes[0] == ("finetune", ("model", "roberta-large"), ("task", "classification-single-binary"), ("k", "#"),
                         ("seed", "#"), ("method", "ft-cls~lr-#~bs-#"))
    assert shapes[1][2] == ("task", "classification-pair-multi+ood") and shapes[1][-1] == ("sparsity", "#")
    assert shapes[2] == ("download_lmbff",)
    # the data rules see the reader, the others what the model sees; a task without OOD partners grafts without
    assert coverage.task_kind("mr", "download", PAPER) == coverage.task_kind("cr", "kshot", PAPER) == "lmbff:lmbff_csv"
    assert coverage.task_kind("qqp", "graft", PAPER) == "classification-pair-binary"
    assert coverage.task_kind("babi", "finetune", PAPER) == "generation-pair"
    cov = coverage.Coverage(grid=set(shapes), planned=set(shapes[:2]), executed=set(shapes[:2]))
    assert cov.line() == "paper job shapes executed: 2 of 3" and cov.missing == [shapes[2]] and cov.extra == []
