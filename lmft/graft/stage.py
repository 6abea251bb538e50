"""The grafting stage: from a fine-tuning run to masks, one job per sparsity, and their shared reference.

:func:`run_reference` scores the two ends every graft of a run lies between, once per run: the
reference model ("pre", the graft at sparsity 0) and the fine-tuned model ("ft", the graft at
sparsity 1). :func:`run_graft` grafts the run at one sparsity with :mod:`lmft.graft.mask` (base
patch, relaxation, rounding), scores the graft and takes "pre" and "ft" from the reference.
:mod:`lmft.graft.plan` plans the jobs from the config.

``mask.safetensors`` stores, per graftable tensor, the sorted flat indices (int64) of the kept
entries, with the tensor shapes and the count in the metadata: at the sparsities the paper
studies (1e-5 to 1e-2) this is far smaller than a bool map.

Both jobs write ``predictions.parquet`` (:meth:`lmft.models.evaluate.Evaluation.predictions`): columns ``model``
("pre" and "ft" in the reference, "graft" in a sparsity's folder), ``split`` ("test", or
``ood:TASK`` for each OOD task), ``index`` (the row of that split's parquet file), ``label``,
``pred`` and ``probs``.

The reference's ``metrics.json``: ``stage="graft-reference"``, task, k, seed, model, method, metric,
the keys of :data:`REFERENCE_KEYS`, ``pre_dev_loss``/``pre_test_loss``/``ft_dev_loss``/``ft_test_loss``,
``graftable`` (tensor names), ``n_graftable``, ``ood`` (per OOD task: pre / ft test metric),
``options`` (those it was given: :func:`lmft.graft.plan.reference_options`), ``n_dev``/``n_test``, ``device``,
``wall_time_s``, ``peak_mem_mb``.

A graft's ``metrics.json`` adds to the shared keys (whose ``dev_metric``/``test_metric``/
``test_ece`` are the graft's): ``sparsity``, ``count`` (entries kept), ``n_graftable``,
``graftable``, ``dev_loss``/``test_loss``, the reference's :data:`REFERENCE_KEYS`
(``pre_is_pretrained`` is false when the run tuned tensors outside the mask, e.g. embeddings: its
"pre" then holds them fine-tuned), ``base_count``/``base_dev_metric``/``base_test_metric`` (the base
patch), ``base_train_loss``/``graft_train_loss``, ``mask_moved`` (share of the mask's entries
outside the base patch: 0 when the relaxation kept the base patch), ``kept_fraction``
(``(graft - pre) / (ft - pre)`` on test, null when ft == pre), ``relax_epochs``,
``relax_chosen_epoch`` (0: no relaxation: ``epochs`` 0, or a count of 0 or every entry), ``relax_history`` (per
epoch, :func:`lmft.graft.mask.relax_mask`), ``ood`` (per OOD task: pre / ft / graft test metric),
``options``, ``n_train``/``n_dev``/``n_test``, ``device``, ``wall_time_s`` and ``peak_mem_mb``.
"""

from __future__ import annotations

import json
import hashlib
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from lmft.data.kshot import cap_rows
from lmft.data.tasks import Task
from lmft.finetune.runs import build_for_run, load_run
from lmft.graft.mask import base_patch, graft, kept_fraction, mask_moved, relax_mask, split_state
from lmft.io import (ArtifactError, LmftError, load_tensor_metadata, load_tensors, read_json, read_parquet,
                     save_tensors, write_json, write_parquet)
from lmft.models.checkpoint import apply_state
from lmft.models.encode import encode_split
from lmft.models.evaluate import Evaluation, Split, evaluate
from lmft.models.substitute import Substituted
from lmft.paths import EVAL_SPLITS, SPLITS
from lmft.runtime import peak_mem_mb, resolve_device

log = logging.getLogger(__name__)

MASK_FORMAT = "lmft-graft-indices"
# What a graft's metrics.json takes from its run's reference.
REFERENCE_KEYS = ("pre_is_pretrained", "pre_dev_metric", "pre_test_metric", "pre_test_ece",
                  "ft_dev_metric", "ft_test_metric", "ft_test_ece")


