"""The peak memory *increase* during a block of code, measured the same way on every device that allows it.

    with PeakIncrease(device) as peak:
        ...                       # the block
    peak.mb                       # MB above the level at entry, or None where it cannot be measured

What is measured, by device (:func:`measure_name` names it, for the artifacts):

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at entry, minus
  ``memory_allocated`` at entry: the tensors the block allocated on top of those it found (the
  caching allocator's reserve and the CUDA context are not in it).
- CPU on Linux: the peak resident set (``VmHWM`` of ``/proc/self/status``) after resetting it to
  the current resident set (writing ``5`` to ``/proc/self/clear_refs``), minus ``VmRSS`` at entry.
  glibc keeps freed heap blocks in the process (they stay resident), and a block that reuses them
  does not raise the resident set: measured on this project's machine, 100 MB allocated as 1 MB
  tensors after 200 MB of such tensors had been freed showed as 91 MB. So the entry first returns
  the free pages to the system (``malloc_trim(0)``, glibc only); then the same block shows 99.6 MB,
  and a 300 MB tensor 301.5 MB. The resident set counts whole pages, all threads and code pages
  mapped for the first time (run a warm-up before measuring), so small blocks read within a few
  hundred KB.
- Elsewhere (macOS, Windows, other accelerators, a /proc that refuses the reset): not measured
  (``mb`` is None); ``ru_maxrss`` there is the lifetime peak, which says nothing about the block.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import TracebackType

import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
CUDA_MEASURE = "cuda max_memory_allocated - memory_allocated at entry"
LINUX_MEASURE = "linux VmHWM - VmRSS at entry (peak reset by /proc/self/clear_refs)"
NOT_MEASURED = "not measured"


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{_STATUS}: no field {field}")


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows: nothing to trim, or no way to)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


@cache
def _linux_peak_resettable() -> bool:
    """Whether this process can reset its peak resident set (Linux with /proc; some sandboxes refuse)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        _CLEAR_REFS.write_text("5")
        _status_bytes("VmHWM")
    except OSError:
        return False
    return True


def measure_name(device: torch.device | str) -> str:
    """The measure that :class:`PeakIncrease` takes on ``device``, or :data:`NOT_MEASURED`."""
    device = torch.device(device)
    if device.type == "cuda":
        return CUDA_MEASURE
    if device.type == "cpu" and _linux_peak_resettable():
        return LINUX_MEASURE
    return NOT_MEASURED


class PeakIncrease:
    """Context manager: the peak memory increase of its block on ``device`` (see the module doc).

    ``bytes`` and ``mb`` are None until the block has ended, and stay None where the device's
    memory is not measured. Entering collects garbage (and, on the CPU, trims glibc's heap), so
    that what the block frees and allocates again is seen.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.measure = measure_name(self.device)
        self.bytes: int | None = None
        self._base = 0

    def __enter__(self) -> PeakIncrease:
        gc.collect()
        if self.measure == CUDA_MEASURE:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.measure == LINUX_MEASURE:
            trim = _malloc_trim()
            if trim is not None:
                trim(0)
            _CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
            self._base = _status_bytes("VmRSS")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.measure == CUDA_MEASURE:
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.measure == LINUX_MEASURE:
            self.bytes = max(0, _status_bytes("VmHWM") - self._base)  # the counters lag by a few pages: never below 0

    @property
    def mb(self) -> float | None:
        return None if self.bytes is None else self.bytes / 2**20
