"""Kernel files: shards, merged kernels in the paper's format, and the pre-trained logits f0.

A merged kernel is ``torch.save((kernel, labels))`` exactly as the paper's released kernels:
``kernel`` float64 ``[N_train, C, N_x, C]`` (``[2, ...]`` for a stacked formula such as
asymmetric-signgd, :mod:`lmft.kernels.formulas`) and ``labels`` the LongTensor ``[N_x]`` of the split's class
indices (also when ``binary``, where the paper's code stored +-1 floats, which
:func:`lmft.kernels.sets.load_kernel_set` maps back). The pre-trained logits f0 of a split go to a
separate file, as the paper's code does: ``torch.save((f0, labels))`` with ``f0`` float64
``[N_x, C]`` (:func:`save_logits`). A shard file is a dict (:func:`save_shard`); :func:`merge_shards`
assembles the shards of one kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmft.io import ArtifactError, LmftError, PathLike, torch_load, torch_save
from lmft.kernels.formulas import get_formula


@dataclass
class KernelShard:
    """One shard: ``kernel`` float64 ``[r1-r0, C, c1-c0, C]`` (``[2, ...]`` for asymmetric-signgd) of a
    full ``[n_rows, C, n_cols, C]`` kernel."""

    kernel: Tensor
    rows: tuple[int, int]
    cols: tuple[int, int]
    n_rows: int
    n_cols: int
    formula: str

    @property
    def num_logits(self) -> int:
        return int(self.kernel.shape[-1])

    def describe(self) -> str:
        return f"rows {self.rows[0]}:{self.rows[1]} x cols {self.cols[0]}:{self.cols[1]}"


def split_range(n: int, parts: int) -> list[tuple[int, int]]:
    """Cut ``0..n`` into ``parts`` contiguous ranges of near-equal size (for laying out shards)."""
    if not 1 <= parts <= n:
        raise LmftError(f"cannot cut {n} examples into {parts} shards")
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def save_shard(shard: KernelShard, path: PathLike) -> None:
    torch_save({"kernel": shard.kernel, "rows": list(shard.rows), "cols": list(shard.cols),
                "n_rows": shard.n_rows, "n_cols": shard.n_cols, "formula": shard.formula}, path)


def load_shard(path: PathLike) -> KernelShard:
    obj = torch_load(path)
    keys = {"kernel", "rows", "cols", "n_rows", "n_cols", "formula"}
    if not isinstance(obj, dict) or set(obj) != keys:
        raise ArtifactError(f"{path}: not a kernel shard (expected a dict with keys {sorted(keys)})")
    return KernelShard(obj["kernel"], tuple(obj["rows"]), tuple(obj["cols"]), obj["n_rows"], obj["n_cols"], obj["formula"])


def merge_shards(shards: Sequence[KernelShard]) -> Tensor:
    """Assemble shards into the full float64 ``[N, C, M, C]`` kernel (``[2, N, C, M, C]`` for
    asymmetric-signgd), checking that they tile it exactly: no gap, no overlap, one formula and shape."""
    if not shards:
        raise LmftError("merge_shards: no shards")
    first = shards[0]
    n, m, formula, c = first.n_rows, first.n_cols, first.formula, first.num_logits
    lead = get_formula(formula).lead
    for s in shards:
        if (s.n_rows, s.n_cols, s.formula, s.num_logits) != (n, m, formula, c):
            raise LmftError(f"shard {s.describe()} is of a {s.formula} kernel {s.n_rows}x{s.n_cols} with {s.num_logits} "
                            f"logits, shard {first.describe()} of a {formula} kernel {n}x{m} with {c} logits")
        (r0, r1), (c0, c1) = s.rows, s.cols
        if not (0 <= r0 < r1 <= n and 0 <= c0 < c1 <= m):
            raise LmftError(f"shard {s.describe()} lies outside the {n}x{m} kernel")
        if tuple(s.kernel.shape) != (*lead, r1 - r0, c, c1 - c0, c):
            raise LmftError(f"shard {s.describe()}: kernel has shape {tuple(s.kernel.shape)}, "
                            f"expected {(*lead, r1 - r0, c, c1 - c0, c)}")
    _check_tiling(shards, n, m)
    kernel = torch.empty(*lead, n, c, m, c, dtype=torch.float64)
    for s in shards:
        kernel[..., s.rows[0]:s.rows[1], :, s.cols[0]:s.cols[1], :] = s.kernel
    return kernel


def _check_tiling(shards: Sequence[KernelShard], n: int, m: int) -> None:
    """Raise naming the first overlapping pair of shards, or the cells no shard covers."""
    row_cuts = sorted({0, n, *(x for s in shards for x in s.rows)})
    col_cuts = sorted({0, m, *(x for s in shards for x in s.cols)})
    owner: dict[tuple[int, int], KernelShard] = {}
    for s in shards:
        for i in range(row_cuts.index(s.rows[0]), row_cuts.index(s.rows[1])):
            for j in range(col_cuts.index(s.cols[0]), col_cuts.index(s.cols[1])):
                if (i, j) in owner:
                    raise LmftError(f"shards {owner[i, j].describe()} and {s.describe()} overlap on rows "
                                    f"{row_cuts[i]}:{row_cuts[i + 1]} x cols {col_cuts[j]}:{col_cuts[j + 1]}")
                owner[i, j] = s
    missing = [f"rows {row_cuts[i]}:{row_cuts[i + 1]} x cols {col_cuts[j]}:{col_cuts[j + 1]}"
               for i in range(len(row_cuts) - 1) for j in range(len(col_cuts) - 1) if (i, j) not in owner]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise LmftError(f"no shard covers {'; '.join(missing[:5])}{more} of the {n}x{m} kernel")


def save_kernel(path: PathLike, kernel: Tensor, labels: Tensor) -> None:
    """Write ``(kernel, labels)`` as the paper's kernel files (``labels`` LongTensor ``[N_x]``)."""
    if kernel.dtype != torch.float64 or kernel.dim() not in (4, 5) or kernel.shape[-2] != labels.shape[0]:
        raise LmftError(f"save_kernel: kernel {tuple(kernel.shape)} {kernel.dtype} does not fit labels {tuple(labels.shape)}")
    torch_save((kernel, labels.long().cpu()), path)


