"""Plumbing shared by the workflow scripts and the stages: logging to the rule's log file, threads,
clean errors, the job's device and its peak memory."""

from __future__ import annotations

import logging
import os
import resource
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmft.io import LmftError

if TYPE_CHECKING:
    import torch


def setup_logging(path: str | None = None) -> None:
    """Log to ``path`` (the rule's ``log:`` file) and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)


def run_script(main: Callable[[Any], None], smk: Any) -> None:
    """Run a workflow script's ``main(snakemake)``: logging, thread count, the config's method plugins
    (:func:`lmft.finetune.methods.load_plugins`: any job may read a run of a plugin's type), and a one-line error.

    A :class:`LmftError` (bad config, data or artifact) is logged as one clear line and the job
    fails; anything else keeps its traceback, since it is a bug.
    """
    setup_logging(smk.log[0] if len(smk.log) else None)
    import torch

    from lmft.finetune.methods import load_plugins

    torch.set_num_threads(max(1, int(getattr(smk, "threads", 1) or 1)))
    try:
        load_plugins(smk.config)
        main(smk)
    except LmftError as e:
        logging.getLogger("lmft").error("%s", e)
        sys.exit(1)


def resolve_device(device: str) -> torch.device:
    """The job's device: ``auto`` is the GPU where torch sees one, else the CPU."""
    import torch  # deferred: the scripts that never touch a model start without it

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LmftError(f"device {device!r} requested but torch sees no CUDA GPU")
    return torch.device(device)


def peak_mem_mb(device: torch.device) -> float:
    """Peak memory of the job: CUDA memory allocated on a GPU, else the process's peak resident set."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
