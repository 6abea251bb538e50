"""The kernel stage of the workflow: shard jobs, merge jobs and solve jobs (rules/kernels.smk).

A kernel is keyed by (model, task, k, seed, formula, prompt, split): rows are always the
training examples, columns the split's examples. The ``kernels:`` section of the config
(:data:`DEFAULTS` lists every key; ``models``, ``tasks`` and ``k`` default to all of the config's)
says which kernels are made and which solvers run on them.

Files, under ``results/kernels/{model}/{task}/{k}-{seed}/``:

``shards-{prompt}/{split}/{row}-{col}/{formula}.pt``
    one shard of rows ``row`` x columns ``col`` of the ``row_shards`` x ``col_shards`` grid
    (:func:`lmft.kernels.save_shard`). One shard job writes every configured formula from one
    pass of Jacobians, and ``f0.pt``: the pre-trained logits of its columns with their labels.
``{formula}-{prompt}/{split}.pt``
    the merged kernel, ``torch.save((kernel float64 [N_train, C, N_x, C], labels [N_x]))`` as the
    paper's released kernels (``[2, ...]`` for asymmetric-signgd), see :mod:`lmft.kernels`.
``f0-{prompt}/{split}.pt``
    the split's pre-trained logits ``(f0 float64 [N_x, C], labels [N_x])``.

With ``published_dir`` the solve jobs read ``{published_dir}/{model}/{task}/{k}-{seed}/...``
(the same layout, e.g. the kernels the paper's authors released) and nothing is computed.

Settings. ``prompt`` means the task's LM-BFF template with the ``prompt`` head (``causal`` on a
causal LM); ``noprompt`` the no-prompt input with a new linear ``cls`` head set, as for the paper's
released no-prompt kernels, to the logistic regression on the frozen features of the whole k-shot
training split (:func:`fit_head`) before the eNTK and f0 are taken. ``binary`` makes the kernel of
the logit difference (C = 1) for two-class tasks; tasks with more classes keep their C logits. ``mode`` and
``freeze_embeddings`` select the differentiated parameters (:func:`lmft.params.select_trainable`).
``test_cap`` keeps that many test examples, the same fixed subset as the fine-tuning stage's
``eval_cap`` (:func:`lmft.runs.cap_rows`).

Solve ``metrics.json`` (``results/kernel_solve/{model}/{task}/{k}-{seed}/{formula}-{prompt}/{solver}/``,
one solve job per kernel runs all its solvers): the shared keys (``stage="kernel"``,
``method="kernel"``, task, k, seed, model, metric, dev_metric, test_metric, test_ece,
``wall_time_s`` of loading the kernels and running this solver, ``peak_mem_mb`` of the job) plus ``formula``,
``prompt``, ``solver``, ``reg_name``, ``reg``, ``grid``, ``dev_scores``, ``dev_ece``, ``f0_scaling``,
``lam`` (asym), ``num_logits``, ``n_train``/``n_dev``/``n_test``, ``test_majority``, ``kernel_source`` (computed or
published) and ``kernel`` (the settings the kernel was computed with; for a computed kernel also
``head_init``, :data:`HEAD_INIT` of its prompt setting).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lmft import kernels, solvers
from lmft.batching import collate, encode_frame, label_ids, pad_id
from lmft.heads import Classifier, build_classifier, fit_linear_head
from lmft.io import LmftError, PathLike, read_json, read_parquet, write_json
from lmft.params import count_trainable, select_trainable
from lmft.paths import kernel_solve_dir, kernel_solve_metrics
from lmft.runs import cap_rows, peak_mem_mb, resolve_device
from lmft.tasks import Task, get_task

log = logging.getLogger(__name__)

PROMPTS = ("prompt", "noprompt")
# How each prompt setting's head starts: the pre-trained (M)LM head, or fit_head's logistic regression.
HEAD_INIT = {"prompt": "pretrained", "noprompt": "logistic"}
# Examples per forward pass of fit_head: fixed (not row_batch), so every shard job of a kernel fits
# the same head bit for bit whatever the batch settings.
HEAD_BATCH = 16
# The paper's head fit: LogisticRegressionCV(max_iter=5000) with its default ten Cs.
HEAD_CS = solvers.GRIDS["logistic"]
HEAD_MAX_ITER = 5000
SPLITS = ("train", "dev", "test")
DEFAULTS: dict[str, Any] = {
    "models": None,  # None: every configured model (tasks: every task, k: every kshot.k)
    "tasks": None,
    "k": None,
    "seeds": None,
    "formulas": ["sgd"],
    "prompt": ["prompt"],
    "mode": "all",
    "freeze_embeddings": False,
    "binary": False,
    "method": "tiled",
    "row_batch": 8,
    "col_batch": 8,
    "mem_mb": None,  # None: no memory budget; else the tiled path's dense blocks fit it (kernels.block_coords)
    "row_shards": 1,
    "col_shards": 1,
    "test_cap": None,
    "device": "auto",
    "gpu": 0,
    "threads": 1,
    "runtime": 60,
    "published_dir": None,
    "solvers": ["lstsq"],
}
# The settings a shard's numbers depend on, besides its grid and test_cap: the shard rule's params.
# Batch sizes, device and threads change how it is computed, not what (bit for bit on the CPU), so
# the shard script reads them from the config and changing them reruns nothing; so does mem_mb,
# which changes the kernel by float64 rounding only (the dense blocks' partial sums).
KERNEL_KEYS = ("formulas", "mode", "freeze_embeddings", "binary", "method")


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's ``kernels`` section with :data:`DEFAULTS` filled in and solver entries resolved.

    ``solvers`` entries are a solver name or ``{name, grid, f0_scaling, lam}``; they become a
    name -> options mapping. ``models``, ``tasks``, ``k`` and ``seeds`` become lists (all of the
    config's when unset). Raises on a solver, formula or prompt the stage does not know, and on a model, task or
    k the config does not have.
    """
    section = dict(config.get("kernels") or {})
    out = DEFAULTS | {k: v for k, v in section.items() if v is not None or k in ("test_cap", "published_dir")}
    for f in out["formulas"]:
        if f not in kernels.FORMULAS:
            raise LmftError(f"kernels.formulas: unknown formula {f!r}; one of {', '.join(kernels.FORMULAS)}")
    for p in out["prompt"]:
        if p not in PROMPTS:
            raise LmftError(f"kernels.prompt: unknown setting {p!r}; one of {', '.join(PROMPTS)}")
    out["solvers"] = solver_specs(out["solvers"])
    kshot = config.get("kshot") or {}
    for key, known in (("models", list(config.get("models") or {})), ("tasks", list(config.get("tasks") or [])),
                       ("k", list(kshot.get("k", [16]))), ("seeds", list(kshot.get("seeds", [13, 21, 42, 87, 100])))):
        chosen = list(known if out.get(key) is None else out[key])
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
        if name not in solvers.SOLVERS:
            raise LmftError(f"kernels.solvers: unknown solver {name!r}; one of {', '.join(solvers.SOLVERS)}")
        if name in specs:
            raise LmftError(f"kernels.solvers: {name!r} is listed twice")
        unknown = sorted(set(spec) - {"grid", "f0_scaling", "lam"})
        if unknown:
            raise LmftError(f"kernels.solvers.{name}: unknown option(s) {unknown}; known: grid, f0_scaling, lam")
        if name not in solvers.USES_F0 and spec.get("f0_scaling") is not None:
            raise LmftError(f"kernels.solvers.{name}: this solver does not use f0; unset f0_scaling")
        specs[name] = {"grid": spec.get("grid"), "f0_scaling": spec.get("f0_scaling"), "lam": spec.get("lam", 0.5)}
    return specs


