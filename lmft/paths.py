"""Where the workflow's artifacts live: one function per kind of path, for the rules (rules/*.smk)
and for the library where it names artifacts (targets, job folders).

The functions only put strings together, so an argument may be a value or, in a rule, a wildcard
pattern such as ``"{task}"``, which comes out as it went in. Finished runs are found by these
strings: changing one orphans every artifact of its kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SPLITS = ("train", "dev", "test")  # the k-shot splits, in this order everywhere
EVAL_SPLITS = SPLITS[1:]  # those a run is scored on

Part = str | int  # a value, or a wildcard pattern


def _g(x: float | str) -> str:
    """A number as ``:g`` writes it (``1e-3`` -> ``0.001``); a wildcard pattern as it is."""
    return x if isinstance(x, str) else f"{x:g}"


def kshot_dir(data: str, task: str, k: Part, seed: Part) -> str:
    """``{data}/kshot/{task}/{k}-{seed}``: one k-shot draw."""
    return f"{data}/kshot/{task}/{k}-{seed}"


def kshot_split(data: str, task: str, k: Part, seed: Part, split: str) -> str:
    """``{split}.parquet`` of a k-shot draw."""
    return f"{kshot_dir(data, task, k, seed)}/{split}.parquet"


def kshot_splits(data: str, task: str, k: Part, seed: Part) -> dict[str, str]:
    """The draw's ``train``, ``dev`` and ``test`` tables, by split."""
    return {s: kshot_split(data, task, k, seed, s) for s in SPLITS}


def kshot_files(data: str, task: str, k: Part, seed: Part) -> dict[str, str]:
    """Every file of a draw: :func:`kshot_splits` and ``info`` (``info.json``)."""
    return kshot_splits(data, task, k, seed) | {"info": f"{kshot_dir(data, task, k, seed)}/info.json"}


def model_manifest(results: str, model: str) -> str:
    """``{results}/models/{model}/model.json``: a prepared model (the input of every job that loads it)."""
    return f"{results}/models/{model}/model.json"


def finetune_run(results: str, model: str, task: str, k: Part, seed: Part, run: str) -> str:
    """``{results}/finetune/{model}/{task}/{k}-{seed}/{run}``: a fine-tuning run directory (``run``: a
    method or a grid trial, :mod:`lmft.finetune.grid`)."""
    return f"{results}/finetune/{model}/{task}/{k}-{seed}/{run}"


def kernel_dir(results: str, model: str, task: str, k: Part, seed: Part, published_dir: str | None = None) -> str:
    """``{results}/kernels/{model}/{task}/{k}-{seed}``: the kernels of a draw; with ``published_dir``
    its ``{model}/{task}/{k}-{seed}`` (published kernels, in the same layout)."""
    return f"{published_dir or f'{results}/kernels'}/{model}/{task}/{k}-{seed}"


def kernel_file(kdir: str, name: str, prompt: str, split: str) -> str:
    """``{kdir}/{name}-{prompt}/{split}.pt``: a merged kernel (``name`` its formula) or, for ``name="f0"``,
    the pre-trained logits."""
    return f"{kdir}/{name}-{prompt}/{split}.pt"


def kernel_shard(kdir: str, prompt: str, split: str, row: Part, col: Part) -> str:
    """``{kdir}/shards-{prompt}/{split}/{row}-{col}``: the folder of one shard (``{formula}.pt``, ``f0.pt``)."""
    return f"{kdir}/shards-{prompt}/{split}/{row}-{col}"


def kernel_solve_dir(results: str, model: str, task: str, k: Part, seed: Part) -> str:
    """``{results}/kernel_solve/{model}/{task}/{k}-{seed}``: the kernel solves of a draw."""
    return f"{results}/kernel_solve/{model}/{task}/{k}-{seed}"


def kernel_solve_metrics(solve_dir: str, formula: str, prompt: str, solver: str) -> str:
    """``{solve_dir}/{formula}-{prompt}/{solver}/metrics.json``: one solver's result on one kernel."""
    return f"{solve_dir}/{formula}-{prompt}/{solver}/metrics.json"


