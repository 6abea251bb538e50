"""Readers of the sources whose files come from the network: LM-BFF's packed original data (the
seeds' tasks), AG News and Amazon reviews (classification), XSum and bAbI (generation).

- ``lmbff``: LM-BFF's packed original data (``data/raw/_lmbff/original/{dir}``, extracted by the
  ``download_lmbff`` job), GLUE-style TSV (the original dev set is the test set, as in LM-BFF) or
  headerless ``label,text`` CSV.
- ``ag_news``: the CSV of Zhang et al. (2015).
- ``amazon``: Amazon reviews, 1-5 stars, the CSV of Zhang et al. (2015) (``title review`` is the
  text).
- ``xsum`` (generation): XSum's official train and test splits; the rare rows with an empty
  document or summary are dropped and their ids recorded.
- ``babi`` (generation): one bAbI v1.2 task (``subtask``, ``lang``); per question, ``text_a`` is the
  story's statements so far, ``text_b`` the question, the target the answer.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from lmft.data.download import AG_NEWS_URLS, AMAZON_URL, BABI_URL, XSUM_URLS, fetch_or_reuse
from lmft.data.frames import classification_frame, generation_frame, normalise_text
from lmft.data.tasks import GenerationTask, Task
from lmft.io import LmftError


def lmbff_root(data_dir: Path) -> Path:
    return data_dir / "raw" / "_lmbff" / "original"


def _glue_tsv(path: Path, src: dict[str, Any]) -> pd.DataFrame:
    if not path.is_file():
        raise LmftError(f"{path}: not found; the LM-BFF data archive is incomplete")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]  # header
    rows = [line.split("\t") for line in lines if line.strip()]
    a, b, lab = src["a"], src.get("b"), src["label"]
    try:
        return classification_frame(str(path), [r[a] for r in rows], [r[lab] for r in rows],
                                    [r[b] for r in rows] if b is not None else None)
    except IndexError as e:
        bad = next(i for i, r in enumerate(rows) if len(r) <= max(a, lab, b or 0))
        raise LmftError(f"{path}: row {bad + 2} has {len(rows[bad])} tab-separated fields") from e


def _lmbff_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise LmftError(f"{path}: not found; the LM-BFF data archive is incomplete")
    df = pd.read_csv(path, header=None)
    return classification_frame(str(path), df.iloc[:, 1], df.iloc[:, 0])


def read_lmbff(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
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


def read_ag_news(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    folder = data_dir / "raw" / "_downloads" / "ag_news"
    frames = {}
    for split, url in AG_NEWS_URLS.items():
        path = folder / f"{split}.csv"
        fetch_or_reuse(url, path, task.name)
        df = pd.read_csv(path, header=None)
        frames[split] = classification_frame(str(path), df.iloc[:, 1].astype(str) + " " + df.iloc[:, 2].astype(str),
                                             df.iloc[:, 0])
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


def _tar_splits(url: str, archive: Path, task: str, member: Callable[[str], str],
                read: Callable[[IO[bytes], str], pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], str]:
    """Fetch (or reuse) a tar archive and read its train and test files: ``member(split)`` names the
    file, ``read(file, where)`` parses it. Returns the two tables and the archive's sha256."""
    digest = fetch_or_reuse(url, archive, task)
    with _open_tar(archive) as tar:
        frames = {split: read(_tar_member(tar, member(split), archive), f"{archive}:{member(split)}")
                  for split in ("train", "test")}
    return frames, digest


def _amazon_frame(f: IO[bytes], where: str) -> pd.DataFrame:
    try:  # label, title, review; a review may have no title
        df = pd.read_csv(f, header=None, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, ValueError) as e:
        raise LmftError(f"{where}: cannot parse as CSV: {e}") from e
    if df.shape[1] != 3:
        raise LmftError(f"{where}: {df.shape[1]} columns, expected 3 (label, title, review)")
    return classification_frame(where, df[1] + " " + df[2], df[0])


def read_amazon(task: Task, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    archive = data_dir / "raw" / "_downloads" / "amazon_review_full_csv.tgz"
    frames, digest = _tar_splits(AMAZON_URL, archive, task.name, lambda split: f"amazon_review_full_csv/{split}.csv",
                                 _amazon_frame)
    return frames["train"], frames["test"], {"source": "network:amazon_review_full_csv", "path": str(archive),
                                             "test_cap_style": "csv", "sha256": {archive.name: digest}}



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
    table = generation_frame(str(path), kept["document"], kept["summary"], id=kept["id"].astype(str))
    return table, df.loc[empty, "id"].astype(str).tolist()


def read_xsum(task: GenerationTask, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
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
    return generation_frame(where, pd.Series(contexts, index=lines, name="story"), answers,
                            pd.Series(questions, name="question"), line=[i + 1 for i in lines])


def read_babi(task: GenerationTask, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    src = task.source
    archive = data_dir / "raw" / "_downloads" / "tasks_1-20_v1-2.tar.gz"
    frames, digest = _tar_splits(BABI_URL, archive, task.name,
                                 lambda split: f"tasks_1-20_v1-2/{src['lang']}/{src['subtask']}_{split}.txt",
                                 lambda f, where: _babi_frame(f.read().decode("utf-8"), where))
    return frames["train"], frames["test"], {"source": f"network:babi-v1.2 {src['lang']}/{src['subtask']}",
                                             "path": str(archive), "sha256": {archive.name: digest}}