def load_kernel(path: PathLike) -> tuple[Tensor, Tensor]:
    """Read ``(kernel float64 [N, C, M, C] or [2, N, C, M, C], labels [M])``."""
    obj = torch_load(path)
    if not (isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj)):
        raise ArtifactError(f"{path}: not a (kernel, labels) tuple")
    kernel, labels = obj
    if kernel.dim() not in (4, 5) or kernel.shape[-2] != labels.shape[0] or kernel.shape[-1] != kernel.shape[-3]:
        raise ArtifactError(f"{path}: kernel {tuple(kernel.shape)} and labels {tuple(labels.shape)} do not fit")
    return kernel, labels


def save_logits(path: PathLike, f0: Tensor, labels: Tensor) -> None:
    """Write ``(f0 float64 [N, C], labels [N])``, the pre-trained logits of a split."""
    if f0.dim() != 2 or f0.shape[0] != labels.shape[0]:
        raise LmftError(f"save_logits: logits {tuple(f0.shape)} do not fit labels {tuple(labels.shape)}")
    torch_save((f0.double().cpu(), labels.long().cpu()), path)


def load_logits(path: PathLike) -> tuple[Tensor, Tensor]:
    obj = torch_load(path)
    if not (isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj)
            and obj[0].dim() == 2 and obj[0].shape[0] == obj[1].shape[0]):
        raise ArtifactError(f"{path}: not an (f0 [N, C], labels [N]) tuple")
    return obj
