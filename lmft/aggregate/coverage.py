"""Which job shapes of a grid a proxy run executed (issue 18: the paper grid at proxy scale).

A *job shape* is a job with what only sizes it abstracted away: its rule, and its wildcards with
every number (``k``, ``seed``, ``row``, ``col``, ``sparsity``, the values in a grid trial's name
``ft~lr-1e-05~bs-8``) written ``#`` and each task name replaced by its *kind*:

- for the data rules (``download``, ``kshot``, ``kshot_examples``), the reader that parses its
  source (``lmbff:glue_tsv``, ``lmbff:lmbff_csv``, ``ag_news``, ``snli``, ...);
- for every other rule, what the model stages see of it: ``classification-{single|pair}-{binary|multi}``
  (one or two texts; two labels or more) or ``generation-{single|pair}``; a graft job's kind adds
  ``+ood`` when the config scores its grafts on other tasks' test sets.

Model, method, prompt, split, formula and pair names stay as they are. A rule's params are
functions of its wildcards and of the config, so two jobs of one shape run the same code with
other sizes, as long as the proxy config changes nothing but sizes and sources:
:func:`overlay_changes` checks that of an overlay (``config/paper-proxy.yaml``).

``python -m lmft.aggregate.coverage --workdir DIR --configfile config/paper.yaml --overlay config/paper-proxy.yaml``
plans the grid (a Snakemake dry run in an empty folder: every job), lists the jobs of the proxy run
in ``DIR`` (a dry run with ``--forceall``) and counts as executed those whose benchmark file
exists (Snakemake writes it when the job succeeds). It prints ``paper job shapes executed: X of Y``
and the shapes not executed, and exits 1 unless X = Y and the overlay changes sizes and sources only.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmft.io import LmftError

ROOT = Path(__file__).resolve().parents[2]
DATA_RULES = ("download", "kshot", "kshot_examples")
NUMERIC_WILDCARDS = ("k", "seed", "row", "col", "sparsity")
GRID_VALUE = re.compile(r"(~[A-Za-z_]+-)[^~]+")  # a trial's value in a run name (lmft.finetune.grid)
# Keys an overlay may change besides numbers: where the data and models come from, which device runs
# them, and which tasks / k / seeds a section or method runs on (names of tasks are abstracted away).
SOURCE_KEYS = ("source", "device")
SIZE_KEYS = ("tasks", "k", "seeds")


@dataclass(frozen=True)
class Job:
    """One job of a dry run: its rule, wildcards and benchmark file (relative to the workdir)."""

    rule: str
    wildcards: tuple[tuple[str, str], ...] = ()
    benchmark: str | None = None


@dataclass
class Coverage:
    """The shapes of the grid, of the proxy's jobs, and of those the proxy executed."""

    grid: set[tuple] = field(default_factory=set)
    planned: set[tuple] = field(default_factory=set)
    executed: set[tuple] = field(default_factory=set)

    @property
    def missing(self) -> list[tuple]:
        return sorted(self.grid - self.executed)

    @property
    def extra(self) -> list[tuple]:
        """Shapes the proxy planned that the grid has not (an overlay that changed more than sizes)."""
        return sorted(self.planned - self.grid)

    def line(self) -> str:
        return f"paper job shapes executed: {len(self.grid & self.executed)} of {len(self.grid)}"


def parse_dry_run(text: str) -> list[Job]:
    """The jobs of ``snakemake -n`` output (``all`` left out), in the order printed."""
    jobs: list[Job] = []
    rule, fields = None, {}

    def flush() -> None:
        if rule is not None and rule != "all":
            wildcards = tuple(tuple(part.split("=", 1)) for part in fields.get("wildcards", "").split(", ") if part)
            jobs.append(Job(rule, wildcards, fields.get("benchmark")))

    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\S+):$", line.strip())
        if m:
            flush()
            rule, fields = m.group(1), {}
            continue
        m = re.match(r"^\s+(wildcards|benchmark): (.*)$", line)
        if m and rule is not None:
            fields[m.group(1)] = m.group(2).strip()
    flush()
    return jobs


def task_kind(task: str, rule: str, config: Mapping[str, Any]) -> str:
    """A task name abstracted for ``rule`` (see the module doc)."""
    from lmft.data.tasks import get_task

    t = get_task(task, dict(config))
    src = t.source
    if rule in DATA_RULES:
        return f"{src['kind']}:{src['format']}" if src.get("kind") == "lmbff" else src.get("kind", "?")
    texts = "pair" if t.pair else "single"
    if t.kind == "generation":
        return f"generation-{texts}"
    kind = f"classification-{texts}-{'binary' if t.num_labels == 2 else 'multi'}"
    if rule.startswith("graft") and ((config.get("graft") or {}).get("ood") or {}).get(task):
        kind += "+ood"
    return kind


