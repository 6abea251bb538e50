"""Kernel solvers: predict with the eNTK of a Classifier instead of fine-tuning it (Malladi et al. 2023).

Each solver reads, for train, dev and test, a :class:`lmft.kernels.sets.KernelSet`: the kernel
between the training examples and that split, float64 ``[N, C, M, C]`` as :mod:`lmft.kernels.files`
writes it, the split's class indices ``[M]``, and optionally its pre-trained logits f0 ``[M, C]``.
C = 1 means a binary kernel of the logit difference ``f_1 - f_0``, with targets +-1. Like the
paper's code, solvers work on the flattened ``(N*C) x (M*C)`` system, cross-logit entries included
(row ``i*C + a``). The kernel of a stacked formula (:mod:`lmft.kernels.formulas`: asymmetric-signgd,
``[2, N, C, M, C]``) is used through its first part ``<sign J(x_i), J(y_j)>`` except by the solvers
flagged ``stacked`` in :data:`SOLVERS` (``asym``), which need both parts.

``lstsq``
    kernel regression on one-hot targets (+-1 when binary), minus ``f0 / s`` when ``f0_scaling`` s
    is given ("adjust for init"): ``alpha = (K + r * sigma_max(K) * I)^+ (Y - f0/s)``; prediction
    ``f0(x)/s + K(train, x)^T alpha``. ``r`` is chosen on dev from ``grid``.
``logistic``
    the paper's solver: scikit-learn's ``LogisticRegressionCV`` (L2, with intercept, lbfgs,
    ``max_iter=10000``, ``random_state=0``, accuracy scoring, ``Cs`` = ``grid``, by default its ten
    ``logspace(-4, 4)`` values) cross-validated on the training set alone with stratified 5-fold
    splits in row order (fewer folds when a class has fewer than 5 examples). An example's features
    are its kernel values against the N training examples, the raw kernel's column ``K[:, :, j, :]``
    (N values when binary, N*C*C otherwise); its logits are the fitted decision function. As in the
    paper's code there is no f0 and no rescaling of the kernel. The paper's code is binary only and
    fits on the train kernel's rows ``K[i, :]``, its columns for the symmetric sgd and signgd kernels;
    on an asymmetric kernel the columns give training and evaluated examples features of one kind.
    With C > 1 this is the same fit, multinomial (an extension: the paper has no multi-class one).
    ``reg`` is the C the cross-validation chose; ``dev_scores`` holds the dev metric of that one fit.
``logistic-dev``
    kernel logistic regression: logits ``f0/s + K^T beta / sigma_max(K)`` under the multinomial
    cross-entropy over the C logits (the logistic loss when binary), mean over examples, plus
    ``r/2 * ||beta||^2``; minimised with scipy's L-BFGS-B from beta = 0. The penalty on the
    coefficients (as ``logistic``'s, on the kernel's columns) keeps the problem strictly convex for
    any kernel, asymmetric ones included, where the RKHS norm ``beta^T K beta`` could be unbounded
    below. ``r`` is chosen on dev.
``svm``
    scikit-learn ``SVC(kernel="precomputed")`` on the kernel divided by its ``sigma_max``; its ``C`` is
    chosen on dev. Binary kernels are used as they are; a multi-class kernel is reduced to
    ``k(x, y) = sum_a K[x, a, y, a]`` (the Frobenius inner product of the Jacobians, still PSD for sgd
    and signgd) and SVC's one-vs-one decision values (in ``ovr`` shape) serve as logits. No f0.
``asym``
    the least-squares SVM for asymmetric kernels (AsK-LS; He et al., "Learning with asymmetric
    kernels: least squares and feature interpretation", 2023), binary only, for asymmetric-signgd.
    With ``K(u, v) = <phi_s(u), phi_t(v)>`` (``phi_s = sign J``, ``phi_t = J``), ``H_ij = y_i K(x_i, x_j) y_j``,
    it solves ``[[0, 0, y', 0], [0, 0, 0, y'], [y, 0, I/gamma, H], [0, y, H', I/gamma]] [b1, b2, alpha, beta]
    = [0, 0, 1, 1]`` and predicts ``lam * f_t(x) + (1 - lam) * f_s(x)`` with the target-side
    ``f_t(x) = sum_i alpha_i y_i K(x_i, x) + b2`` (the file's part 0) and the source-side
    ``f_s(x) = sum_i beta_i y_i K(x, x_i) + b1`` (part 1, the flipped kernel). The kernel is first
    divided by its ``sigma_max`` so ``gamma`` is scale-free; ``gamma`` is chosen on dev, ``lam`` is an
    explicit option (the paper's code reads a ``kernel_lambda`` it never defines). No f0.

Selection (all but ``logistic``, which cross-validates): for each grid value the dev metric (``acc``
or ``f1``) of the argmax of the predicted logits; the first best value in grid order wins.
Predicted logits are ``[M, C]``; binary predictions p (a logit difference) become the two class
logits ``[-p/2, p/2]``, whose softmax is ``sigmoid(p)``, for the metric and the ECE.

The kernel-solve stage's ``metrics.json`` adds to the shared keys (from :func:`solution_metrics`):
``solver``, ``reg_name`` (``r``, ``C`` or ``gamma``), ``reg`` (the chosen value), ``grid`` and
``dev_scores`` (the dev metric of each grid value; of the chosen fit alone for ``logistic``),
``dev_ece``; the stage adds ``formula`` and ``f0_scaling``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lmft.io import LmftError
from lmft.kernels.sets import KernelSet, all_classes, check_sets, class_logits, columns, offset, sigma_max, targets
from lmft.models import metrics
from lmft.models.evaluate import score

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegressionCV

GRIDS: dict[str, tuple[float, ...]] = {
    "lstsq": (0.0, 1e-4, 1e-3, 1e-2, 1e-1),
    "logistic": tuple(float(c) for c in np.logspace(-4, 4, 10)),  # LogisticRegressionCV's default Cs=10
    "logistic-dev": (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    "svm": (0.01, 0.1, 1.0, 10.0, 100.0),
    "asym": (0.1, 1.0, 10.0, 100.0, 1000.0),
}
ECE_BINS = 10
LAM = 0.5  # asym's default weight of its two decision functions


@dataclass
class Solution:
    """Predicted logits ``[M, num_classes]`` float64 of dev and test, and the chosen regularisation."""

    solver: str
    reg_name: str
    reg: float
    dev_logits: Tensor
    test_logits: Tensor
    grid: list[float] = field(default_factory=list)
    dev_scores: list[float] = field(default_factory=list)


Predictor = Callable[[KernelSet], Tensor]  # a split's kernel -> predictions [M, C]

def _select(name: str, reg_name: str, grid: Sequence[float], fit: Callable[[float], Predictor],
            dev: KernelSet, test: KernelSet, metric: str) -> Solution:
    if not grid:
        raise LmftError(f"{name}: empty grid of {reg_name}")
    best, best_score, best_logits, scores = None, -1.0, None, []
    for value in grid:
        predict = fit(float(value))
        logits = class_logits(predict(dev))
        s = score(logits.argmax(1), dev.labels, metric)
        scores.append(s)
        if s > best_score:
            best, best_score, best_logits = (value, predict), s, logits
    value, predict = best
    return Solution(name, reg_name, float(value), best_logits, class_logits(predict(test)), [float(g) for g in grid], scores)


def lstsq(train: KernelSet, dev: KernelSet, test: KernelSet, *, metric: str = "acc",
          grid: Sequence[float] = GRIDS["lstsq"], f0_scaling: float | None = None) -> Solution:
    """Kernel regression with ``r * sigma_max(K) * I`` ridge, ``r`` chosen on dev from ``grid``."""
    n, c = check_sets(train, dev, test, f0_scaling)
    k = train.flat()
    smax = sigma_max(k)
    target = (targets(train.labels, c) - offset(train, f0_scaling)).reshape(-1, 1)
    eye = torch.eye(n * c, dtype=torch.float64)

    def fit(r: float) -> Predictor:
        alpha = torch.linalg.lstsq(k + r * smax * eye, target, driver="gelsd").solution[:, 0]
        return lambda ks: offset(ks, f0_scaling) + (ks.flat().T @ alpha).reshape(-1, c)

    return _select("lstsq", "r", grid, fit, dev, test, metric)


def fit_logistic_cv(x: np.ndarray, y: np.ndarray, cs: Sequence[float], *, folds: int = 5,
                    max_iter: int = 10000) -> tuple[LogisticRegressionCV, float]:
    """scikit-learn's ``LogisticRegressionCV`` as the paper's code calls it (L2, intercept, lbfgs,
    accuracy scoring, ``random_state=0``), fit on features ``x`` ``[N, F]`` and class indices ``y``
    ``[N]``: ``C`` from ``cs`` by stratified ``folds``-fold cross-validation in row order (fewer folds
    when a class has fewer examples), then refit on all of them. Returns the model and its ``C``."""
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    if len(cs) == 0:
        raise LmftError("logistic regression CV: empty grid of C")
    smallest = int(np.unique(y, return_counts=True)[1].min())
    if smallest < 2:
        raise LmftError("logistic regression CV needs two training examples of every class")
    model = LogisticRegressionCV(Cs=[float(c) for c in cs], cv=StratifiedKFold(min(folds, smallest)),
                                 scoring="accuracy", max_iter=max_iter, random_state=0)
    with warnings.catch_warnings():  # scikit-learn 1.8+ announces default changes that leave this L2 fit as it is
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(x, y)
    return model, float(np.ravel(model.C_)[0])  # an array of one C per class before scikit-learn 1.10


def logistic(train: KernelSet, dev: KernelSet, test: KernelSet, *, metric: str = "acc",
             grid: Sequence[float] = GRIDS["logistic"]) -> Solution:
    """The paper's ``LogisticRegressionCV`` on the kernel's columns (:func:`fit_logistic_cv`), ``C``
    cross-validated over ``grid`` on the training set."""
    _, c = check_sets(train, dev, test, None)
    all_classes("logistic", train.labels, c)
    model, c_cv = fit_logistic_cv(columns(train), train.labels.numpy(), grid)

    def predict(ks: KernelSet) -> Tensor:
        d = torch.from_numpy(model.decision_function(columns(ks))).double()
        return class_logits(d[:, None] if d.dim() == 1 else d)

    dev_logits = predict(dev)
    return Solution("logistic", "C", c_cv, dev_logits, predict(test), [float(g) for g in grid],
                    [score(dev_logits.argmax(1), dev.labels, metric)])


def logistic_dev(train: KernelSet, dev: KernelSet, test: KernelSet, *, metric: str = "acc",
                 grid: Sequence[float] = GRIDS["logistic-dev"], f0_scaling: float | None = None,
                 max_iter: int = 1000) -> Solution:
    """Kernel logistic regression (L-BFGS-B), L2 penalty ``r`` chosen on dev from ``grid``."""
    from scipy.optimize import minimize

    n, c = check_sets(train, dev, test, f0_scaling)
    smax = sigma_max(train.flat())
    kn = train.flat() / smax
    off = offset(train, f0_scaling)
    labels = train.labels.long()
    signs = targets(labels, 1)[:, 0]

    def fit(r: float) -> Predictor:
        def loss_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
            beta = torch.from_numpy(x).requires_grad_()
            z = off + (kn.T @ beta).reshape(n, c)
            data = F.softplus(-signs * z[:, 0]).mean() if c == 1 else F.cross_entropy(z, labels)
            loss = data + 0.5 * r * beta @ beta
            (g,) = torch.autograd.grad(loss, beta)
            return float(loss.detach()), g.numpy()

        res = minimize(loss_and_grad, np.zeros(n * c), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
        beta = torch.from_numpy(res.x)
        return lambda ks: offset(ks, f0_scaling) + (ks.flat().T @ beta).reshape(-1, c) / smax

    return _select("logistic-dev", "r", grid, fit, dev, test, metric)


def _svm_gram(ks: KernelSet) -> Tensor:
    """``[N, M]``: the binary kernel, or the sum over logits of the diagonal blocks ``K[:, a, :, a]``."""
    return ks.main.diagonal(dim1=1, dim2=3).sum(-1)


def svm(train: KernelSet, dev: KernelSet, test: KernelSet, *, metric: str = "acc",
        grid: Sequence[float] = GRIDS["svm"]) -> Solution:
    """``SVC(kernel="precomputed")`` on ``K / sigma_max``; its ``C`` chosen on dev from ``grid``."""
    from sklearn.svm import SVC

    _, c = check_sets(train, dev, test, None)
    all_classes("svm", train.labels, c)
    gram = _svm_gram(train)
    smax = sigma_max(gram)

    def fit(value: float) -> Predictor:
        model = SVC(kernel="precomputed", C=value).fit((gram / smax).numpy(), train.labels.numpy())

        def predict(ks: KernelSet) -> Tensor:
            d = torch.from_numpy(model.decision_function((_svm_gram(ks) / smax).T.numpy())).double()
            return d[:, None] if c == 1 else d

        return predict

    return _select("svm", "C", grid, fit, dev, test, metric)


def asym(train: KernelSet, dev: KernelSet, test: KernelSet, *, metric: str = "acc",
         grid: Sequence[float] = GRIDS["asym"], lam: float = LAM) -> Solution:
    """AsK-LS on an asymmetric-signgd kernel ``[2, N, 1, M, 1]``; ``gamma`` chosen on dev from ``grid``,
    prediction ``lam * f_t + (1 - lam) * f_s``."""
    n, c = check_sets(train, dev, test, None)
    if c != 1 or not all(ks.stacked for ks in (train, dev, test)):
        raise LmftError("asym needs binary asymmetric-signgd kernels [2, N, 1, M, 1] (kernel_formula "
                        f"asymmetric-signgd, binary); got train kernel {tuple(train.kernel.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise LmftError(f"asym: lam weighs the two decision functions and must lie in [0, 1], got {lam}")
    k0 = train.kernel[0, :, 0, :, 0]
    smax = sigma_max(k0)
    y = targets(train.labels, 1)[:, 0]
    h = y[:, None] * (k0 / smax) * y[None, :]
    if any(g <= 0 for g in grid):
        raise LmftError(f"asym: gamma must be > 0, got grid {list(grid)}")
    rhs = torch.cat([torch.zeros(2, dtype=torch.float64), torch.ones(2 * n, dtype=torch.float64)])

    def fit(gamma: float) -> Predictor:
        eye = torch.eye(n, dtype=torch.float64) / gamma
        a = torch.zeros(2 * n + 2, 2 * n + 2, dtype=torch.float64)
        a[0, 2:n + 2], a[1, n + 2:] = y, y
        a[2:n + 2, 0], a[n + 2:, 1] = y, y
        a[2:, 2:] = torch.cat([torch.cat([eye, h], 1), torch.cat([h.T, eye], 1)], 0)
        sol = torch.linalg.lstsq(a, rhs[:, None], driver="gelsd").solution[:, 0]
        b1, b2, alpha, beta = sol[0], sol[1], sol[2:n + 2], sol[n + 2:]

        def predict(ks: KernelSet) -> Tensor:
            f_t = (ks.kernel[0, :, 0, :, 0] / smax).T @ (alpha * y) + b2
            f_s = (ks.kernel[1, :, 0, :, 0] / smax).T @ (beta * y) + b1
            return (lam * f_t + (1 - lam) * f_s)[:, None]

        return predict

    return _select("asym", "gamma", grid, fit, dev, test, metric)


@dataclass(frozen=True)
class Solver:
    """A registered solver: its fit (keyword arguments ``metric``, ``grid`` and, as flagged, ``f0_scaling``
    or ``lam``) and what it reads."""

    fit: Callable[..., Solution]
    uses_f0: bool = False  # takes f0_scaling: regresses y - f0/s and adds f0/s back
    stacked: bool = False  # reads both parts of a stacked kernel (lmft.kernels.formulas), binary only; takes lam


SOLVERS: dict[str, Solver] = {
    "lstsq": Solver(lstsq, uses_f0=True),
    "logistic": Solver(logistic),
    "logistic-dev": Solver(logistic_dev, uses_f0=True),
    "svm": Solver(svm),
    "asym": Solver(asym, stacked=True),
}


def solve(solver: str, train: KernelSet, dev: KernelSet, test: KernelSet, *, metric: str = "acc",
          grid: Sequence[float] | None = None, f0_scaling: float | None = None, lam: float = LAM) -> Solution:
    """Run the solver named ``solver`` (one of :data:`SOLVERS`) with its default grid (:data:`GRIDS`)
    unless ``grid`` is given. ``f0_scaling`` applies to the solvers that use f0, ``lam`` to the
    stacked ones (asym)."""
    if solver not in SOLVERS:
        raise LmftError(f"unknown kernel solver {solver!r}; one of {', '.join(SOLVERS)}")
    entry = SOLVERS[solver]
    if not entry.uses_f0 and f0_scaling is not None:
        raise LmftError(f"the {solver} solver does not use the pre-trained logits f0; unset f0_scaling")
    options = {"f0_scaling": f0_scaling} if entry.uses_f0 else {"lam": lam} if entry.stacked else {}
    return entry.fit(train, dev, test, metric=metric, grid=GRIDS[solver] if grid is None else tuple(grid), **options)


def solution_metrics(sol: Solution, dev_labels: Tensor, test_labels: Tensor, metric: str) -> dict[str, object]:
    """The solver's part of ``metrics.json``: dev/test metric, ECE (10 bins on the softmax of the logits),
    the chosen regularisation and the dev metric of every grid value."""
    return {
        "solver": sol.solver,
        "metric": metric,
        "dev_metric": score(sol.dev_logits.argmax(1), dev_labels, metric),
        "test_metric": score(sol.test_logits.argmax(1), test_labels, metric),
        "dev_ece": metrics.ece(sol.dev_logits.softmax(1), dev_labels, ECE_BINS),
        "test_ece": metrics.ece(sol.test_logits.softmax(1), test_labels, ECE_BINS),
        "reg_name": sol.reg_name,
        "reg": sol.reg,
        "grid": sol.grid,
        "dev_scores": sol.dev_scores,
    }