def is_binary(task: Task, binary: bool) -> bool:
    """Whether the task's kernel is of the logit difference: ``binary`` set and two classes."""
    return bool(binary) and task.num_labels == 2


def num_logits(task: Task, binary: bool) -> int:
    return 1 if is_binary(task, binary) else task.num_labels


def solver_applies(solver: str, formula: str, task: Task, binary: bool) -> bool:
    """asym needs a binary asymmetric-signgd kernel; the other solvers take any kernel."""
    return solver != "asym" or (formula == "asymmetric-signgd" and is_binary(task, binary))


def col_shards(cfg: Mapping[str, Any], split: str) -> int:
    """Column shards of ``split``: ``col_shards`` is one number or a ``{train, dev, test}`` mapping."""
    value = cfg["col_shards"]
    return int(value.get(split, 1)) if isinstance(value, Mapping) else int(value)


def shard_range(n: int, parts: int, index: int, what: str) -> tuple[int, int]:
    """Examples ``[lo, hi)`` of shard ``index`` when ``n`` examples are cut into ``parts`` shards."""
    if parts > n:
        raise LmftError(f"{what}: {parts} shards but only {n} examples; lower the kernels' shard count")
    if not 0 <= index < parts:
        raise LmftError(f"{what}: shard {index} does not exist (0..{parts - 1})")
    return kernels.split_range(n, parts)[index]


