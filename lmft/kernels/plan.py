"""The kernel stage's part of the plan (:mod:`lmft.plan`): the ``kernels:`` section resolved, the solve
jobs and their targets, and the memory a shard job needs.

A kernel is keyed by (model, task, k, seed, formula, prompt, split): rows are always the training
examples, columns the split's examples. Every key of ``kernels:`` and its default is in the
config schema; ``models``, ``tasks``, ``k`` and ``seeds`` default to all of the config's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmft.data.tasks import Task, get_task
from lmft.io import LmftError, PathLike
from lmft.kernels.formulas import FORMULAS, PROMPTS
from lmft.kernels.solvers import LAM, SOLVERS
from lmft.kernels.tile_jacobians import TILE
from lmft.paths import kernel_solve_dir, kernel_solve_metrics
from lmft.schema import section, with_defaults

# The settings a shard job computes with (its rule's params, :func:`shard_settings`), besides those resolved
# for its task and split: what its numbers depend on, and how it computes them (batch sizes, device and
# mem_mb give the same kernel, bit for bit on the CPU but for float64 rounding of the dense blocks' sums).
SHARD_KEYS = ("formulas", "mode", "freeze_embeddings", "method", "head_batch_size", "head_max_iter", "row_shards",
              "row_batch", "col_batch", "mem_mb", "device")


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's ``kernels`` section with the schema's defaults and solver entries resolved.

    ``solvers`` entries are a solver name or ``{name, grid, f0_scaling, lam}``; they become a
    name -> options mapping. ``models``, ``tasks``, ``k`` and ``seeds`` become lists (all of the
    config's when unset). Raises on a solver, formula or prompt the stage does not know, and on a
    model, task or k the config does not have.
    """
    out = section(config, "kernels")
    for f in out["formulas"]:
        if f not in FORMULAS:
            raise LmftError(f"kernels.formulas: unknown formula {f!r}; one of {', '.join(FORMULAS)}")
    for p in out["prompt"]:
        if p not in PROMPTS:
            raise LmftError(f"kernels.prompt: unknown setting {p!r}; one of {', '.join(PROMPTS)}")
    out["solvers"] = solver_specs(out["solvers"])
    kshot = section(config, "kshot")
    for key, known in (("models", list(config.get("models") or {})), ("tasks", list(config.get("tasks") or [])),
                       ("k", list(kshot["k"])), ("seeds", list(kshot["seeds"]))):
        chosen = list(known if out[key] is None else out[key])
        for name in chosen:
            if name not in known:
                raise LmftError(f"kernels.{key} names {name!r}, not one of the config's {key}: {known}")
        out[key] = chosen
    return out