def kernel_solve_predictions(solve_dir: str, formula: str, prompt: str, solver: str) -> str:
    """``predictions.parquet`` beside :func:`kernel_solve_metrics`: that solver's per-example test predictions."""
    return f"{solve_dir}/{formula}-{prompt}/{solver}/predictions.parquet"


def graft_dir(results: str, model: str, task: str, k: Part, seed: Part, method: str, sparsity: float | str) -> str:
    """``{results}/graft/{model}/{task}/{k}-{seed}/{method}/sparsity-{s:g}``: a graft job's folder (the
    arguments are a graft job's keys, :func:`lmft.graft.plan.graft_jobs`)."""
    return f"{results}/graft/{model}/{task}/{k}-{seed}/{method}/sparsity-{_g(sparsity)}"


def graft_reference(results: str, model: str, task: str, k: Part, seed: Part, method: str) -> str:
    """``{results}/graft/{model}/{task}/{k}-{seed}/{method}/reference``: the scores of the pre-trained
    ("pre") and fine-tuned ("ft") models that every sparsity of one run's grafts shares."""
    return f"{results}/graft/{model}/{task}/{k}-{seed}/{method}/reference"


def overlap_tasks(results: str, model: str, k: Part, seed: Part, method: str, sparsity: float | str) -> str:
    """The overlap table of the masks of every task of one (model, k, seed, method, sparsity)."""
    return f"{results}/graft/{model}/overlap-tasks/{k}-{seed}/{method}/sparsity-{_g(sparsity)}.parquet"


def overlap_seeds(results: str, model: str, task: str, k: Part, method: str, sparsity: float | str) -> str:
    """The overlap table of the masks of every seed of one (model, task, k, method, sparsity)."""
    return f"{results}/graft/{model}/overlap-seeds/{task}/{k}/{method}/sparsity-{_g(sparsity)}.parquet"


def interpolate_dir(results: str, model: str, task: str, pair: str) -> str:
    """``{results}/interpolate/{model}/{task}/{pair}``: an interpolate job's folder."""
    return f"{results}/interpolate/{model}/{task}/{pair}"


def memory_metrics(results: str, model: str, task: str, k: Part, seed: Part) -> str:
    """``{results}/memory/{model}/{task}/{k}-{seed}/metrics.json``: a memory job's measurements (:mod:`lmft.finetune.memory`)."""
    return f"{results}/memory/{model}/{task}/{k}-{seed}/metrics.json"


PREDICTIONS = "predictions.parquet"  # per-example test predictions beside a run's metrics.json
LOSSES = "losses.parquet"  # an interpolation pair's per-example losses along the path
GRAFT_REFERENCE = "reference"  # beside a graft method's sparsity-* folders: pre and ft evaluated once


def evidence_files(metrics: str, stage: str) -> list[str]:
    """The per-example files a run of ``stage`` leaves beside its ``metrics`` (``metrics.json``) path,
    which the findings compare pairwise (:mod:`lmft.aggregate.evidence`)."""
    here = metrics.rsplit("/", 1)[0]
    if stage == "interpolate":
        return [f"{here}/{LOSSES}"]
    if stage == "graft":
        return [f"{here}/{PREDICTIONS}", f"{here.rsplit('/', 1)[0]}/{GRAFT_REFERENCE}/{PREDICTIONS}"]
    if stage in ("finetune", "generation", "kernel"):
        return [f"{here}/{PREDICTIONS}"]
    return []


def tables_dir(results: str) -> str:
    """``{results}/tables``: the aggregate's tables."""
    return f"{results}/tables"


def runs_table(results: str) -> str:
    """``{results}/tables/runs.parquet``: every run's metrics in one table (the aggregate's)."""
    return f"{tables_dir(results)}/runs.parquet"


def plots_dir(results: str) -> str:
    """``{results}/plots``: the aggregate's plots."""
    return f"{results}/plots"


def one_of(names: Iterable[str]) -> str:
    """A wildcard constraint that matches exactly ``names`` (none of them: a pattern that matches nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"