def save_mask(mask: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a bool mask as sorted flat int64 indices per tensor, shapes and count in the metadata."""
    shapes = {n: list(m.shape) for n, m in mask.items()}
    idx = {n: m.detach().flatten().nonzero().squeeze(1).to(torch.int64) for n, m in mask.items()}
    meta = {"format": MASK_FORMAT, "shapes": json.dumps(shapes), "count": str(sum(t.numel() for t in idx.values()))}
    save_tensors(idx, path, metadata={**meta, **{k: str(v) for k, v in (metadata or {}).items()}})


def load_mask(path: str | Path) -> dict[str, Tensor]:
    """Read a mask written by :func:`save_mask` back as bool tensors (in the saved tensor order)."""
    meta = load_tensor_metadata(path)
    if meta.get("format") != MASK_FORMAT:
        raise ArtifactError(f"{path}: not a graft mask (metadata format {meta.get('format')!r}, "
                            f"expected {MASK_FORMAT!r})")
    shapes = json.loads(meta["shapes"])
    idx = load_tensors(path)
    if set(idx) != set(shapes):
        raise ArtifactError(f"{path}: tensors {sorted(idx)} do not match the shapes listed in its metadata")
    out = {}
    for name, shape in shapes.items():
        flat = torch.zeros(math.prod(shape), dtype=torch.bool)
        if idx[name].numel() and (idx[name].min() < 0 or idx[name].max() >= flat.numel()):
            raise ArtifactError(f"{path}: indices of {name!r} fall outside its shape {shape}")
        flat[idx[name]] = True
        out[name] = flat.view(shape)
    return out


def _load_frame(path: str | Path, eval_cap: int | None = None) -> tuple[pd.DataFrame, list[int]]:
    """A split's table (capped at ``eval_cap`` rows) and the rows of the file it kept."""
    df = read_parquet(path, ["text_a", "label"])
    rows = cap_rows(len(df), eval_cap)
    return df.iloc[rows].reset_index(drop=True), rows


@dataclass
class _Grafting:
    """A run made ready to graft: the reference classifier (``theta_0`` in the graftable tensors, the
    run's other tuned tensors at their fine-tuned values), the graftable tensors' fine-tuned values
    ``ft`` and the tokenised splits (``train``/``dev``/``test`` and ``ood:TASK``) with their file rows."""

    ref: nn.Module
    ft: dict[str, Tensor]
    pre_is_pretrained: bool
    data: dict[str, Split]
    rows: dict[str, list[int]]
    metric: str
    batch_size: int
    device: torch.device
    _scored: dict[tuple[str, str], Evaluation] = field(default_factory=dict)

    @property
    def theta0(self) -> dict[str, Tensor]:
        params = dict(self.ref.named_parameters())
        return {n: params[n].detach() for n in self.ft}

    @property
    def ood(self) -> list[str]:
        return [s.removeprefix("ood:") for s in self.data if s.startswith("ood:")]

    def scores(self, params: Mapping[str, Tensor] | None, names: Iterable[str]) -> dict[str, Evaluation]:
        """``names``' evaluations of the reference with ``params`` in place (None: the reference itself)."""
        clf = self.ref if params is None else Substituted(self.ref, params)
        return {s: evaluate(clf, self.data[s], self.metric, self.batch_size, self.device, desc=s) for s in names}

    def masked_scores(self, mask: Mapping[str, Tensor], names: Iterable[str]) -> dict[str, Evaluation]:
        """``names``' evaluations of the graft of ``mask``, each scored once per distinct mask: the
        relaxation's epochs and the base patch often round to the same mask, and scoring is
        deterministic, so a repeat is read back rather than recomputed."""
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(mask):
            digest.update(name.encode())
            digest.update(mask[name].detach().cpu().numpy().tobytes())
        key, names = digest.hexdigest(), list(names)
        todo = [s for s in names if (key, s) not in self._scored]
        if todo:
            params = graft(self.theta0, self.ft, mask)
            self._scored.update({(key, s): ev for s, ev in self.scores(params, todo).items()})
        return {s: self._scored[key, s] for s in names}

    def predictions(self, model: str, evals: Mapping[str, Evaluation]) -> pd.DataFrame:
        """``predictions.parquet`` rows of ``model`` on test and the OOD tests."""
        return pd.concat([evals[s].predictions(self.rows[s], model=model, split=s)
                          for s in ("test", *(f"ood:{t}" for t in self.ood))], ignore_index=True)


def _prepare(model_json: str | Path, task: Task, run_dir: str | Path, splits: Mapping[str, str | Path],
             opts: Mapping[str, Any], ood: Mapping[str, tuple[Task, str | Path]] | None, eval_cap: int | None,
             device: torch.device) -> _Grafting:
    """Load the run, split its tuned tensors into graftable and rest, and tokenise ``splits`` (those
    given of train/dev/test) and the OOD test files (test and OOD capped at ``eval_cap`` rows)."""
    run = load_run(model_json, task, run_dir)
    info, tokenizer = run.info, run.tokenizer
    tuned = {n: p.detach() for n, p in run.clf.named_parameters() if p.requires_grad}
    if not tuned:
        raise LmftError(f"graft: {run_dir} is a {info['type']} run that tuned no parameters; nothing to graft")
    graftable, rest = split_state(tuned, opts["exclude"])
    if rest:  # then "pre" is not the pre-trained model: fine-tune with train_only (encoder blocks) instead
        log.warning("graft: %s tuned tensors outside the mask (%s); they keep their fine-tuned values in the "
                    "reference ('pre') model, which is then not the pre-trained one", run_dir,
                    ", ".join(list(rest)[:4]))
    ref, _ = build_for_run(model_json, task, info)  # the same head, mode and seeded init, before training
    apply_state(ref, rest)
    pre_is_pretrained = not rest
    del run, tuned, rest  # of the fine-tuned classifier only the graftable tensors stay
    ref.to(device).eval()

    def encode(path: str | Path, t: Task, name: str) -> tuple[Split, list[int]]:
        df, rows = _load_frame(path, None if name in ("train", "dev") else eval_cap)
        return encode_split(df, t, tokenizer, ref, prompt=info["prompt"], max_length=info["max_length"],
                            name=name), rows

    files = {s: (splits[s], task) for s in SPLITS if s in splits}
    for name, (ood_task, path) in (ood or {}).items():
        if tuple(ood_task.label_words) != tuple(task.label_words):
            raise LmftError(f"graft: OOD task {name!r} has label words {ood_task.label_words}, {task.name!r} has "
                            f"{task.label_words}; OOD evaluation needs the same label space")
        files[f"ood:{name}"] = (path, ood_task)
    encoded = {s: encode(path, t, s) for s, (path, t) in files.items()}
    return _Grafting(ref, {n: t.to(device) for n, t in graftable.items()}, pre_is_pretrained,
                     {s: e[0] for s, e in encoded.items()}, {s: e[1] for s, e in encoded.items()}, task.metric,
                     int(opts["eval_batch_size"]), device)


def _open(device: str) -> torch.device:
    dev_ = resolve_device(device)
    if dev_.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev_)
    return dev_


