"""The grafting stage: one (model, task, k, seed, method, sparsity) job, from a fine-tuning run to a mask.

:func:`run_graft` grafts the run at one sparsity with :mod:`lmft.graft_mask` (base patch, relaxation,
rounding) and scores the graft; :mod:`lmft.graft_plan` plans the jobs from the config.

``mask.safetensors`` stores, per graftable tensor, the sorted flat indices (int64) of the kept
entries, with the tensor shapes and the count in the metadata: at the sparsities the paper
studies (1e-5 to 1e-2) this is far smaller than a bool map.

The graft stage's ``metrics.json`` adds to the shared keys (whose ``dev_metric``/``test_metric``/
``test_ece`` are the graft's): ``sparsity``, ``count`` (entries kept), ``n_graftable``,
``graftable`` (tensor names), ``dev_loss``/``test_loss``, ``pre_is_pretrained`` (false when the
run tuned tensors outside the mask, e.g. embeddings: its "pre" then holds them fine-tuned), ``pre_dev_metric``/``pre_test_metric``/
``pre_test_ece``, ``ft_dev_metric``/``ft_test_metric``/``ft_test_ece``, ``base_dev_metric``/
``base_test_metric`` (the base patch), ``base_train_loss``/``graft_train_loss``, ``kept_fraction``
(``(graft - pre) / (ft - pre)`` on test, null when ft == pre), ``relax_epochs``,
``relax_chosen_epoch`` (0: no relaxation, at sparsity 0 or 1), ``relax_history`` (per epoch: the
soft training loss before the step and the selection score), ``ood`` (per OOD task: pre / ft /
graft test metric), ``options``, ``n_train``/``n_dev``/``n_test`` and ``device``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from lmft.checkpoint import apply_state
from lmft.config import section
from lmft.evaluate import Evaluation, Split, evaluate
from lmft.graft_mask import DEFAULT_EXCLUDE, base_patch, graft, kept_fraction, relax_mask, split_state
from lmft.graft_plan import OPTIONS
from lmft.io import (ArtifactError, LmftError, load_tensor_metadata, load_tensors, read_parquet, save_tensors,
                     write_json)
from lmft.kshot import cap_rows
from lmft.runs import build_for_run, encode_split, load_run, peak_mem_mb, resolve_device
from lmft.substitute import Substituted
from lmft.tasks import Task

log = logging.getLogger(__name__)

MASK_FORMAT = "lmft-graft-indices"


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


def resolve_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The graft settings with defaults filled in (the config schema's ``graft`` section; ``exclude``:
    :data:`lmft.graft_mask.DEFAULT_EXCLUDE`); raises on an unknown key or a bad value."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise LmftError(f"graft: unknown option(s) {unknown}; known: {sorted(OPTIONS)}")
    defaults = section({}, "graft") | {"exclude": list(DEFAULT_EXCLUDE)}
    out = {key: options.get(key, defaults[key]) for key in OPTIONS}
    if out["select"] not in ("best", "last"):
        raise LmftError(f"graft: select must be 'best' (train + dev metric, as the released code) or 'last', "
                        f"got {out['select']!r}")
    return out


def _load_frame(path: str | Path, eval_cap: int | None = None) -> pd.DataFrame:
    df = read_parquet(path, ["text_a", "label"])
    return df.iloc[cap_rows(len(df), eval_cap)].reset_index(drop=True)


def run_graft(model_json: str | Path, task: Task, run_dir: str | Path, splits: Mapping[str, str | Path],
              out_dir: str | Path, *, model: str, k: int, seed: int, method: str, sparsity: float,
              options: Mapping[str, Any] | None = None, ood: Mapping[str, tuple[Task, str | Path]] | None = None,
              eval_cap: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Graft one fine-tuning run at one sparsity; writes ``mask.safetensors`` and ``metrics.json``.

    ``splits`` maps train/dev/test to the run's k-shot parquet files; ``ood`` maps a task name to
    (task, test parquet) of tasks with the same label words. Test sets are capped at ``eval_cap``
    rows as the finetune stage caps them. Returns the metrics (see the module docstring).
    """
    started = time.perf_counter()
    opts = resolve_options(options)
    dev_ = resolve_device(device)
    if dev_.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev_)
    run = load_run(model_json, task, run_dir)
    info, tokenizer = run.info, run.tokenizer
    tuned = {n: p.detach() for n, p in run.clf.named_parameters() if p.requires_grad}
    if not tuned:
        raise LmftError(f"graft: {run_dir} is a {info['type']} run that tuned no parameters; nothing to graft")
    graftable, rest = split_state(tuned, opts["exclude"])
    if rest:  # then "pre" is not the pre-trained model: fine-tune with freeze_embeddings (and a frozen head)
        log.warning("graft: %s tuned tensors outside the mask (%s); they keep their fine-tuned values in the "
                    "reference ('pre') model, which is then not the pre-trained one", run_dir, ", ".join(list(rest)[:4]))
    pre_is_pretrained = not rest
    ref, _ = build_for_run(model_json, task, info)  # the same head, mode and seeded init, before training
    apply_state(ref, rest)
    del run, tuned, rest  # of the fine-tuned classifier only the graftable tensors stay
    ref.to(dev_).eval()
    ft = {n: t.to(dev_) for n, t in graftable.items()}
    del graftable
    theta0 = {n: p.detach() for n, p in ref.named_parameters() if n in ft}
    n_graftable = sum(t.numel() for t in ft.values())
    log.info("graft %s %s k=%d seed=%d %s: %d graftable tensors, %d entries, sparsity %g", model, task.name, k, seed,
             method, len(ft), n_graftable, sparsity)

    def encode(df: pd.DataFrame, t: Task, name: str) -> Split:
        return encode_split(df, t, tokenizer, ref, prompt=info["prompt"], max_length=info["max_length"], name=name)

    data = {s: encode(_load_frame(splits[s], eval_cap if s == "test" else None), task, s)
            for s in ("train", "dev", "test")}
    ood_data = {}
    for name, (ood_task, path) in (ood or {}).items():
        if tuple(ood_task.label_words) != tuple(task.label_words):
            raise LmftError(f"graft: OOD task {name!r} has label words {ood_task.label_words}, {task.name!r} has "
                            f"{task.label_words}; OOD evaluation needs the same label space")
        ood_data[name] = encode(_load_frame(path, eval_cap), ood_task, f"ood-{name}")
    bs = int(opts["eval_batch_size"])

    def scores(params: Mapping[str, Tensor] | None, names: Iterable[str]) -> dict[str, Evaluation]:
        clf = ref if params is None else Substituted(ref, params)
        return {s: evaluate(clf, data[s] if s in data else ood_data[s], task.metric, bs, dev_, desc=s) for s in names}

    def grafted(mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return graft(theta0, ft, mask)

    everything = ("train", "dev", "test", *ood_data)
    pre, fine = scores(None, everything), scores(ft, everything)
    base = base_patch(theta0, ft, sparsity)
    count = sum(int(m.sum()) for m in base.values())
    if 0 < count < n_graftable:
        def select(mask: dict[str, Tensor]) -> float:
            ev = scores(grafted(mask), ("train", "dev"))
            return ev["train"].metric + ev["dev"].metric

        relaxed = relax_mask(ref, ft, base, data["train"], epochs=int(opts["epochs"]), lr=float(opts["lr"]),
                             sigmoid_bias=float(opts["sigmoid_bias"]), seed=int(opts["mask_seed"]),
                             batch_size=int(opts["batch_size"]), select=select if opts["select"] == "best" else None)
        mask, history, chosen = relaxed.mask, relaxed.history, relaxed.epoch
    else:  # sparsity 0 or 1: the top-k is the only mask there is
        mask, history, chosen = base, [], 0
    at_base = scores(grafted(base), ("train", "dev", "test"))
    at_graft = scores(grafted(mask), everything)
    test = at_graft["test"]
    log.info("graft test %s %.4f (pre %.4f, ft %.4f, base patch %.4f), ECE %.4f", task.metric, test.metric,
             pre["test"].metric, fine["test"].metric, at_base["test"].metric, test.ece)

    out = Path(out_dir)
    save_mask({n: m.cpu() for n, m in mask.items()}, out / "mask.safetensors",
              {"sparsity": sparsity, "count": count, "n_graftable": n_graftable, "model": model, "task": task.name,
               "k": k, "seed": seed, "method": method})
    metrics = {
        "stage": "graft", "task": task.name, "k": k, "seed": seed, "model": model, "method": method,
        "metric": task.metric, "dev_metric": at_graft["dev"].metric, "test_metric": test.metric,
        "test_ece": test.ece, "dev_loss": at_graft["dev"].loss, "test_loss": test.loss,
        "sparsity": sparsity, "count": count, "n_graftable": n_graftable, "graftable": list(ft),
        "pre_is_pretrained": pre_is_pretrained,
        "pre_dev_metric": pre["dev"].metric, "pre_test_metric": pre["test"].metric, "pre_test_ece": pre["test"].ece,
        "ft_dev_metric": fine["dev"].metric, "ft_test_metric": fine["test"].metric, "ft_test_ece": fine["test"].ece,
        "base_dev_metric": at_base["dev"].metric, "base_test_metric": at_base["test"].metric,
        "base_train_loss": at_base["train"].loss, "graft_train_loss": at_graft["train"].loss,
        "kept_fraction": kept_fraction(test.metric, pre["test"].metric, fine["test"].metric),
        "relax_epochs": len(history), "relax_chosen_epoch": chosen, "relax_history": history,
        "ood": {name: {"pre": pre[name].metric, "ft": fine[name].metric, "graft": at_graft[name].metric}
                for name in ood_data},
        "options": opts, "n_train": len(data["train"]), "n_dev": len(data["dev"]), "n_test": len(data["test"]),
        "device": str(dev_), "wall_time_s": time.perf_counter() - started, "peak_mem_mb": peak_mem_mb(dev_),
    }
    write_json(metrics, out / "metrics.json")
    return metrics