def shape(job: Job, config: Mapping[str, Any]) -> tuple:
    """``(rule, (wildcard, abstracted value), ...)`` of a job (see the module doc)."""
    out = []
    for key, value in job.wildcards:
        if key in NUMERIC_WILDCARDS:
            value = "#"
        elif key == "task":
            value = task_kind(value, job.rule, config)
        elif key == "method":
            value = GRID_VALUE.sub(r"\1#", value)
        out.append((key, value))
    return (job.rule, *out)


def offline_env() -> dict[str, str]:
    """The environment of a Snakemake run of this repository's workflow: offline, this ``lmft`` first on the path."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": path}


def dry_run(configfiles: Iterable[Path | str], workdir: Path, *extra: str) -> list[Job]:
    """The jobs Snakemake plans for ``configfiles`` in ``workdir`` (offline)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, configfiles), "-n", "--cores", "1", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=offline_env())
    if proc.returncode:
        raise LmftError(f"dry run of {' '.join(map(str, configfiles))} failed:\n{proc.stderr[-3000:]}")
    return parse_dry_run(proc.stdout + proc.stderr)


def load_yaml(path: Path | str) -> dict[str, Any]:
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise LmftError(f"{path}: cannot read the config ({e})") from e


def merged(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``overlay`` as ``snakemake --configfile base overlay`` does (nested keys recursively)."""
    from snakemake.utils import update_config

    out = copy.deepcopy(dict(base))
    update_config(out, copy.deepcopy(dict(overlay)))
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def overlay_changes(base: Any, new: Any, where: str = "") -> list[str]:
    """The changes from ``base`` to ``new`` (a config and the config with an overlay) that are not sizes
    or sources: a number may become another, a list of numbers another list of numbers; a ``source`` or
    ``device`` anything; a ``tasks``/``k``/``seeds`` list another list. Returns ``"key: old -> new"`` lines."""
    key = where.rsplit(".", 1)[-1]
    if base == new or key in SOURCE_KEYS or (key in SIZE_KEYS and isinstance(new, list)):
        return []
    if _is_number(base) and _is_number(new):
        return []
    if isinstance(base, list) and isinstance(new, list) and all(map(_is_number, [*base, *new])):
        return []
    if isinstance(base, Mapping) and isinstance(new, Mapping):
        out = []
        for k in new:
            if k in base:
                out += overlay_changes(base[k], new[k], f"{where}.{k}" if where else str(k))
            elif not (_is_number(new[k]) or k in SIZE_KEYS or k in SOURCE_KEYS or
                      (isinstance(new[k], list) and all(map(_is_number, new[k])))):
                out.append(f"{where}.{k}: (unset) -> {new[k]!r}")
        return out
    return [f"{where}: {base!r} -> {new!r}"]


def coverage(grid_config: Path, overlay: Path, workdir: Path) -> Coverage:
    """Plan the grid, list the proxy's jobs in ``workdir`` and count the shapes (see the module doc)."""
    base = load_yaml(grid_config)
    config = merged(base, load_yaml(overlay))
    with tempfile.TemporaryDirectory(prefix="lmft-grid-") as empty:
        grid_jobs = dry_run([grid_config], Path(empty))
    proxy_jobs = dry_run([grid_config, overlay], workdir, "--forceall")
    ran = [j for j in proxy_jobs if j.benchmark and (workdir / j.benchmark).is_file()]
    return Coverage(grid={shape(j, base) for j in grid_jobs}, planned={shape(j, config) for j in proxy_jobs},
                    executed={shape(j, config) for j in ran})


def _show(s: tuple) -> str:
    return s[0] + "(" + ", ".join(f"{k}={v}" for k, v in s[1:]) + ")"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=Path, help="the proxy run's folder (snakemake --directory)")
    parser.add_argument("--configfile", default=ROOT / "config/paper.yaml", type=Path)
    parser.add_argument("--overlay", default=ROOT / "config/paper-proxy.yaml", type=Path)
    args = parser.parse_args(argv)
    changes = overlay_changes(load_yaml(args.configfile), merged(load_yaml(args.configfile), load_yaml(args.overlay)))
    for line in changes:
        print(f"overlay changes more than sizes and sources: {line}")
    cov = coverage(args.configfile, args.overlay, args.workdir.resolve())
    for s in cov.missing:
        print(f"not executed: {_show(s)}")
    for s in cov.extra:
        print(f"planned by the proxy, not by the grid: {_show(s)}")
    print(cov.line())
    return 0 if not changes and not cov.missing else 1


if __name__ == "__main__":
    sys.exit(main())
