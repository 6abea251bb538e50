"""C kernels that ship as source in the package, built on first use with the system's C compiler.

``load(path)`` compiles ``path`` (a ``.c`` file) into a shared library in a cache folder
(``$LMFT_CACHE_DIR/native``, default ``~/.cache/lmft/native``), named by a hash of the source, the
flags, the compiler and the CPU's feature flags (the code is built for the CPU it runs on), so
each machine builds it once (about a second) and parallel jobs share it: the library is written
to a temporary file and renamed. Where no compiler is found, the build fails, or
``LMFT_NATIVE=0`` is set, it returns None and the caller keeps its torch path: the kernels are
an optimisation that must give the torch path's bits, never a requirement.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC")


def cache_dir() -> Path:
    return Path(os.environ.get("LMFT_CACHE_DIR") or Path.home() / ".cache" / "lmft") / "native"


def _cpu() -> str:
    """The CPU's feature flags (``-march=native`` code may not run on another CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


def enabled() -> bool:
    return os.environ.get("LMFT_NATIVE", "1") != "0"


@functools.cache
def load(source: Path) -> ctypes.CDLL | None:
    """The library built from ``source``, or None (with a warning that says why, once)."""
    if not enabled():
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        warnings.warn(f"lmft: no C compiler (cc, gcc, clang; or $CC) to build {source.name}: "
                      "using the slower torch path", RuntimeWarning, stacklevel=2)
        return None
    text = source.read_bytes()
    key = hashlib.sha256(b"\0".join([text, " ".join(FLAGS).encode(), cc.encode(), _cpu().encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    lib = cache_dir() / f"{source.stem}-{key}.so"
    try:
        if not lib.exists():
            lib.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
                built = Path(tmp) / lib.name
                run = subprocess.run([cc, *FLAGS, "-o", str(built), str(source)], capture_output=True, text=True)
                if run.returncode:
                    warnings.warn(f"lmft: building {source.name} with {cc} failed ({run.stderr.strip()[-400:]}): "
                                  "using the slower torch path", RuntimeWarning, stacklevel=2)
                    return None
                os.replace(built, lib)
        return ctypes.CDLL(str(lib))
    except OSError as e:
        warnings.warn(f"lmft: cannot build or load {source.name} in {lib.parent} ({e}): using the slower torch path",
                      RuntimeWarning, stacklevel=2)
        return None
