"""The kernel stage of the workflow: shard jobs, merge jobs and solve jobs (rules/kernels.smk).

A kernel is keyed by (model, task, k, seed, formula, prompt, split): rows are always the
training examples, columns the split's examples. The ``kernels:`` section of the config says
which kernels are made and which solvers run on them (:func:`lmft.kernels.plan.settings`; every key
and its default is in the config schema); :mod:`lmft.kernels.plan` plans the jobs, this module runs them.

Files, under ``results/kernels/{model}/{task}/{k}-{seed}/``:

``shards-{prompt}/{split}/{row}-{col}/{formula}.pt``
    one shard of rows ``row`` x columns ``col`` of the ``row_shards`` x ``col_shards`` grid
    (:func:`lmft.kernels.files.save_shard`). One shard job writes every configured formula from one
    pass of Jacobians, and ``f0.pt``: the pre-trained logits of its columns with their labels (from the
    same forward passes, :func:`lmft.kernels.compute.compute_shards_and_logits`).
``{formula}-{prompt}/{split}.pt``
    the merged kernel, ``torch.save((kernel float64 [N_train, C, N_x, C], labels [N_x]))`` as the
    paper's released kernels (``[2, ...]`` for asymmetric-signgd, a stacked formula of
    :mod:`lmft.kernels.formulas`), see :mod:`lmft.kernels.files`.
``f0-{prompt}/{split}.pt``
    the split's pre-trained logits ``(f0 float64 [N_x, C], labels [N_x])``.

With ``published_dir`` the solve jobs read ``{published_dir}/{model}/{task}/{k}-{seed}/...``
(the same layout, e.g. the kernels the paper's authors released) and nothing is computed.

Settings. ``prompt`` means the task's LM-BFF template with the ``prompt`` head (``causal`` on a
causal LM); ``noprompt`` the no-prompt input with a new linear ``cls`` head set, as for the paper's
released no-prompt kernels, to the logistic regression on the frozen features of the whole k-shot
training split, at the paper's scale (:func:`fit_paper_head`: with two classes the logit difference
is half the log-odds), before the eNTK and f0 are taken. ``binary`` makes the kernel of
the logit difference (C = 1) for two-class tasks; tasks with more classes keep their C logits. ``mode`` and
``freeze_embeddings`` select the differentiated parameters (:func:`lmft.models.params.select_trainable`).
``test_cap`` keeps that many test examples, the same fixed subset as the fine-tuning stage's
``eval_cap`` (:func:`lmft.data.kshot.cap_rows`).

Solve files, in ``results/kernel_solve/{model}/{task}/{k}-{seed}/{formula}-{prompt}/{solver}/`` (one
solve job per kernel runs all its solvers): ``predictions.parquet``, the shared per-example table
(:meth:`lmft.models.evaluate.Evaluation.predictions`: ``index``, ``label``, ``pred``, ``probs`` = the softmax
of the solver's test logits; ``index`` is the row of the k-shot ``test.parquet``, the ``test_cap``
subset's rows, or for a published kernel its column), and ``metrics.json``: the shared keys (``stage="kernel"``,
``method="kernel"``, task, k, seed, model, metric, dev_metric, test_metric, test_ece,
``wall_time_s`` of loading the kernels and running this solver, ``peak_mem_mb`` of the job) plus ``formula``,
``prompt``, ``solver``, ``reg_name``, ``reg``, ``grid``, ``dev_scores``, ``dev_ece``, ``f0_scaling``,
``lam`` (asym), ``num_logits``, ``n_train``/``n_dev``/``n_test``, ``test_majority``, ``kernel_source`` (computed or
published) and ``kernel`` (the settings the kernel was computed with, as the plan gives them:
:func:`lmft.kernels.plan.kernel_info`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lmft.data.kshot import cap_rows
from lmft.data.tasks import Task
from lmft.io import LmftError, PathLike, read_json, read_parquet, write_json, write_parquet
from lmft.kernels import compute as kernels
from lmft.kernels import solvers
from lmft.kernels.files import load_logits, load_shard, merge_shards, save_kernel, save_logits, save_shard, split_range
from lmft.kernels.formulas import PROMPTS
from lmft.kernels.sets import load_kernel_set
from lmft.models.batching import collate, encode_frame, label_ids, pad_id
from lmft.models.evaluate import Evaluation
from lmft.models.heads import Classifier, build_classifier, fit_linear_head
from lmft.models.metrics import majority_share
from lmft.models.params import count_trainable, select_trainable
from lmft.paths import SPLITS
from lmft.runtime import peak_mem_mb, resolve_device

log = logging.getLogger(__name__)

# The paper's head fit: LogisticRegressionCV(multi_class="multinomial") with its default ten Cs.
HEAD_CS = solvers.GRIDS["logistic"]


def shard_range(n: int, parts: int, index: int, what: str) -> tuple[int, int]:
    """Examples ``[lo, hi)`` of shard ``index`` when ``n`` examples are cut into ``parts`` shards."""
    if parts > n:
        raise LmftError(f"{what}: {parts} shards but only {n} examples; lower the kernels' shard count")
    if not 0 <= index < parts:
        raise LmftError(f"{what}: shard {index} does not exist (0..{parts - 1})")
    return split_range(n, parts)[index]


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
    """A k-shot table as one padded batch (``input_ids`` ... ``labels``, see :mod:`lmft.models.batching`), tokenised
    for ``clf``'s head, keeping the ``cap``-row fixed subset when ``cap`` is set."""
    df = read_parquet(path)
    df = df.iloc[cap_rows(len(df), cap)].reset_index(drop=True)
    items = encode_frame(df, task, tokenizer, causal=clf.causal, head=clf.head)
    return collate(items, label_ids(df, task), pad_id(tokenizer))


