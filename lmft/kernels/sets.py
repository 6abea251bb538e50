"""What a kernel solver reads: the kernel between the training examples and one split, its labels and f0.

A :class:`KernelSet` holds, for one split, the kernel as :mod:`lmft.kernels.files` writes it
(float64 ``[N, C, M, C]``, or ``[P, N, C, M, C]`` for a stacked formula of :mod:`lmft.kernels.formulas`),
the split's class indices ``[M]`` and optionally its pre-trained logits f0 ``[M, C]``. C = 1 means
a binary kernel of the logit difference ``f_1 - f_0``, with targets +-1. The helpers below check
and prepare the three splits for the solvers (:mod:`lmft.kernels.solvers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lmft.io import ArtifactError, LmftError, PathLike
from lmft.kernels.files import load_kernel, load_logits
from lmft.kernels.formulas import get_formula


@dataclass(frozen=True)
class KernelSet:
    """The kernel between the training examples and one split, the split's labels and f0.

    ``kernel`` float64 ``[N, C, M, C]`` (``[P, N, C, M, C]`` for a stacked formula), ``labels`` ``[M]``
    class indices, ``f0`` ``[M, C]`` pre-trained logits or None.
    """

    kernel: Tensor
    labels: Tensor
    f0: Tensor | None = None

    @property
    def stacked(self) -> bool:
        """Whether the kernel stacks the parts of a stacked formula (``[P, N, C, M, C]``)."""
        return self.kernel.dim() == 5

    @property
    def main(self) -> Tensor:
        """The ``[N, C, M, C]`` kernel (part 0 of a stacked one)."""
        return self.kernel[0] if self.stacked else self.kernel

    def flat(self) -> Tensor:
        """``[N*C, M*C]``: row ``i*C + a``, column ``j*C + b``."""
        n, c, m, _ = self.main.shape
        return self.main.reshape(n * c, m * c)


def load_kernel_set(kernel_path: PathLike, f0_path: PathLike | None = None, formula: str | None = None) -> KernelSet:
    """A split's :class:`KernelSet` from its kernel file and, optionally, its f0 file (see :mod:`lmft.kernels.files`).

    Labels +-1 (the paper's released binary kernels) become class indices 0/1. With ``formula`` the
    kernel must have that formula's shape (stacked or not).
    """
    kernel, labels = load_kernel(kernel_path)
    if formula is not None and (kernel.dim() == 5) != get_formula(formula).stacked:
        shape = "[P, N, C, M, C]" if get_formula(formula).stacked else "[N, C, M, C]"
        raise ArtifactError(f"{kernel_path}: kernel {tuple(kernel.shape)}, but {formula} kernels are {shape}")
    if labels.is_floating_point():
        if not ((labels == 1) | (labels == -1)).all():
            raise LmftError(f"{kernel_path}: float labels other than +-1; expected class indices")
        labels = ((labels + 1) / 2).long()
    f0 = None
    if f0_path is not None:
        f0, f0_labels = load_logits(f0_path)
        if not torch.equal(f0_labels, labels) or f0.shape[1] != kernel.shape[-1]:
            raise LmftError(f"{f0_path}: logits {tuple(f0.shape)} of other examples or logits than the kernel "
                            f"{kernel_path} {tuple(kernel.shape)}")
    return KernelSet(kernel, labels, f0)


def class_logits(pred: Tensor) -> Tensor:
    """Solver outputs ``[M, C]`` -> class logits: binary ``[M, 1]`` p -> ``[-p/2, p/2]``."""
    return torch.cat([-pred / 2, pred / 2], dim=1) if pred.shape[1] == 1 else pred

def check_sets(train: KernelSet, dev: KernelSet, test: KernelSet, f0_scaling: float | None) -> tuple[int, int]:
    """Validate shapes across the three splits; return (N, C)."""
    if f0_scaling is not None and f0_scaling <= 0:
        raise LmftError(f"f0_scaling must be > 0 (or None for no init adjustment), got {f0_scaling}")
    for name, ks in (("train", train), ("dev", dev), ("test", test)):
        k = ks.kernel
        if k.dim() not in (4, 5) or k.shape[-1] != k.shape[-3]:
            raise LmftError(f"{name} kernel has shape {tuple(k.shape)}; expected [N, C, M, C] or [2, N, C, M, C]")
        if ks.labels.dim() != 1 or k.shape[-2] != ks.labels.shape[0]:
            raise LmftError(f"{name} kernel {tuple(k.shape)} has {k.shape[-2]} columns but {ks.labels.shape[0]} labels")
        if k.shape[-4:-2] != train.kernel.shape[-4:-2]:
            raise LmftError(f"{name} kernel rows {tuple(k.shape[-4:-2])} differ from the train kernel's "
                            f"{tuple(train.kernel.shape[-4:-2])}: kernels of different training sets or logits")
        if f0_scaling is not None:
            if ks.f0 is None:
                raise LmftError(f"f0_scaling is set but the {name} split has no pre-trained logits f0")
            if ks.f0.shape != (ks.labels.shape[0], k.shape[-1]):
                raise LmftError(f"{name} f0 has shape {tuple(ks.f0.shape)}, expected {(ks.labels.shape[0], k.shape[-1])}")
    n, c = train.kernel.shape[-4:-2]
    if train.kernel.shape[-2] != n:
        raise LmftError(f"train kernel {tuple(train.kernel.shape)} is not train x train")
    classes = 2 if c == 1 else c
    for name, ks in (("train", train), ("dev", dev), ("test", test)):
        if ((ks.labels < 0) | (ks.labels >= classes)).any():
            raise LmftError(f"{name} labels must be class indices 0..{classes - 1} for a kernel with {c} logit(s)")
    return n, c


def targets(labels: Tensor, c: int) -> Tensor:
    """``[N, C]`` float64 targets: one-hot, or +-1 in one column when C = 1."""
    if c == 1:
        return (2.0 * labels.double() - 1.0)[:, None]
    return F.one_hot(labels.long(), c).double()


def offset(ks: KernelSet, f0_scaling: float | None) -> Tensor:
    """``f0 / s`` ``[M, C]``, or zeros without init adjustment."""
    m, c = ks.kernel.shape[-2:]
    return torch.zeros(m, c, dtype=torch.float64) if f0_scaling is None else ks.f0.double() / f0_scaling


def sigma_max(k: Tensor) -> float:
    s = float(torch.linalg.matrix_norm(k, ord=2))
    if s == 0.0:
        raise LmftError("the train kernel is all zeros (no trainable parameter reaches the logits?)")
    return s

def all_classes(name: str, labels: Tensor, c: int) -> None:
    """Raise unless the training labels ``[N]`` cover every class of a kernel with ``c`` logits."""
    classes = 2 if c == 1 else c
    present = sorted(set(labels.tolist()))
    if len(present) != classes:
        raise LmftError(f"{name}: the training labels cover {present}, not all {classes} classes")


def columns(ks: KernelSet) -> np.ndarray:
    """``[M, N*C*C]``: each column example's kernel values against the training examples, ``K[:, :, j, :]``."""
    k = ks.main
    return k.permute(2, 0, 1, 3).reshape(k.shape[2], -1).numpy()