def solver_specs(entries: Sequence[str | Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``[name | {name, grid, f0_scaling, lam}]`` -> name -> ``{grid, f0_scaling, lam}`` (None = solver default)."""
    specs: dict[str, dict[str, Any]] = {}
    for entry in entries:
        spec = {"name": entry} if isinstance(entry, str) else dict(entry)
        name = spec.pop("name", None)
        if name not in SOLVERS:
            raise LmftError(f"kernels.solvers: unknown solver {name!r}; one of {', '.join(SOLVERS)}")
        if name in specs:
            raise LmftError(f"kernels.solvers: {name!r} is listed twice")
        unknown = sorted(set(spec) - {"grid", "f0_scaling", "lam"})
        if unknown:
            raise LmftError(f"kernels.solvers.{name}: unknown option(s) {unknown}; known: grid, f0_scaling, lam")
        if not SOLVERS[name].uses_f0 and spec.get("f0_scaling") is not None:
            raise LmftError(f"kernels.solvers.{name}: this solver does not use f0; unset f0_scaling")
        specs[name] = {"grid": spec.get("grid"), "f0_scaling": spec.get("f0_scaling"), "lam": spec.get("lam", LAM)}
    return specs


def is_binary(task: Task, binary: bool) -> bool:
    """Whether the task's kernel is of the logit difference: ``binary`` set and two classes."""
    return bool(binary) and task.num_labels == 2


def num_logits(task: Task, binary: bool) -> int:
    return 1 if is_binary(task, binary) else task.num_labels


def solver_applies(solver: str, formula: str, task: Task, binary: bool) -> bool:
    """A stacked solver (asym) needs a binary kernel of a stacked formula; the others take any kernel."""
    return not SOLVERS[solver].stacked or (FORMULAS[formula].stacked and is_binary(task, binary))


def col_shards(cfg: Mapping[str, Any], split: str) -> int:
    """Column shards of ``split``: ``col_shards`` is one number or a ``{train, dev, test}`` mapping."""
    value = cfg["col_shards"]
    return int(value.get(split, 1)) if isinstance(value, Mapping) else int(value)


def shard_settings(cfg: Mapping[str, Any], task: Task, split: str) -> dict[str, Any]:
    """Everything a shard job of ``task``'s ``split`` computes with (:func:`lmft.kernels.stage.run_shard`'s
    ``cfg``): :data:`SHARD_KEYS` of the section, and resolved for the job: ``binary`` (the task's kernel is
    of the logit difference, :func:`is_binary`), ``num_logits``, ``col_shards`` of the split and ``test_cap``
    (test only)."""
    return {**{key: cfg[key] for key in SHARD_KEYS}, "binary": is_binary(task, cfg["binary"]),
            "num_logits": num_logits(task, cfg["binary"]), "col_shards": col_shards(cfg, split),
            "test_cap": cfg["test_cap"] if split == "test" else None}


@dataclass(frozen=True)
class SolveRule:
    """A kernel-solve rule: its name, the formula of its files (``{formula}``, a wildcard, or a
    formula's name) and its solvers, one job per kernel computing them all."""

    name: str
    formula: str
    solvers: list[str]

    @property
    def run(self) -> str:
        """The job's name in its log and benchmark files: ``{formula}-{prompt}`` (plus ``-{solver}`` for
        a rule of one stacked solver)."""
        return f"{self.formula}-{{prompt}}" + ("" if self.formula == "{formula}" else f"-{self.solvers[0]}")


def solve_rules(cfg: Mapping[str, Any]) -> list[SolveRule]:
    """The solve rules of the configured solvers: ``kernel_solve`` runs every solver that takes any
    kernel, one job per kernel (a job loads its kernel once for all its solvers, which take well
    under a second each on k-shot kernels); a stacked solver applies to fewer kernels, those of
    the stacked formulas, and runs in a rule of its own, ``kernel_solve_{solver}``."""
    plain = [s for s in cfg["solvers"] if not SOLVERS[s].stacked]
    rules = [SolveRule("kernel_solve", "{formula}", plain)] if plain else []
    stacked = [name for name, f in FORMULAS.items() if f.stacked]
    for solver in (s for s in cfg["solvers"] if SOLVERS[s].stacked):
        rules += [SolveRule(f"kernel_solve_{solver}" + ("" if len(stacked) == 1 else f"_{f}"), f, [solver])
                  for f in stacked]
    return rules


def solve_targets(config: Mapping[str, Any], cfg: Mapping[str, Any] | None = None) -> list[str]:
    """The solve stage's ``metrics.json`` of every configured (model, task, k, seed, formula, prompt, solver),
    leaving out solvers that do not apply (:func:`solver_applies`)."""
    cfg = settings(config) if cfg is None else cfg
    results = with_defaults(config)["results_dir"]
    out = []
    for model in cfg["models"]:
        for name in cfg["tasks"]:
            task = get_task(name, dict(config))
            for k in cfg["k"]:
                for seed in cfg["seeds"]:
                    for formula in cfg["formulas"]:
                        for prompt in cfg["prompt"]:
                            for solver in cfg["solvers"]:
                                if solver_applies(solver, formula, task, cfg["binary"]):
                                    out.append(kernel_solve_metrics(kernel_solve_dir(results, model, name, k, seed),
                                                                    formula, prompt, solver))
    return out


def kernel_info(cfg: Mapping[str, Any], prompt: str) -> dict[str, Any]:
    """What a solve records about how its kernels of ``prompt`` were made (a param of the solve rules); a
    computed kernel's ``head_init`` is how its prompt setting's head starts (:data:`lmft.kernels.formulas.PROMPTS`)."""
    if cfg["published_dir"]:
        return {"source": "published", "published_dir": str(Path(cfg["published_dir"]))}
    return {"source": "computed", **{k: cfg[k] for k in ("mode", "freeze_embeddings", "binary", "test_cap")},
            "head_init": PROMPTS[prompt]}


# --- the memory a shard job needs (its mem_mb resource) ----------------------------------------


def shard_mem_mb(n_params: int, n_trainable: int, logits: int, row_batch: int, col_batch: int) -> int:
    """Memory (MB) a shard job needs, from the parameter counts and the batch sizes.

    The float32 weights (4 bytes per parameter), and the Jacobians (4 bytes per trainable
    parameter and logit) of a block of ``row_batch`` rows and one of ``col_batch`` columns held at
    once, each rounded up to whole tiles of ``TILE`` examples (the tiled method's unit,
    :mod:`lmft.kernels.tile_jacobians`), plus one example's for the backward passes' working set; add 1500 MB
    for Python, torch, transformers, activations and the float64 staging slices of the contraction.
    On a GPU the Jacobians live in GPU memory, so the same figure bounds both.
    """
    mb = 4 / 2**20
    tiles = sum(-(-b // TILE) * TILE for b in (row_batch, col_batch))
    return int(1500 + mb * n_params + mb * n_trainable * logits * (tiles + 1))


def trainable_estimate(manifest: Mapping[str, Any], mode: str, freeze_embeddings: bool) -> int:
    """An upper estimate of the trainable parameters of ``mode`` from a ``model.json`` (no model loaded):
    all of them, less the word embeddings when frozen; N/L of the non-embedding ones for ``last:N``
    and the like; 1% of the model for ``bias``, ``head``, ``lora:R`` and ``prefix:P`` (BitFit is
    about 0.1%, LoRA r=8 on the attention about 0.3%)."""
    from lmft.models.params import parse_mode

    total = int(manifest["n_params"])
    embeddings = int(manifest.get("vocab_size", 0)) * int(manifest.get("hidden_size", 0))
    kind, n = parse_mode(mode)
    if kind == "all":
        return total - embeddings if freeze_embeddings else total
    if kind in ("last", "first", "middle"):
        return math.ceil((total - embeddings) * min(1.0, n / max(1, int(manifest.get("num_layers") or n))))
    return total // 100


def shard_mem_mb_for(model_json: PathLike, task: Task, cfg: Mapping[str, Any]) -> int:
    """:func:`shard_mem_mb` of a prepared model, capped by ``kernels.mem_mb`` where set (a plain read of
    ``model.json``: while it does not exist yet the FileNotFoundError tells Snakemake the figure is not
    known until the model is prepared)."""
    with open(model_json) as f:
        manifest = json.load(f)
    need = shard_mem_mb(int(manifest["n_params"]), trainable_estimate(manifest, cfg["mode"], cfg["freeze_embeddings"]),
                        num_logits(task, cfg["binary"]), int(cfg["row_batch"]), int(cfg["col_batch"]))
    return need if cfg["mem_mb"] is None else min(need, math.ceil(cfg["mem_mb"]))