@torch.no_grad()
def fit_head(clf: Classifier, train: Mapping[str, torch.Tensor], batch_size: int, max_iter: int) -> float:
    """Set ``clf``'s ``cls`` head to the logistic regression on its frozen features, as the paper's
    no-prompt kernels (its ``--from_linearhead``), with :func:`fit_paper_head`.

    ``train`` is the whole training split as one batch (:func:`load_split`). The features ``[N, H]``
    come in eval mode, ``batch_size`` rows at a time in row order (``kernels.head_batch_size``, not
    ``row_batch``), so the same split gives the same head in every shard job. Returns the chosen ``C``.
    """
    device = next(clf.parameters()).device
    keys = ("input_ids", "attention_mask", "token_type_ids", "mask_pos")
    clf.eval()
    feats = torch.cat([clf.features(**{k: train[k][i:i + batch_size].to(device) for k in keys}).double().cpu()
                       for i in range(0, train["input_ids"].shape[0], batch_size)])
    return fit_paper_head(clf, feats, train["labels"], max_iter)


@torch.no_grad()
def fit_paper_head(clf: Classifier, features: torch.Tensor, labels: torch.Tensor, max_iter: int) -> float:
    """Set ``clf``'s ``cls`` head as LM-Kernel-FT's ``linearhead_trainer.py`` does (lines 140-154):
    ``LogisticRegressionCV(max_iter=5000, multi_class="multinomial", random_state=0)`` on features
    ``[N, H]`` and class indices ``[N]``, and with two classes its single row ``u`` (of the fitted
    rows ``[-u, u]``) written as ``[-u/2, u/2]``, the intercept likewise: the head's logit difference
    is ``u.x + b``, half the log-odds of the fitted model. Returns the paper's ``C`` (of :data:`HEAD_CS`).

    scikit-learn >= 1.8 fits two classes only as a binary regression, ``v.x + c``. The multinomial
    objective with rows ``[-u, u]`` penalises ``u`` twice, ``C * sum loss(2u.x + 2b) + ||u||^2``,
    which is the binary one at ``2C`` with ``v = 2u``, ``c = 2b``: so ``C`` is cross-validated
    (:func:`lmft.kernels.solvers.fit_logistic_cv`) over ``2 * HEAD_CS`` (the same fold models, hence the
    same choice), :func:`lmft.models.heads.fit_linear_head` writes ``[-v/2, v/2]`` at that ``C`` in
    float64, and the head is halved to ``[-v/4, v/4] = [-u/2, u/2]``. More classes fit the
    multinomial regression as the paper does, rows written as fitted.
    """
    binary_c = 2.0 if clf.num_labels == 2 else 1.0  # the binary fit's C per multinomial C (see above)
    _, c = solvers.fit_logistic_cv(features.double().numpy(), labels.numpy(), [binary_c * x for x in HEAD_CS],
                                   max_iter=max_iter)
    fit_linear_head(clf, features, labels, l2=1.0 / c, max_iter=max_iter)
    if clf.num_labels == 2:
        clf.linear.weight.mul_(0.5)
        clf.linear.bias.mul_(0.5)
    return c / binary_c


