"""The paper grid at proxy scale (issue 18): what its run needs that no network may give it.

``python -m lmft.aggregate.proxy setup DIR`` prepares the folder ``DIR`` that the proxy run's workflow runs
in (``snakemake --directory DIR --configfile config/paper.yaml config/paper-proxy.yaml``):

- the fabricated network sources (:func:`lmft.data.fabricate.write_sources`) under the config's
  ``data_dir`` in ``DIR``, where the offline error messages say to put the downloads;
- a tiny random model (:func:`lmft.models.tiny.build`) for each model of the overlay whose source is
  a local folder, of the family of the grid's hub model of that name (:data:`TINY`), its tokenizer
  trained on the fabricated texts.

Both are the same bytes on every call.
``python -m lmft.aggregate.proxy run DIR [--cores N] [snakemake options]`` (``make paper-proxy``) sets up
``DIR``, runs the workflow there offline and prints the job shapes it executed
(:mod:`lmft.aggregate.coverage`): ``paper job shapes executed: X of Y``; it exits non-zero unless X = Y.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmft.io import LmftError

ROOT = Path(__file__).resolve().parents[2]
# hub model of the grid -> (family, layers, hidden size) of its tiny stand-in; large is a little larger
TINY: dict[str, tuple[str, int, int]] = {"roberta-base": ("roberta", 2, 32), "roberta-large": ("roberta", 3, 48),
                                         "gpt2-medium": ("gpt2", 4, 32)}


def tiny_models(grid: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, tuple[str, str, int, int]]:
    """Model name -> (folder, family, layers, hidden) for each model the overlay sources from a local folder."""
    out = {}
    for name, entry in (overlay.get("models") or {}).items():
        hub = ((grid.get("models") or {}).get(name) or {}).get("source")
        if hub not in TINY:
            raise LmftError(f"config: models.{name}: the grid's source {hub!r} has no tiny stand-in; known: {sorted(TINY)}")
        out[name] = (entry["source"], *TINY[hub])
    return out


def setup(workdir: Path | str, grid: Mapping[str, Any], overlay: Mapping[str, Any]) -> None:
    """Write the fabricated sources and build the tiny models in ``workdir`` (see the module doc)."""
    from lmft.aggregate.coverage import merged
    from lmft.data.fabricate import corpus, write_sources
    from lmft.models.tiny import build

    workdir = Path(workdir)
    write_sources(workdir / merged(grid, overlay).get("data_dir", "data"))
    texts = corpus()
    for seed, (name, (folder, family, layers, hidden)) in enumerate(sorted(tiny_models(grid, overlay).items())):
        build(family, workdir / folder, texts, layers=layers, hidden=hidden, seed=seed)
        print(f"{name}: tiny {family} ({layers} layers x {hidden}) in {workdir / folder}")


def run(workdir: Path, grid_config: Path, overlay: Path, cores: str = "all", extra: Sequence[str] = ()) -> int:
    """Set up ``workdir``, run the workflow there offline (``snakemake --profile profiles/local``), then print
    the coverage (:func:`lmft.aggregate.coverage.main`). Returns 0 when the run succeeded and executed every
    shape."""
    from lmft.aggregate.coverage import load_yaml, offline_env
    from lmft.aggregate.coverage import main as coverage_main

    setup(workdir, load_yaml(grid_config), load_yaml(overlay))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--profile", str(ROOT / "profiles/local"),
           "--directory", str(workdir), "--configfile", str(grid_config), str(overlay), "--cores", cores, *extra]
    started = time.perf_counter()
    code = subprocess.run(cmd, env=offline_env()).returncode
    print(f"proxy run: snakemake exited {code} after {time.perf_counter() - started:.0f} s")
    return code or coverage_main(["--workdir", str(workdir), "--configfile", str(grid_config), "--overlay", str(overlay)])


def main(argv: list[str] | None = None) -> int:
    from lmft.aggregate.coverage import load_yaml

    parser = argparse.ArgumentParser(description="The paper grid at proxy scale: prepare its folder, or run it")
    parser.add_argument("command", choices=["setup", "run"], help="setup: fabricated sources and tiny models; "
                        "run: setup, the workflow, then the job-shape coverage")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--configfile", default=ROOT / "config/paper.yaml", type=Path)
    parser.add_argument("--overlay", default=ROOT / "config/paper-proxy.yaml", type=Path)
    parser.add_argument("--cores", default="all", help="snakemake --cores (run)")
    args, extra = parser.parse_known_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.command == "run":
        return run(args.workdir.resolve(), args.configfile.resolve(), args.overlay.resolve(), args.cores, extra)
    setup(args.workdir, load_yaml(args.configfile), load_yaml(args.overlay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
