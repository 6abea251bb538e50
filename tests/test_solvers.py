"""lmft.kernels.solvers and lmft.models.metrics: kernel regression, logistic (CV and dev-selected), SVM and AsK-LS solvers;
accuracy, F1, ECE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmft.io import LmftError
from lmft.kernels import solvers
from lmft.kernels.sets import KernelSet, load_kernel_set
from lmft.models import metrics


def blobs(n: int, classes: int, seed: int, dim: int = 6, spread: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian clusters ``[n, dim]`` float64 and their labels (classes in turn)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * spread
    labels = torch.arange(n) % classes
    return centers[labels] + torch.randn(n, dim, generator=g, dtype=torch.float64), labels


def linear_kernel(rows: torch.Tensor, cols: torch.Tensor, c: int) -> torch.Tensor:
    """``[N, C, M, C]``: one feature map per logit, no cross-logit terms (the eNTK of a linear head)."""
    k = torch.zeros(rows.shape[0], c, cols.shape[0], c, dtype=torch.float64)
    for a in range(c):
        k[:, a, :, a] = rows @ cols.T
    return k


def splits(classes: int, c: int, n: int = 12) -> tuple[KernelSet, KernelSet, KernelSet]:
    (xt, yt), (xd, yd), (xe, ye) = blobs(n, classes, 1), blobs(n, classes, 2), blobs(2 * n, classes, 3)
    return (KernelSet(linear_kernel(xt, xt, c), yt), KernelSet(linear_kernel(xt, xd, c), yd),
            KernelSet(linear_kernel(xt, xe, c), ye))


def accuracy_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return metrics.accuracy(logits.argmax(1), labels)


@pytest.mark.parametrize("c", [1, 3])
def test_lstsq_without_ridge_interpolates_the_training_targets(c):
    g = torch.Generator().manual_seed(0)
    n = 5
    feats = torch.randn(n, c, 4 * n * c, generator=g, dtype=torch.float64)  # full-rank flattened kernel
    kernel = torch.einsum("iad,jbd->iajb", feats, feats)
    labels = torch.tensor([0, 1, 1, 0, 1]) if c == 1 else torch.tensor([0, 1, 2, 0, 1])
    f0 = torch.randn(n, c, generator=g, dtype=torch.float64)
    train = KernelSet(kernel, labels, f0)
    sol = solvers.lstsq(train, train, train, grid=(0.0,), f0_scaling=2.0)
    sign = (2.0 * labels - 1).double()[:, None]  # binary targets +-1 become class logits [-y/2, y/2]
    targets = torch.cat([-sign / 2, sign / 2], 1) if c == 1 else torch.nn.functional.one_hot(labels, c).double()
    torch.testing.assert_close(sol.dev_logits, targets, rtol=0, atol=1e-8)
    assert sol.reg == 0.0 and sol.reg_name == "r"


def test_lstsq_picks_the_first_best_ridge_on_dev():
    train, dev, test = splits(3, 3)
    grid = (0.0, 1e-3, 10.0, 1e6)
    sol = solvers.lstsq(train, dev, test, grid=grid)
    assert sol.grid == list(grid) and len(sol.dev_scores) == 4
    assert sol.reg == grid[sol.dev_scores.index(max(sol.dev_scores))]
    assert accuracy_of(sol.test_logits, test.labels) == 1.0


@pytest.mark.parametrize("c", [1, 3])
def test_logistic_dev_separates_a_separable_training_set(c):
    train, dev, test = splits(2 if c == 1 else 3, c)
    f0 = torch.zeros(train.labels.shape[0], c, dtype=torch.float64)
    train = KernelSet(train.kernel, train.labels, f0)
    sol = solvers.solve("logistic-dev", train, train, train, grid=(1e-4,), f0_scaling=1.0)
    assert accuracy_of(sol.dev_logits, train.labels) == 1.0 and (sol.solver, sol.reg_name) == ("logistic-dev", "r")
    sol = solvers.logistic_dev(KernelSet(train.kernel, train.labels), dev, test)
    assert accuracy_of(sol.test_logits, test.labels) == 1.0 and sol.grid == list(solvers.GRIDS["logistic-dev"])
    assert sol.test_logits.shape == (test.labels.shape[0], 2 if c == 1 else 3)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("c", [1, 3])
def test_logistic_cross_validates_on_the_training_kernel(c):
    train, dev, test = splits(2 if c == 1 else 3, c, n=15)
    sol = solvers.solve("logistic", train, dev, test)
    assert (sol.solver, sol.reg_name) == ("logistic", "C") and sol.grid == pytest.approx(np.logspace(-4, 4, 10))
    assert sol.reg in sol.grid and sol.dev_scores == [accuracy_of(sol.dev_logits, dev.labels)]
    assert accuracy_of(sol.test_logits, test.labels) == 1.0
    assert sol.test_logits.shape == (test.labels.shape[0], 2 if c == 1 else 3)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_logistic_is_sklearns_logistic_regression_cv_on_the_kernel_columns():
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    (xt, yt), (xe, ye) = blobs(20, 2, 1), blobs(16, 2, 3)
    train, test = asym_set(xt, xt, yt), asym_set(xt, xe, ye)  # K(x_i, x_j) != K(x_j, x_i): columns, not rows
    grid = (1e-3, 1e-2, 0.1, 1.0)
    sol = solvers.solve("logistic", train, test, test, grid=grid)
    # the paper's call: 5 stratified folds in row order, lbfgs, intercept, max_iter 10000, random_state 0
    direct = LogisticRegressionCV(Cs=list(grid), cv=StratifiedKFold(5), scoring="accuracy", max_iter=10000,
                                  random_state=0).fit(train.kernel[0, :, 0, :, 0].T.numpy(), yt.numpy())
    p = torch.from_numpy(direct.decision_function(test.kernel[0, :, 0, :, 0].T.numpy()))[:, None]
    torch.testing.assert_close(sol.test_logits, torch.cat([-p / 2, p / 2], 1))
    assert sol.reg == float(np.ravel(direct.C_)[0]) and sol.grid == list(grid)
    assert solvers.solve("logistic", train, test, test, grid=grid).test_logits.equal(sol.test_logits)  # deterministic


@pytest.mark.parametrize("c", [1, 3])
def test_svm_on_binary_and_reduced_multiclass_kernels(c):
    train, dev, test = splits(2 if c == 1 else 3, c)
    sol = solvers.solve("svm", train, dev, test)
    assert sol.reg_name == "C" and sol.reg in solvers.GRIDS["svm"]
    assert accuracy_of(sol.test_logits, test.labels) == 1.0


def asym_set(rows: torch.Tensor, cols: torch.Tensor, labels: torch.Tensor) -> KernelSet:
    """An asymmetric-signgd-like kernel: part 0 ``<sign u, v>``, part 1 ``<u, sign v>``, ``[2, N, 1, M, 1]``."""
    k0, k1 = rows.sign() @ cols.T, rows @ cols.sign().T
    return KernelSet(torch.stack([k0, k1])[:, :, None, :, None], labels)


def test_asym_beats_chance_on_a_nonsymmetric_kernel():
    (xt, yt), (xd, yd), (xe, ye) = blobs(12, 2, 1), blobs(12, 2, 2), blobs(40, 2, 3)
    train = asym_set(xt, xt, yt)
    assert not torch.allclose(train.kernel[0], train.kernel[0].transpose(0, 2))
    sol = solvers.solve("asym", train, asym_set(xt, xd, yd), asym_set(xt, xe, ye), lam=0.5)
    assert sol.reg_name == "gamma"
    assert accuracy_of(sol.test_logits, ye) >= 0.9


def test_asym_on_a_symmetric_kernel_is_the_ls_svm_whatever_lam():
    (xt, yt), (xe, ye) = blobs(10, 2, 1), blobs(10, 2, 3)
    sym = lambda r, c, y: KernelSet(torch.stack([r @ c.T, (c @ r.T).T])[:, :, None, :, None], y)  # noqa: E731
    train, test = sym(xt, xt, yt), sym(xt, xe, ye)
    source = solvers.asym(train, test, test, grid=(10.0,), lam=0.0)
    target = solvers.asym(train, test, test, grid=(10.0,), lam=1.0)
    torch.testing.assert_close(source.test_logits, target.test_logits)


def test_solvers_reject_bad_inputs():
    train, dev, test = splits(3, 3)
    with pytest.raises(LmftError, match="unknown kernel solver 'ridge'"):
        solvers.solve("ridge", train, dev, test)
    with pytest.raises(LmftError, match="asym needs binary asymmetric-signgd kernels"):
        solvers.solve("asym", train, dev, test)
    for name in ("svm", "logistic"):
        with pytest.raises(LmftError, match=f"the {name} solver does not use the pre-trained logits"):
            solvers.solve(name, train, dev, test, f0_scaling=1.0)
    with pytest.raises(LmftError, match=r"logistic: the training labels cover \[0, 1\], not all 3 classes"):
        solvers.solve("logistic", KernelSet(train.kernel, train.labels % 2), dev, test)
    with pytest.raises(LmftError, match="needs two training examples of every class"):
        solvers.solve("logistic", KernelSet(train.kernel, torch.tensor([2] + [0, 1] * 5 + [1])), dev, test)
    with pytest.raises(LmftError, match="the dev split has no pre-trained logits"):
        solvers.solve("lstsq", KernelSet(train.kernel, train.labels, torch.zeros(12, 3)), dev, test, f0_scaling=1.0)
    other = KernelSet(dev.kernel[:5], dev.labels)
    with pytest.raises(LmftError, match="dev kernel rows .* differ from the train kernel's"):
        solvers.solve("lstsq", train, other, test)
    with pytest.raises(LmftError, match="has 12 columns but 3 labels"):
        solvers.solve("lstsq", train, KernelSet(dev.kernel, dev.labels[:3]), test)
    with pytest.raises(LmftError, match="labels must be class indices 0..2"):
        solvers.solve("logistic", train, KernelSet(dev.kernel, dev.labels + 3), test)


def test_solution_metrics_report_metric_ece_and_the_grid():
    train, dev, test = splits(2, 1)
    sol = solvers.solve("lstsq", train, dev, test)
    out = solvers.solution_metrics(sol, dev.labels, test.labels, "f1")
    assert out["test_metric"] == metrics.f1(sol.test_logits.argmax(1), test.labels)
    assert out["test_ece"] == metrics.ece(sol.test_logits.softmax(1), test.labels, 10)
    assert out["reg"] == sol.reg and out["grid"] == list(solvers.GRIDS["lstsq"])
    assert {"solver", "metric", "dev_metric", "dev_ece", "reg_name", "dev_scores"} <= set(out)


def test_ece_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.65, 0.35]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 0])
    # bins (0.8, 0.9]: {0.9 right}; (0.5, 0.6]: {0.6 wrong}; (0.6, 0.7]: {0.7 right, 0.65 right}; (0.7, 0.8]: {0.8 wrong}
    expected = (abs(1 - 0.9) + abs(0 - 0.6) + 2 * abs(1 - 0.675) + abs(0 - 0.8)) / 5
    assert metrics.ece(probs, labels, bins=10) == pytest.approx(expected)
    # a confidence on a bin edge (0.3) belongs to the bin it closes, (0.2, 0.3], with the 0.25 one
    edge = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    assert metrics.ece(edge, torch.tensor([0, 1]), bins=10) == pytest.approx(abs(0.5 - 0.275))
    with pytest.raises(LmftError, match="must be \\[N, C\\] and \\[N\\]"):
        metrics.ece(probs[0], labels)


def test_accuracy_and_f1():
    preds, labels = torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 1, 1])
    assert metrics.accuracy(preds, labels) == pytest.approx(0.6)
    assert metrics.f1(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # TP 2, FP 1, FN 1
    assert metrics.f1(preds, labels, positive=0) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert metrics.f1(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)) == 0.0
    with pytest.raises(LmftError, match="predictions \\(5,\\) and labels \\(4,\\)"):
        metrics.accuracy(preds, labels[:4])


def test_majority_share():
    assert metrics.majority_share(torch.tensor([0, 1, 1, 2])) == 0.5
    with pytest.raises(LmftError, match="non-empty"):
        metrics.majority_share(torch.tensor([], dtype=torch.long))


def test_load_kernel_set_pairs_a_kernel_file_with_its_f0_file(tmp_path):
    from lmft.kernels.files import save_kernel, save_logits

    train, _, _ = splits(3, 3)
    save_kernel(tmp_path / "train.pt", train.kernel, train.labels)
    save_logits(tmp_path / "f0.pt", torch.ones(12, 3), train.labels)
    ks = load_kernel_set(tmp_path / "train.pt", tmp_path / "f0.pt")
    assert torch.equal(ks.kernel, train.kernel) and torch.equal(ks.labels, train.labels) and ks.f0.shape == (12, 3)
    save_logits(tmp_path / "other.pt", torch.ones(12, 3), train.labels.flip(0))
    with pytest.raises(LmftError, match="other.pt: logits .* of other examples"):
        load_kernel_set(tmp_path / "train.pt", tmp_path / "other.pt")


def test_load_kernel_set_reads_the_papers_binary_labels(tmp_path):
    train, _, _ = splits(2, 1)
    torch.save((train.kernel, 2.0 * train.labels - 1), tmp_path / "paper.pt")  # released files: labels +-1
    assert torch.equal(load_kernel_set(tmp_path / "paper.pt").labels, train.labels)
    torch.save((train.kernel, train.labels + 0.5), tmp_path / "bad.pt")
    with pytest.raises(LmftError, match="float labels other than"):
        load_kernel_set(tmp_path / "bad.pt")


def test_load_kernel_set_checks_the_shape_of_the_named_formula(tmp_path):
    """The formula registry says which kernels are stacked: a file of another shape stops the solve."""
    from lmft.io import ArtifactError
    from lmft.kernels.files import save_kernel

    train, _, _ = splits(2, 1)
    save_kernel(tmp_path / "sgd.pt", train.kernel, train.labels)
    assert not load_kernel_set(tmp_path / "sgd.pt", formula="sgd").stacked
    with pytest.raises(ArtifactError, match=r"sgd.pt: kernel .*, but asymmetric-signgd kernels are \[P, N, C, M, C\]"):
        load_kernel_set(tmp_path / "sgd.pt", formula="asymmetric-signgd")
    save_kernel(tmp_path / "asym.pt", torch.stack([train.kernel, train.kernel]), train.labels)
    assert load_kernel_set(tmp_path / "asym.pt", formula="asymmetric-signgd").stacked
    with pytest.raises(ArtifactError, match=r"but signgd kernels are \[N, C, M, C\]"):
        load_kernel_set(tmp_path / "asym.pt", formula="signgd")


def test_the_solver_registry_says_what_each_solver_reads():
    assert {name for name, s in solvers.SOLVERS.items() if s.uses_f0} == {"lstsq", "logistic-dev"}
    assert [name for name, s in solvers.SOLVERS.items() if s.stacked] == ["asym"]
    assert set(solvers.GRIDS) == set(solvers.SOLVERS)  # every solver has a default grid