def run_shard(model_json: PathLike, task: Task, train_path: PathLike, split_path: PathLike, out: Mapping[str, PathLike],
              f0_out: PathLike, *, split: str, prompt: str, seed: int, row: int, col: int, cfg: Mapping[str, Any]) -> None:
    """Compute shard (``row``, ``col``) of the kernels between the training examples and ``split``.

    ``out`` maps each formula of ``cfg["formulas"]`` to its shard file; ``f0_out`` receives the
    pre-trained logits of the shard's columns (``(f0 [c1-c0, C], labels [c1-c0])``). ``cfg`` is the
    job's settings as the plan resolved them for its task and split (:func:`lmft.kernels.plan.shard_settings`).
    """
    started = time.perf_counter()
    device = resolve_device(cfg["device"])
    clf, tokenizer = build_model(model_json, task, prompt, seed, cfg["mode"], cfg["freeze_embeddings"])
    clf.to(device)
    rows = load_split(train_path, task, clf, tokenizer)
    if prompt == "noprompt":
        c = fit_head(clf, rows, int(cfg["head_batch_size"]), int(cfg["head_max_iter"]))
        log.info("cls head: logistic regression on the frozen features of the %d training examples, C=%g",
                 rows["input_ids"].shape[0], c)
    cols = rows if split == "train" else load_split(split_path, task, clf, tokenizer, cfg["test_cap"])
    n, m = rows["input_ids"].shape[0], cols["input_ids"].shape[0]
    r0, r1 = shard_range(n, int(cfg["row_shards"]), row, "kernels.row_shards")
    c0, c1 = shard_range(m, int(cfg["col_shards"]), col, f"kernels.col_shards of {split}")
    binary = bool(cfg["binary"])
    log.info("%s %s seed %d %s: shard rows %d:%d of %d x %s cols %d:%d of %d, %d trainable parameters, "
             "C=%d, formulas %s, on %s", task.name, prompt, seed, clf.head, r0, r1, n, split, c0, c1, m,
             count_trainable(clf), cfg["num_logits"], ", ".join(cfg["formulas"]), device)
    for note in clf.notes:
        log.info("classifier: %s", note)
    shards, f0 = kernels.compute_shards_and_logits(
        clf, rows, cols, cfg["formulas"], row_range=(r0, r1), col_range=(c0, c1), row_batch=int(cfg["row_batch"]),
        col_batch=int(cfg["col_batch"]), binary=binary, method=cfg["method"], mem_mb=cfg["mem_mb"])
    for formula, shard in shards.items():
        save_shard(shard, out[formula])
    save_logits(f0_out, f0, cols["labels"][c0:c1])
    log.info("shard done in %.1f s, peak memory %.0f MB", time.perf_counter() - started, peak_mem_mb(device))


def merge(shard_files: Mapping[str, Sequence[PathLike]], f0_files: Sequence[PathLike], out: Mapping[str, PathLike],
          f0_out: PathLike) -> None:
    """Assemble each formula's shards into its kernel file, and the column slices' f0 into ``f0_out``.

    ``f0_files`` are the f0 slices of one row of shards, in column order; they give the labels.
    """
    slices = [load_logits(p) for p in f0_files]
    f0 = torch.cat([s[0] for s in slices])
    labels = torch.cat([s[1] for s in slices])
    for formula, files in shard_files.items():
        shards = [load_shard(p) for p in files]
        wrong = [str(p) for p, s in zip(files, shards) if s.formula != formula]
        if wrong:
            raise LmftError(f"{wrong[0]}: a shard of another formula than {formula}")
        kernel = merge_shards(shards)
        if kernel.shape[-2] != labels.shape[0]:
            raise LmftError(f"{formula}: the shards have {kernel.shape[-2]} columns, the f0 slices {labels.shape[0]} labels")
        save_kernel(out[formula], kernel, labels)
        log.info("%s: kernel %s", formula, tuple(kernel.shape))
    save_logits(f0_out, f0, labels)


