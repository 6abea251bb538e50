"""Atomic, checked reading and writing of every artifact the pipeline produces.

Every writer goes through :func:`atomic_path`: the data land in a temporary file next to the
target and are renamed over it only once complete, so a killed job never leaves a file that
looks finished. Every reader turns a missing, truncated or corrupt file into an
:class:`ArtifactError` that names the file instead of a stack trace from deep inside a library.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch


class LmftError(Exception):
    """A user-facing error: bad config, bad data or a bad artifact. The message says what to fix."""


class ArtifactError(LmftError):
    """A file the pipeline needs is missing, truncated or corrupt."""


PathLike = str | os.PathLike
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(obj: Any, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_json(path: PathLike) -> Any:
    path = Path(path)
    _require(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); delete it and rerun the job that made it") from e


def write_parquet(df: pd.DataFrame, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_parquet(path: PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a parquet artifact; ``columns`` are required to be present."""
    path = Path(path)
    _require(path)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for truncated files
        raise ArtifactError(f"{path}: not a readable parquet file ({e}); delete it and rerun the job that made it") from e
    missing = [c for c in columns or [] if c not in df.columns]
    if missing:
        raise ArtifactError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def save_tensors(tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    _require(path)
    try:
        return load_file(str(path))
    except Exception as e:
        raise ArtifactError(f"{path}: not a readable safetensors file ({e}); delete it and rerun the job that made it") from e


def load_tensor_metadata(path: PathLike) -> dict[str, str]:
    from safetensors import safe_open

    path = Path(path)
    _require(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise ArtifactError(f"{path}: not a readable safetensors file ({e})") from e


def torch_save(obj: Any, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def torch_load(path: PathLike) -> Any:
    """Load a ``torch.save`` artifact made by this pipeline (tensors, tuples, dicts of them)."""
    path = Path(path)
    _require(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ArtifactError(f"{path}: not a readable torch file ({e}); delete it and rerun the job that made it") from e


def _require(path: Path) -> None:
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{path}: file is empty (an interrupted write?); delete it and rerun the job that made it")
