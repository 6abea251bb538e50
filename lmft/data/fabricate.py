"""Fabricated copies of the network sources, in their upstream formats, from a few rows each.

For the proxy run of the paper grid (``config/paper-proxy.yaml``, ``make paper-proxy``) and for tests:
every network source that ``config/paper.yaml`` reads, written where the offline error message
(:func:`lmft.data.download.fetch`) tells a user to place the real download, so that the download
jobs read them through the same readers as the real files. Never a stand-in for the data: the
texts are made up from a few words, a dozen rows per label.

What is written under ``data_dir/raw/_downloads/`` (:data:`FILES`), each in its upstream layout:

- ``datasets.tar``: LM-BFF's packed original data, as its ``data/download_dataset.sh`` fetches and
  untars it (``tar xvf datasets.tar`` in ``data/`` gives ``data/original/<TASK>/``) and its
  ``tools/generate_k_shot_data.py`` reads it: GLUE-style tasks (MNLI, MRPC, QNLI, QQP, RTE, SNLI,
  SST-2, STS-B, WNLI, CoLA) as ``<TASK>/train.tsv`` and ``dev.tsv`` (MNLI: ``dev_matched.tsv`` and
  ``dev_mismatched.tsv``) in GLUE's column layouts, with a header line but for CoLA; the others
  (sst-5, mr, cr, mpqa, subj, trec) as headerless ``<task>/train.csv`` and ``test.csv`` with the
  label in column 0 and the text in column 1.
- ``ag_news/{train,test}.csv``: Zhang et al.'s CSV, every field quoted: class index (1-4), title,
  description.
- ``amazon_review_full_csv.tgz``: Zhang et al.'s archive, ``amazon_review_full_csv/{train,test}.csv``
  (stars 1-5, title, review; every field quoted; line breaks in a review written as ``\\n``).
- ``xsum/{train,test}.parquet``: the hub's parquet conversion of EdinburghNLP/xsum (string columns
  ``document``, ``summary``, ``id``), one row with an empty document as the real data have.
- ``tasks_1-20_v1-2.tar.gz``: bAbI v1.2, ``tasks_1-20_v1-2/{en,en-10k}/qa1_single-supporting-fact_{train,test}.txt``
  (numbered lines; a question line is ``N question<TAB>answer<TAB>supporting line``).
- ``snli_1.0.zip``: Stanford's SNLI 1.0 archive, ``snli_1.0/snli_1.0_{train,dev,test}.jsonl``,
  one pair with gold label ``-`` (no consensus) per split as the real files have.

Every file is byte-for-byte the same on every call (fixed seeds, archive times and orders).
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import random
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from lmft.io import atomic_path

TRAIN_PER_LABEL = 12  # enough for k = 4 per label train + dev (LM-BFF's k-shot needs 2k) with rows to spare
TEST_PER_LABEL = 5
# Where each source goes under data_dir: the paths the readers (lmft.data.sources_network,
# lmft.data.sources_embedded.read_snli) and the download_lmbff rule fetch to, so the offline message's.
DOWNLOADS = Path("raw") / "_downloads"
FILES = {"lmbff": DOWNLOADS / "datasets.tar", "ag_news": DOWNLOADS / "ag_news",
         "amazon": DOWNLOADS / "amazon_review_full_csv.tgz", "xsum": DOWNLOADS / "xsum",
         "babi": DOWNLOADS / "tasks_1-20_v1-2.tar.gz", "snli": DOWNLOADS / "snli_1.0.zip"}

NOUNS = ("film", "story", "cast", "plot", "ending", "score", "camera", "phone", "battery", "screen", "team", "city")
TAILS = ("from start to finish", "in every scene", "for most of the hour", "at the end", "by any measure",
         "on the whole", "after a while", "in the second half", "to my surprise", "as expected")
# Five grades of sentiment (sst-5, amazon), two for the binary tasks (0 = the first two grades, 1 = the last two).
GRADES = (("terrible", "awful"), ("bad", "dull"), ("okay", "average"), ("good", "nice"), ("great", "superb"))
NAMES = ("Mary", "John", "Sandra", "Daniel")
PLACES = ("bathroom", "hallway", "kitchen", "garden", "office", "bedroom")
NLI = ("contradiction", "entailment", "neutral")


def _clauses(rng: random.Random) -> Iterator[tuple[str, str]]:
    """An endless stream of distinct (noun, tail) pairs in a seeded order."""
    combos = list(itertools.product(NOUNS, TAILS))
    rng.shuffle(combos)
    for i in itertools.count():
        noun, tail = combos[i % len(combos)]
        yield noun, tail if i < len(combos) else f"{tail} again ({i // len(combos)})"


def _review(grade: int, noun: str, tail: str, rng: random.Random) -> str:
    return f"the {noun} is {rng.choice(GRADES[grade])} {tail}"


class _Rows:
    """Seeded labelled texts for one source: ``rows(labels, per_label, make)`` lists ``(label, *texts)``
    with ``per_label`` rows of each label, labels interleaved as a shuffled file would have them."""

    def __init__(self, name: str):
        self.rng = random.Random(name)
        self.clauses = _clauses(self.rng)

    def rows(self, labels: list[str], per_label: int, make: Callable[..., tuple[str, ...]]) -> list[tuple[str, ...]]:
        out = [(lab, *make(lab, *next(self.clauses))) for _ in range(per_label) for lab in labels]
        self.rng.shuffle(out)
        return out


def _sentiment(grades: dict[str, int], rng: random.Random) -> Callable[..., tuple[str, ...]]:
    return lambda lab, noun, tail: (_review(grades[lab], noun, tail, rng),)


def _subj(lab: str, noun: str, tail: str) -> tuple[str, ...]:
    return (f"i think the {noun} feels wonderful {tail}",) if lab == "0" else (f"the {noun} follows a family {tail}",)


TREC_QUESTIONS = ("why is the {noun} so long", "what is the best {noun}", "what does {noun} stand for",
                  "who made the {noun}", "where is the {noun}", "how many people saw the {noun}")


def _trec(lab: str, noun: str, tail: str) -> tuple[str, ...]:
    return (TREC_QUESTIONS[int(lab)].format(noun=noun) + f" {tail} ?",)


def _nli(lab: str, noun: str, tail: str) -> tuple[str, ...]:
    """A premise and a hypothesis that ``lab`` (an NLI label, or WNLI's 1/0) relates."""
    premise = f"The {noun} was shown {tail} ."
    hypothesis = {"entailment": f"The {noun} was shown .", "contradiction": f"The {noun} was never shown .",
                  "neutral": f"The {noun} was shown to children ."}
    return premise, hypothesis[{"not_entailment": "contradiction", "1": "entailment", "0": "contradiction"}.get(lab, lab)]


def _pair(lab: str, noun: str, tail: str) -> tuple[str, ...]:
    a = f"How good is the {noun} {tail}?"
    return a, (f"Is the {noun} good {tail}?" if lab == "1" else f"Who paid for the {noun}?")


def _binary_parse(text: str) -> str:
    return "( " + " ".join(text.split()) + " )"


def _parse(text: str) -> str:
    return "(ROOT (S " + " ".join(f"(NN {w})" for w in text.split()) + "))"


def _tsv(header: list[str] | None, rows: list[list[str]]) -> bytes:
    lines = ([header] if header else []) + rows
    return "".join("\t".join(r) + "\n" for r in lines).encode("utf-8")


def _csv(rows: list[tuple[str, ...]], quote_all: bool = False) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def _nli_columns(kind: str, i: int, a: str, b: str, lab: str, dev: bool) -> list[str]:
    """A GLUE MNLI (``index promptID pairID genre``) or SNLI (``index captionID pairID``) row: four parses,
    sentence1, sentence2, label1 (dev: label1..label5), gold_label."""
    ids = [str(i), str(31193 + i), f"{31193 + i}{lab[0]}"] + (["fiction"] if kind == "MNLI" else [])
    return [*ids, _binary_parse(a), _binary_parse(b), _parse(a), _parse(b), a, b, *([lab] * (5 if dev else 1)), lab]


def _nli_header(kind: str, dev: bool) -> list[str]:
    ids = ["index", "promptID", "pairID", "genre"] if kind == "MNLI" else ["index", "captionID", "pairID"]
    labels = [f"label{j}" for j in range(1, 6)] if dev else ["label1"]
    return [*ids, "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
            "sentence1", "sentence2", *labels, "gold_label"]


def _glue_files(task: str) -> dict[str, bytes]:
    """One GLUE-style task folder of LM-BFF's archive: file name -> content."""
    rows = _Rows(task)
    split_names = ("train", "dev_matched", "dev_mismatched") if task == "MNLI" else ("train", "dev")
    out = {}
    for split in split_names:
        n = TRAIN_PER_LABEL if split == "train" else TEST_PER_LABEL
        dev = split != "train"
        if task == "SST-2":  # GLUE's SST-2 sentences are tokenised, lower-cased, and end in a space
            body = [[f"{t} ", lab] for lab, t in rows.rows(["0", "1"], n, _sentiment({"0": 0, "1": 4}, rows.rng))]
            out[split] = _tsv(["sentence", "label"], body)
        elif task == "CoLA":  # no header: source, label, the original's mark (* = unacceptable), sentence
            body = [["gj04", lab, "" if lab == "1" else "*", t]
                    for lab, t in rows.rows(["0", "1"], n, _sentiment({"0": 0, "1": 4}, rows.rng))]
            out[split] = _tsv(None, body)
        elif task == "MRPC":
            body = [[lab, str(702876 + i), str(702977 + i), a, b]
                    for i, (lab, a, b) in enumerate(rows.rows(["0", "1"], n, _pair))]
            out[split] = _tsv(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], body)
        elif task == "QQP":
            body = [[str(133273 + i), str(213221 + 2 * i), str(213222 + 2 * i), a, b, lab]
                    for i, (lab, a, b) in enumerate(rows.rows(["0", "1"], n, _pair))]
            out[split] = _tsv(["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], body)
        elif task == "STS-B":
            body = [[str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b,
                     "0.800" if lab == "0" else "3.800"] for i, (lab, a, b) in enumerate(rows.rows(["0", "1"], n, _pair))]
            out[split] = _tsv(["index", "genre", "filename", "year", "old_index", "source1", "source2",
                               "sentence1", "sentence2", "score"], body)
        elif task in ("MNLI", "SNLI"):
            body = [_nli_columns(task, i, a, b, lab, dev) for i, (lab, a, b) in enumerate(rows.rows(list(NLI), n, _nli))]
            out[split] = _tsv(_nli_header(task, dev), body)
        else:  # QNLI (index question sentence label), RTE and WNLI (index sentence1 sentence2 label)
            labels = ["0", "1"] if task == "WNLI" else ["entailment", "not_entailment"]
            cols = ["question", "sentence"] if task == "QNLI" else ["sentence1", "sentence2"]
            body = [[str(i), a, b, lab] for i, (lab, a, b) in enumerate(rows.rows(labels, n, _nli))]
            out[split] = _tsv(["index", *cols, "label"], body)
    return {f"{split}.tsv": data for split, data in out.items()}


CSV_TASKS: dict[str, tuple[list[str], Callable[[random.Random], Callable[..., tuple[str, ...]]]]] = {
    "sst-5": (["0", "1", "2", "3", "4"], lambda rng: _sentiment({str(g): g for g in range(5)}, rng)),
    "mr": (["0", "1"], lambda rng: _sentiment({"0": 1, "1": 3}, rng)),
    "cr": (["0", "1"], lambda rng: _sentiment({"0": 0, "1": 3}, rng)),
    "mpqa": (["0", "1"], lambda rng: _sentiment({"0": 1, "1": 4}, rng)),
    "subj": (["0", "1"], lambda rng: _subj),
    "trec": ([str(i) for i in range(6)], lambda rng: _trec),
}
GLUE_TASKS = ("CoLA", "MNLI", "MRPC", "QNLI", "QQP", "RTE", "SNLI", "SST-2", "STS-B", "WNLI")


def _csv_files(task: str) -> dict[str, bytes]:
    labels, make = CSV_TASKS[task]
    rows = _Rows(task)
    out = {}
    for split, n in (("train", TRAIN_PER_LABEL), ("test", TEST_PER_LABEL)):
        body = rows.rows(labels, n, make(rows.rng))
        if task == "mr" and split == "train":  # as the real files: a text with a comma and a quoted word
            lab, text = body[0]
            body[0] = (lab, f'{text} , "frankly" , as they say')
        out[f"{split}.csv"] = _csv(body)
    return out


def lmbff_members() -> dict[str, bytes]:
    """Member path -> content of the fabricated ``datasets.tar`` (``original/<TASK>/<file>``)."""
    out = {}
    for task in GLUE_TASKS:
        out |= {f"original/{task}/{name}": data for name, data in _glue_files(task).items()}
    for task in CSV_TASKS:
        out |= {f"original/{task}/{name}": data for name, data in _csv_files(task).items()}
    return out


TOPICS = {"1": ("world", "the president met the {noun} council {tail}"),
          "2": ("sports", "the {noun} team won the final {tail}"),
          "3": ("business", "shares of the {noun} company rose {tail}"),
          "4": ("tech", "a new {noun} chip was released {tail}")}


def ag_news_files() -> dict[str, bytes]:
    """``train.csv`` and ``test.csv`` of AG News (class index, title, description; all quoted)."""
    rows = _Rows("ag_news")

    def make(lab: str, noun: str, tail: str) -> tuple[str, ...]:
        word, text = TOPICS[lab]
        return f"{word.title()} news: {noun} (Reuters)", "Reuters - " + text.format(noun=noun, tail=tail) + "."

    out = {}
    for split, n in (("train", TRAIN_PER_LABEL), ("test", TEST_PER_LABEL)):
        body = rows.rows(list(TOPICS), n, make)
        lab, title, text = body[0]  # the real descriptions carry escapes and HTML entities
        body[0] = (lab, title, text.replace("the ", "the\\band#39;s ", 1))
        out[f"{split}.csv"] = _csv(body, quote_all=True)
    return out


def amazon_members() -> dict[str, bytes]:
    """Members of ``amazon_review_full_csv.tgz``: stars (1-5), title, review; all quoted."""
    rows = _Rows("amazon")

    def make(lab: str, noun: str, tail: str) -> tuple[str, ...]:
        return f"{rows.rng.choice(GRADES[int(lab) - 1])} {noun}", _review(int(lab) - 1, noun, tail, rows.rng) + "."

    out = {"amazon_review_full_csv/readme.txt": b"Amazon Review Full Score Dataset (fabricated rows)\n"}
    for split, n in (("train", TRAIN_PER_LABEL), ("test", TEST_PER_LABEL)):
        body = rows.rows(["1", "2", "3", "4", "5"], n, make)
        lab, _, review = body[0]
        body[0] = (lab, "", review + '\\nIt was "fine", I guess.')  # no title; an escaped line break
        out[f"amazon_review_full_csv/{split}.csv"] = _csv(body, quote_all=True)
    return out


def xsum_tables() -> dict[str, pd.DataFrame]:
    """``train`` and ``test`` of XSum's parquet conversion (document, summary, id; strings)."""
    rows = _Rows("xsum")
    out = {}
    for split, n in (("train", TRAIN_PER_LABEL), ("test", TEST_PER_LABEL)):
        docs, sums, ids = [], [], []
        for i in range(n):
            noun, tail = next(rows.clauses)
            sums.append(f"The {noun} council has approved a new plan {tail}.")
            docs.append(f"Officials said the {noun} plan would start soon.\nThe vote was close {tail}.\n"
                        f"Critics said the {noun} plan costs too much.")
            ids.append(str(35232142 + 100 * i + (split == "test")))
        if split == "train":  # the real splits hold a few rows with an empty document
            docs[-1] = ""
        out[split] = pd.DataFrame({"document": docs, "summary": sums, "id": ids})
    return out


def _babi_file(rng: random.Random, stories: int) -> bytes:
    """qa1 (single supporting fact): stories of 5 x (two moves, one question), numbered from 1."""
    lines = []
    for _ in range(stories):
        where: dict[str, tuple[str, int]] = {}
        n = 0
        for _ in range(5):
            for _ in range(2):
                n += 1
                who, place = rng.choice(NAMES), rng.choice(PLACES)
                where[who] = (place, n)
                lines.append(f"{n} {who} {rng.choice(('moved', 'went', 'journeyed'))} to the {place}.")
            n += 1
            who = rng.choice(sorted(where))
            lines.append(f"{n} Where is {who}? \t{where[who][0]}\t{where[who][1]}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def babi_members() -> dict[str, bytes]:
    """Members of ``tasks_1-20_v1-2.tar.gz``: qa1 in ``en`` (1k) and ``en-10k``, train and test."""
    rng = random.Random("babi")
    return {f"tasks_1-20_v1-2/{folder}/qa1_single-supporting-fact_{split}.txt": _babi_file(rng, stories)
            for folder in ("en", "en-10k") for split, stories in (("train", 3), ("test", 2))}


def snli_members() -> dict[str, bytes]:
    """Members of ``snli_1.0.zip``: JSON lines per split with SNLI's keys; one ``-`` gold label each."""
    rows = _Rows("snli_1.0")
    out = {}
    for split, n in (("train", TRAIN_PER_LABEL), ("dev", TEST_PER_LABEL), ("test", TEST_PER_LABEL)):
        records = []
        for i, (lab, a, b) in enumerate(rows.rows(list(NLI), n, _nli)):
            gold = "-" if i == 0 else lab
            records.append({"annotator_labels": [lab, lab, lab] if gold != "-" else list(NLI),
                            "captionID": f"{3416050480 + i}.jpg#{i % 5}", "gold_label": gold,
                            "pairID": f"{3416050480 + i}.jpg#{i % 5}r1{lab[0]}", "sentence1": a,
                            "sentence1_binary_parse": _binary_parse(a), "sentence1_parse": _parse(a),
                            "sentence2": b, "sentence2_binary_parse": _binary_parse(b), "sentence2_parse": _parse(b)})
        out[f"snli_1.0/snli_1.0_{split}.jsonl"] = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    return out


def _write_tar(members: dict[str, bytes], path: Path, gz: bool) -> None:
    """A tar (gzip'd with ``gz``) of ``members`` with their folders, fixed times: the same bytes every time."""
    folders = sorted({str(Path(m).parents[i]) for m in members for i in range(len(Path(m).parents) - 1)})
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        stream = gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) if gz else raw
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for folder in folders:
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for name, data in sorted(members.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        if gz:
            stream.close()


def _write_zip(members: dict[str, bytes], path: Path) -> None:
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(members.items()):
            z.writestr(zipfile.ZipInfo(name, date_time=(2015, 8, 1, 0, 0, 0)), data)


def _write_bytes(data: bytes, path: Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_sources(data_dir: Path | str) -> dict[str, Path]:
    """Write every fabricated source under ``data_dir`` (:data:`FILES`); returns source -> path."""
    root = Path(data_dir)
    paths = {name: root / rel for name, rel in FILES.items()}
    _write_tar(lmbff_members(), paths["lmbff"], gz=False)
    for name, data in ag_news_files().items():
        _write_bytes(data, paths["ag_news"] / name)
    _write_tar(amazon_members(), paths["amazon"], gz=True)
    for split, df in xsum_tables().items():
        with atomic_path(paths["xsum"] / f"{split}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
    _write_tar(babi_members(), paths["babi"], gz=True)
    _write_zip(snli_members(), paths["snli"])
    return paths


def corpus() -> list[str]:
    """Every text of the fabricated sources (to train the proxy's tiny tokenizers on)."""
    texts: list[str] = []
    blobs = [*lmbff_members().values(), *ag_news_files().values(), *amazon_members().values(),
             *babi_members().values(), *snli_members().values()]
    texts += [b.decode("utf-8") for b in blobs]
    texts += [t for df in xsum_tables().values() for col in ("document", "summary") for t in df[col]]
    return texts