def kshot_test_rows(test_split: PathLike | None, labels: torch.Tensor, task: Task, cap: int | None) -> list[int]:
    """The rows of the k-shot test table ``test_split`` that a kernel's test columns (labels ``[M]``) are:
    the ``cap`` fixed subset (:func:`lmft.data.kshot.cap_rows`, as :func:`load_split` kept it), checked
    against the kernel's labels. ``test_split`` None (a published kernel, whose columns follow its
    authors' files) gives the column positions."""
    if test_split is None:
        return list(range(labels.shape[0]))
    df = read_parquet(test_split, ["label"])
    rows = cap_rows(len(df), cap)
    if label_ids(df.iloc[rows], task) != labels.tolist():
        raise LmftError(f"{test_split}: the labels of its {len(rows)} test rows (test_cap {cap}) are not the kernel's "
                        f"{labels.shape[0]} test labels; the kernel was computed from another test split: rerun it")
    return rows


def solve(kernel_files: Mapping[str, PathLike], f0_files: Mapping[str, PathLike] | None,
          outs: Mapping[str, PathLike], specs: Mapping[str, Mapping[str, Any]], *, task: Task, model: str, k: int,
          seed: int, formula: str, prompt: str, kernel_info: Mapping[str, Any],
          test_split: PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Run kernel solvers on one kernel's train/dev/test files and write each solver's ``metrics.json``
    and, beside it, its ``predictions.parquet`` (see the module doc).

    ``kernel_files`` and ``f0_files`` map ``train``/``dev``/``test`` to files (f0 needed only when
    a solver adjusts for the initial logits); ``outs`` maps each solver to its metrics file and
    ``specs`` to its entry of :func:`solver_specs`. ``test_split`` is the k-shot test table a
    computed kernel's columns come from (required; None for a published kernel, :func:`kshot_test_rows`).
    Returns solver -> metrics.
    """
    started = time.perf_counter()
    needs_f0 = [s for s in outs if specs[s].get("f0_scaling") is not None]
    if needs_f0 and not f0_files:
        raise LmftError(f"solver {needs_f0[0]} has f0_scaling {specs[needs_f0[0]]['f0_scaling']} but no f0 files were given")
    sets = {s: load_kernel_set(kernel_files[s], f0_files[s] if needs_f0 else None, formula) for s in SPLITS}
    source = kernel_info.get("source", "computed")
    if source == "computed" and test_split is None:
        raise LmftError(f"{kernel_files['test']}: a computed kernel's solve needs the k-shot test table its columns "
                        "come from (test_split), to number its predictions")
    rows = kshot_test_rows(test_split, sets["test"].labels, task, kernel_info.get("test_cap"))
    loaded = time.perf_counter() - started
    results = {}
    for solver, out in outs.items():
        began = time.perf_counter()
        spec = specs[solver]
        sol = solvers.solve(solver, sets["train"], sets["dev"], sets["test"], metric=task.metric,
                            grid=spec["grid"], f0_scaling=spec["f0_scaling"], lam=spec["lam"])
        scores = solvers.solution_metrics(sol, sets["dev"].labels, sets["test"].labels, task.metric)
        log.info("%s %s %s-%s %s: dev %s %.4f, test %.4f (%s=%g)", model, task.name, formula, prompt, solver,
                 task.metric, scores["dev_metric"], scores["test_metric"], sol.reg_name, sol.reg)
        metrics = {"stage": "kernel", "task": task.name, "k": k, "seed": seed, "model": model, "method": "kernel",
                   "formula": formula, "prompt": prompt, **scores, "f0_scaling": spec["f0_scaling"],
                   "lam": spec["lam"] if solvers.SOLVERS[solver].stacked else None,
                   "num_logits": int(sets["train"].kernel.shape[-1]), "n_train": int(sets["train"].labels.shape[0]),
                   "n_dev": int(sets["dev"].labels.shape[0]), "n_test": int(sets["test"].labels.shape[0]),
                   "test_majority": majority_share(sets["test"].labels),
                   "kernel_source": source, "kernel": dict(kernel_info),
                   "wall_time_s": loaded + time.perf_counter() - began,
                   "peak_mem_mb": peak_mem_mb(torch.device("cpu"))}
        predictions = Evaluation(sol.test_logits, sets["test"].labels, task.metric).predictions(rows)
        write_parquet(predictions, Path(out).with_name("predictions.parquet"))
        write_json(metrics, out)
        results[solver] = metrics
    return results
