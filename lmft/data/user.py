"""User tasks (source kind ``user``): a CSV, TSV, JSONL or parquet file of the user's, read with
errors that name the file and the row, and its test set from ``test_path`` or a holdout."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from lmft.data.frames import check_labels, classification_frame, generation_frame, holdout
from lmft.data.tasks import AnyTask, GenerationTask
from lmft.io import LmftError


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
        return generation_frame(str(path), df[src["text_columns"][0]], df[last], text_b)
    frame = classification_frame(str(path), df[src["text_columns"][0]], df[last], text_b)
    check_labels(frame, task, str(path))  # here, before a holdout renumbers the rows
    return frame


def read_user(task: AnyTask, data_dir: Path, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    src = task.source
    data = _user_frame(Path(src["path"]), task)
    if src.get("test_path"):
        train, test = data, _user_frame(Path(src["test_path"]), task)
    else:
        train, test = holdout(data)
    info = {"source": "user", "path": str(src["path"])}
    return train, test, info if isinstance(task, GenerationTask) else info | {"test_cap_style": "glue"}