def run_reference(model_json: str | Path, task: Task, run_dir: str | Path, splits: Mapping[str, str | Path],
                  out_dir: str | Path, *, model: str, k: int, seed: int, method: str,
                  options: Mapping[str, Any], ood: Mapping[str, tuple[Task, str | Path]] | None = None,
                  eval_cap: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Score "pre" and "ft" of one fine-tuning run on dev, test and the OOD tests, once for all its
    grafts; writes ``metrics.json`` and ``predictions.parquet`` (see the module docstring).

    ``splits`` maps dev and test to the run's k-shot parquet files (train is not read); ``ood`` and
    ``eval_cap`` as for :func:`run_graft`; ``options`` are the resolved settings the scores depend on
    (:func:`lmft.graft.plan.reference_options`: ``exclude``, ``eval_batch_size``). Returns the metrics.
    """
    started = time.perf_counter()
    dev_ = _open(device)
    g = _prepare(model_json, task, run_dir, {s: splits[s] for s in EVAL_SPLITS}, options, ood, eval_cap, dev_)
    names = list(g.data)
    pre, fine = g.scores(None, names), g.scores(g.ft, names)
    log.info("graft reference %s %s k=%d seed=%d %s: test %s pre %.4f, ft %.4f", model, task.name, k, seed, method,
             task.metric, pre["test"].metric, fine["test"].metric)
    out = Path(out_dir)
    write_parquet(pd.concat([g.predictions("pre", pre), g.predictions("ft", fine)], ignore_index=True),
                  out / "predictions.parquet")
    ends = {"pre": pre, "ft": fine}
    metrics = {
        "stage": "graft-reference", "task": task.name, "k": k, "seed": seed, "model": model, "method": method,
        "metric": task.metric, "pre_is_pretrained": g.pre_is_pretrained,
        **{f"{end}_{s}_{what}": getattr(ev[s], what) for end, ev in ends.items() for s in EVAL_SPLITS
           for what in ("metric", "loss")},
        **{f"{end}_test_ece": ev["test"].ece for end, ev in ends.items()},
        "graftable": list(g.ft), "n_graftable": sum(t.numel() for t in g.ft.values()),
        "ood": {name: {end: ev[f"ood:{name}"].metric for end, ev in ends.items()} for name in g.ood},
        "options": dict(options), "n_dev": len(g.data["dev"]),
        "n_test": len(g.data["test"]), "device": str(dev_), "wall_time_s": time.perf_counter() - started,
        "peak_mem_mb": peak_mem_mb(dev_),
    }
    write_json(metrics, out / "metrics.json")
    return metrics


def _check_reference(reference: Mapping[str, Any], path: str | Path, g: _Grafting, opts: Mapping[str, Any]) -> None:
    """The reference must score the same graftable tensors, OOD tasks and test rows as this graft, with
    this graft's values of the settings it was made with (its ``options``)."""
    made_with = reference.get("options") or {}
    want = {"graftable": list(g.ft), "ood": sorted(g.ood), "n_test": len(g.data["test"]),
            "options": {key: opts.get(key) for key in made_with}}
    got = {"graftable": reference.get("graftable"), "ood": sorted(reference.get("ood") or {}),
           "n_test": reference.get("n_test"), "options": made_with}
    differ = [key for key in want if got[key] != want[key]]
    if differ or reference.get("stage") != "graft-reference":
        raise ArtifactError(f"{path}: not the graft reference of this run and its settings (differs in "
                            f"{differ or ['stage']}); rerun its graft_reference job")


def _relax(g: _Grafting, base: dict[str, Tensor], count: int, n_graftable: int,
           opts: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[dict[str, float]], int]:
    """The mask of a graft: the base patch (``count`` of ``n_graftable`` entries) relaxed
    (:func:`lmft.graft.mask.relax_mask`), keeping the epoch of the best train + dev metric (``select``
    best) or the last; returns (mask, relaxation history, chosen epoch)."""
    if not (0 < count < n_graftable and int(opts["epochs"]) > 0):
        return base, [], 0  # no relaxation, or no entry or every entry: the top-k is the only mask there is

    def select(mask: dict[str, Tensor]) -> float:
        ev = g.masked_scores(mask, ("train", "dev"))
        return ev["train"].metric + ev["dev"].metric

    relaxed = relax_mask(g.ref, g.ft, base, g.data["train"], epochs=int(opts["epochs"]), lr=float(opts["lr"]),
                         sigmoid_bias=float(opts["sigmoid_bias"]), seed=int(opts["mask_seed"]),
                         batch_size=int(opts["batch_size"]), select=select if opts["select"] == "best" else None)
    return relaxed.mask, relaxed.history, relaxed.epoch


def run_graft(model_json: str | Path, task: Task, run_dir: str | Path, splits: Mapping[str, str | Path],
              out_dir: str | Path, reference: str | Path, *, model: str, k: int, seed: int, method: str,
              sparsity: float, options: Mapping[str, Any], ood: Mapping[str, tuple[Task, str | Path]] | None = None,
              eval_cap: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Graft one fine-tuning run at one sparsity; writes ``mask.safetensors``, ``metrics.json`` and
    ``predictions.parquet``.

    ``splits`` maps train/dev/test to the run's k-shot parquet files; ``ood`` maps a task name to
    (task, test parquet) of tasks with the same label words. Test sets are capped at ``eval_cap``
    rows as the finetune stage caps them. ``options`` are the graft settings as the plan resolved
    them (:func:`lmft.graft.plan.graft_options`). ``reference`` is the run's :func:`run_reference`
    ``metrics.json``, made with the same ``ood``, ``eval_cap`` and reference options: "pre" and "ft"
    are read from it, not scored again. Returns the metrics (see the module docstring).
    """
    started = time.perf_counter()
    dev_ = _open(device)
    g = _prepare(model_json, task, run_dir, splits, options, ood, eval_cap, dev_)
    ref = read_json(reference)
    _check_reference(ref, reference, g, options)
    n_graftable = sum(t.numel() for t in g.ft.values())
    log.info("graft %s %s k=%d seed=%d %s: %d graftable tensors, %d entries, sparsity %g", model, task.name, k, seed,
             method, len(g.ft), n_graftable, sparsity)
    base = base_patch(g.theta0, g.ft, sparsity)
    count = sum(int(m.sum()) for m in base.values())
    mask, history, chosen = _relax(g, base, count, n_graftable, options)
    at_base = g.masked_scores(base, SPLITS)
    at_graft = g.masked_scores(mask, g.data)
    test = at_graft["test"]
    moved = mask_moved(mask, base)
    log.info("graft test %s %.4f (pre %.4f, ft %.4f, base patch %.4f), ECE %.4f; %.1f%% of the mask moved off the "
             "base patch", task.metric, test.metric, ref["pre_test_metric"], ref["ft_test_metric"],
             at_base["test"].metric, test.ece, 100 * moved)

    out = Path(out_dir)
    save_mask({n: m.cpu() for n, m in mask.items()}, out / "mask.safetensors",
              {"sparsity": sparsity, "count": count, "n_graftable": n_graftable, "model": model, "task": task.name,
               "k": k, "seed": seed, "method": method})
    write_parquet(g.predictions("graft", at_graft), out / "predictions.parquet")
    metrics = {
        "stage": "graft", "task": task.name, "k": k, "seed": seed, "model": model, "method": method,
        "metric": task.metric, "dev_metric": at_graft["dev"].metric, "test_metric": test.metric,
        "test_ece": test.ece, "dev_loss": at_graft["dev"].loss, "test_loss": test.loss,
        "sparsity": sparsity, "count": count, "n_graftable": n_graftable, "graftable": list(g.ft),
        **{key: ref[key] for key in REFERENCE_KEYS},
        "base_count": count, "base_dev_metric": at_base["dev"].metric, "base_test_metric": at_base["test"].metric,
        "base_train_loss": at_base["train"].loss, "graft_train_loss": at_graft["train"].loss, "mask_moved": moved,
        "kept_fraction": kept_fraction(test.metric, ref["pre_test_metric"], ref["ft_test_metric"]),
        "relax_epochs": len(history), "relax_chosen_epoch": chosen, "relax_history": history,
        "ood": {name: {**ref["ood"][name], "graft": at_graft[f"ood:{name}"].metric} for name in g.ood},
        "options": dict(options), "n_train": len(g.data["train"]), "n_dev": len(g.data["dev"]),
        "n_test": len(g.data["test"]), "device": str(dev_), "wall_time_s": time.perf_counter() - started,
        "peak_mem_mb": peak_mem_mb(dev_),
    }
    write_json(metrics, out / "metrics.json")
    return metrics