def shard_mem_mb(n_params: int, n_trainable: int, logits: int, row_batch: int, col_batch: int) -> int:
    """Memory (MB) a shard job needs, from the parameter counts and the batch sizes.

    The float32 weights (4 bytes per parameter), and the Jacobians (4 bytes per trainable
    parameter and logit) of a block of ``row_batch`` rows and one of ``col_batch`` columns held at
    once, each rounded up to whole tiles of ``kernels.TILE`` examples (the tiled method's unit),
    plus one example's for the backward passes' working set; add 1500 MB for Python, torch,
    transformers, activations and the float64 staging slices of the contraction. On a GPU the
    Jacobians live in GPU memory, so the same figure bounds both.
    """
    mb = 4 / 2**20
    tiles = sum(-(-b // kernels.TILE) * kernels.TILE for b in (row_batch, col_batch))
    return int(1500 + mb * n_params + mb * n_trainable * logits * (tiles + 1))


def trainable_estimate(manifest: Mapping[str, Any], mode: str, freeze_embeddings: bool) -> int:
    """An upper estimate of the trainable parameters of ``mode`` from a ``model.json`` (no model loaded):
    all of them, less the word embeddings when frozen; N/L of the non-embedding ones for ``last:N``
    and the like; 1% of the model for ``bias``, ``head``, ``lora:R`` and ``prefix:P`` (BitFit is
    about 0.1%, LoRA r=8 on the attention about 0.3%)."""
    from lmft.params import parse_mode

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
    return need if cfg.get("mem_mb") is None else min(need, math.ceil(cfg["mem_mb"]))


def head_for(prompt: str, model_json: PathLike) -> str:
    """The Classifier head of a prompt setting: prompt -> ``prompt`` (``causal`` for a causal LM), noprompt -> ``cls``."""
    if prompt not in PROMPTS:
        raise LmftError(f"unknown prompt setting {prompt!r}; one of {', '.join(PROMPTS)}")
    if prompt == "noprompt":
        return "cls"
    return "causal" if read_json(model_json).get("kind") == "causal" else "prompt"


def build_model(model_json: PathLike, task: Task, prompt: str, seed: int, mode: str = "all",
                freeze_embeddings: bool = False) -> tuple[Classifier, Any]:
    """The classifier whose eNTK is taken, in eval mode, with its trainable parameters selected.

    The ``cls`` head (and LoRA/prefix parameters) initialise from ``seed``; torch's global RNG is
    left as it was. A noprompt kernel then sets the head with :func:`fit_head`.
    """
    clf, tokenizer = build_classifier(model_json, task, head_for(prompt, model_json), seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        select_trainable(clf, mode, freeze_embeddings=freeze_embeddings)
    return clf.eval(), tokenizer


def load_split(path: PathLike, task: Task, clf: Classifier, tokenizer: Any, cap: int | None = None) -> dict[str, torch.Tensor]:
    """A k-shot table as one padded batch (``input_ids`` ... ``labels``, see :mod:`lmft.batching`), tokenised
    for ``clf``'s head, keeping the ``cap``-row fixed subset when ``cap`` is set."""
    df = read_parquet(path)
    df = df.iloc[cap_rows(len(df), cap)].reset_index(drop=True)
    items = encode_frame(df, task, tokenizer, causal=clf.causal, head=clf.head)
    return collate(items, label_ids(df, task), pad_id(tokenizer))


@torch.no_grad()
def fit_head(clf: Classifier, train: Mapping[str, torch.Tensor]) -> float:
    """Set ``clf``'s ``cls`` head to the logistic regression on its frozen features, as the paper's
    no-prompt kernels (its ``--from_linearhead``: ``LogisticRegressionCV(max_iter=5000)``).

    ``train`` is the whole training split as one batch (:func:`load_split`). The features ``[N, H]``
    come in eval mode, :data:`HEAD_BATCH` rows at a time in row order; ``C`` is cross-validated over
    :data:`HEAD_CS` (:func:`lmft.solvers.fit_logistic_cv`) and :func:`lmft.heads.fit_linear_head` fits
    the head with it in float64. The same split thus gives the same head in every shard job.
    Returns the chosen ``C``.
    """
    device = next(clf.parameters()).device
    keys = ("input_ids", "attention_mask", "token_type_ids", "mask_pos")
    clf.eval()
    feats = torch.cat([clf.features(**{k: train[k][i:i + HEAD_BATCH].to(device) for k in keys}).double().cpu()
                       for i in range(0, train["input_ids"].shape[0], HEAD_BATCH)])
    labels = train["labels"]
    _, c = solvers.fit_logistic_cv(feats.numpy(), labels.numpy(), HEAD_CS, max_iter=HEAD_MAX_ITER)
    fit_linear_head(clf, feats, labels, l2=1.0 / c, max_iter=HEAD_MAX_ITER)
    return c


def run_shard(model_json: PathLike, task: Task, train_path: PathLike, split_path: PathLike, out: Mapping[str, PathLike],
              f0_out: PathLike, *, split: str, prompt: str, seed: int, row: int, col: int, cfg: Mapping[str, Any]) -> None:
    """Compute shard (``row``, ``col``) of the kernels between the training examples and ``split``.

    ``out`` maps each formula of ``cfg["formulas"]`` to its shard file; ``f0_out`` receives the
    pre-trained logits of the shard's columns (``(f0 [c1-c0, C], labels [c1-c0])``). ``cfg`` is
    :func:`settings`' dict.
    """
    started = time.perf_counter()
    device = resolve_device(cfg["device"])
    clf, tokenizer = build_model(model_json, task, prompt, seed, cfg["mode"], cfg["freeze_embeddings"])
    clf.to(device)
    rows = load_split(train_path, task, clf, tokenizer)
    if prompt == "noprompt":
        log.info("cls head: logistic regression on the frozen features of the %d training examples, C=%g",
                 rows["input_ids"].shape[0], fit_head(clf, rows))
    cols = rows if split == "train" else load_split(split_path, task, clf, tokenizer,
                                                     cfg["test_cap"] if split == "test" else None)
    n, m = rows["input_ids"].shape[0], cols["input_ids"].shape[0]
    r0, r1 = shard_range(n, int(cfg["row_shards"]), row, "kernels.row_shards")
    c0, c1 = shard_range(m, col_shards(cfg, split), col, f"kernels.col_shards of {split}")
    binary = is_binary(task, cfg["binary"])
    log.info("%s %s seed %d %s: shard rows %d:%d of %d x %s cols %d:%d of %d, %d trainable parameters, "
             "C=%d, formulas %s, on %s", task.name, prompt, seed, clf.head, r0, r1, n, split, c0, c1, m,
             count_trainable(clf), num_logits(task, cfg["binary"]), ", ".join(cfg["formulas"]), device)
    for note in clf.notes:
        log.info("classifier: %s", note)
    shards = kernels.compute_shards(clf, rows, cols, cfg["formulas"], row_range=(r0, r1), col_range=(c0, c1),
                                    row_batch=int(cfg["row_batch"]), col_batch=int(cfg["col_batch"]),
                                    binary=binary, method=cfg["method"], mem_mb=cfg["mem_mb"])
    part = {k: v[c0:c1] for k, v in cols.items()}
    f0 = kernels.logits(clf, part, binary=binary)
    for formula, shard in shards.items():
        kernels.save_shard(shard, out[formula])
    kernels.save_logits(f0_out, f0, part["labels"])
    log.info("shard done in %.1f s, peak memory %.0f MB", time.perf_counter() - started, peak_mem_mb(device))


def merge(shard_files: Mapping[str, Sequence[PathLike]], f0_files: Sequence[PathLike], out: Mapping[str, PathLike],
          f0_out: PathLike) -> None:
    """Assemble each formula's shards into its kernel file, and the column slices' f0 into ``f0_out``.

    ``f0_files`` are the f0 slices of one row of shards, in column order; they give the labels.
    """
    slices = [kernels.load_logits(p) for p in f0_files]
    f0 = torch.cat([s[0] for s in slices])
    labels = torch.cat([s[1] for s in slices])
    for formula, files in shard_files.items():
        shards = [kernels.load_shard(p) for p in files]
        wrong = [str(p) for p, s in zip(files, shards) if s.formula != formula]
        if wrong:
            raise LmftError(f"{wrong[0]}: a shard of another formula than {formula}")
        kernel = kernels.merge_shards(shards)
        if kernel.shape[-2] != labels.shape[0]:
            raise LmftError(f"{formula}: the shards have {kernel.shape[-2]} columns, the f0 slices {labels.shape[0]} labels")
        kernels.save_kernel(out[formula], kernel, labels)
        log.info("%s: kernel %s", formula, tuple(kernel.shape))
    kernels.save_logits(f0_out, f0, labels)


def solve(kernel_files: Mapping[str, PathLike], f0_files: Mapping[str, PathLike] | None,
          outs: Mapping[str, PathLike], specs: Mapping[str, Mapping[str, Any]], *, task: Task, model: str, k: int,
          seed: int, formula: str, prompt: str, kernel_info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Run kernel solvers on one kernel's train/dev/test files and write each solver's ``metrics.json``.

    ``kernel_files`` and ``f0_files`` map ``train``/``dev``/``test`` to files (f0 needed only when
    a solver adjusts for the initial logits); ``outs`` maps each solver to its metrics file and
    ``specs`` to its entry of :func:`solver_specs`. Returns solver -> metrics.
    """
    started = time.perf_counter()
    needs_f0 = [s for s in outs if specs[s].get("f0_scaling") is not None]
    if needs_f0 and not f0_files:
        raise LmftError(f"solver {needs_f0[0]} has f0_scaling {specs[needs_f0[0]]['f0_scaling']} but no f0 files were given")
    sets = {s: solvers.load_kernel_set(kernel_files[s], f0_files[s] if needs_f0 else None) for s in SPLITS}
    source = kernel_info.get("source", "computed")
    made = dict(kernel_info) | ({"head_init": HEAD_INIT[prompt]} if source == "computed" else {})
    loaded = time.perf_counter() - started
    results = {}
    for solver, out in outs.items():
        began = time.perf_counter()
        spec = specs[solver]
        sol = solvers.solve(solver, sets["train"], sets["dev"], sets["test"], metric=task.metric,
                            grid=spec.get("grid"), f0_scaling=spec.get("f0_scaling"), lam=spec.get("lam", 0.5))
        scores = solvers.solution_metrics(sol, sets["dev"].labels, sets["test"].labels, task.metric)
        log.info("%s %s %s-%s %s: dev %s %.4f, test %.4f (%s=%g)", model, task.name, formula, prompt, solver,
                 task.metric, scores["dev_metric"], scores["test_metric"], sol.reg_name, sol.reg)
        metrics = {"stage": "kernel", "task": task.name, "k": k, "seed": seed, "model": model, "method": "kernel",
                   "formula": formula, "prompt": prompt, **scores, "f0_scaling": spec.get("f0_scaling"),
                   "lam": spec.get("lam", 0.5) if solver == "asym" else None,
                   "num_logits": int(sets["train"].kernel.shape[-1]), "n_train": int(sets["train"].labels.shape[0]),
                   "n_dev": int(sets["dev"].labels.shape[0]), "n_test": int(sets["test"].labels.shape[0]),
                   "test_majority": sets["test"].labels.bincount().max().item() / sets["test"].labels.numel(),
                   "kernel_source": source, "kernel": made,
                   "wall_time_s": loaded + time.perf_counter() - began,
                   "peak_mem_mb": peak_mem_mb(torch.device("cpu"))}
        write_json(metrics, out)
        results[solver] = metrics
    return results


def solve_targets(config: Mapping[str, Any], cfg: Mapping[str, Any] | None = None) -> list[str]:
    """The solve stage's ``metrics.json`` of every configured (model, task, k, seed, formula, prompt, solver),
    leaving out solvers that do not apply (:func:`solver_applies`)."""
    cfg = settings(config) if cfg is None else cfg
    results = config.get("results_dir", "results")
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


def kernel_info(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What a solve records about how its kernels were made."""
    if cfg.get("published_dir"):
        return {"source": "published", "published_dir": str(Path(cfg["published_dir"]))}
    return {"source": "computed", **{k: cfg[k] for k in ("mode", "freeze_embeddings", "binary", "test_cap")}}
