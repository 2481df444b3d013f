"""LEACE: guardedness identities, parity with EleutherAI's concept-erasure, streaming, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from conceptkit.errors import InputError
from conceptkit_erasure.leace import LeaceFitter, OracleFitter, one_hot_labels

OPTIONS = [
    dict(method="leace", affine=True, shrinkage=False),
    dict(method="leace", affine=True, shrinkage=True),
    dict(method="leace", affine=False, shrinkage=False),
    dict(method="orth", affine=True, shrinkage=False),
]


def data(n_classes: int, n: int = 2048, d: int = 128):
    X, y = make_classification(n_samples=n, n_features=d, n_informative=max(2, n_classes), n_classes=n_classes,
                               n_clusters_per_class=1, random_state=42)
    return torch.from_numpy(X), torch.from_numpy(y)


@pytest.mark.parametrize("n_classes", [2, 3, 5, 10])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_guardedness_identities(n_classes, options):
    """After erasure: linear classifiers have ~0 coefficients, class means are equal, the eraser
    is idempotent, the change has rank <= k, and the mean is preserved when affine."""
    X, y = data(n_classes)
    eraser = LeaceFitter.fit(X, y, **options).eraser
    Xe = eraser(X)
    centred = Xe - Xe.mean(0)
    lr = LogisticRegression(C=np.inf, max_iter=1000, tol=1e-8).fit(centred.numpy(), y.numpy())
    assert np.abs(lr.coef_).max() < 1e-6
    if n_classes == 2:
        svm = LinearSVC(dual=False, intercept_scaling=1e6, tol=1e-8, max_iter=10000).fit(centred.numpy(), y.numpy())
        assert np.abs(svm.coef_).max() < 1e-6
        before = LogisticRegression(C=np.inf, max_iter=1000).fit((X - X.mean(0)).numpy(), y.numpy())
        assert np.abs(before.coef_).max() > 0.05
    means = torch.stack([Xe[y == c].mean(0) for c in range(n_classes)])
    assert torch.allclose(means, means[0].expand_as(means), atol=1e-8)
    assert torch.allclose(eraser(Xe), Xe, atol=1e-10)
    assert torch.linalg.matrix_rank(X - Xe, atol=1e-8) <= n_classes
    if options["affine"]:
        assert torch.allclose(Xe.mean(0), X.mean(0), atol=1e-10)


@pytest.mark.parametrize("n_classes", [2, 5])
def test_oracle_moves_less_than_leace(n_classes):
    """The oracle (knows z at apply time) is a lower bound on LEACE's squared error."""
    X, y = data(n_classes)
    leace = LeaceFitter.fit(X, y, shrinkage=False).eraser
    oracle = OracleFitter(X.shape[1], n_classes).update(X, y).oracle
    loss = (leace(X) - X).pow(2).sum(-1).mean()
    oracle_loss = (oracle(X, y) - X).pow(2).sum(-1).mean()
    assert oracle_loss <= loss


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_streaming_equals_batch(options):
    """Five batches of updates give the same eraser as one fit of all the data."""
    X, y = data(3, n=500)
    streamed = LeaceFitter(X.shape[1], 3, **options)
    for part in range(5):
        streamed.update(X[part * 100 : (part + 1) * 100], y[part * 100 : (part + 1) * 100])
    assert torch.allclose(streamed.eraser(X), LeaceFitter.fit(X, y, **options).eraser(X), atol=1e-10)


@pytest.mark.parametrize("n_classes", [2, 3, 10])
@pytest.mark.parametrize(
    "options",
    OPTIONS + [dict(method="leace", constrain_cov_trace=False), dict(method="leace", svd_tol=0.1)],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_parity_with_concept_erasure(n_classes, options):
    """Same data and options -> the same erased outputs as EleutherAI's library (1e-6, float64)."""
    reference = pytest.importorskip("concept_erasure")
    X, y = data(n_classes)
    Z = one_hot_labels(y).double()
    ours = LeaceFitter.fit(X, y, **options).eraser(X)
    theirs = reference.LeaceFitter.fit(X, Z, **options).eraser(X)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_oracle_parity_with_concept_erasure():
    """The oracle eraser matches the library's OracleFitter."""
    reference = pytest.importorskip("concept_erasure")
    X, y = data(4)
    Z = one_hot_labels(y).double()
    ours = OracleFitter(X.shape[1], 4).update(X, y).oracle(X, y)
    theirs = reference.OracleFitter.fit(X, Z).eraser(X, Z)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_trace_constraint_keeps_variance_from_growing():
    """When the oblique projection would increase tr(Σ), the constrained eraser does not."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(16, 16, generator=g, dtype=torch.float64)
    X = torch.randn(3000, 16, generator=g, dtype=torch.float64) @ (A * torch.logspace(-2, 1, 16, dtype=torch.float64))
    y = (X[:, 0] + 0.5 * torch.randn(3000, generator=g, dtype=torch.float64) > 0).long()
    free = LeaceFitter.fit(X, y, constrain_cov_trace=False, shrinkage=False).eraser
    constrained = LeaceFitter.fit(X, y, constrain_cov_trace=True, shrinkage=False).eraser
    trace = lambda Z: torch.trace(torch.cov(Z.T))  # noqa: E731
    if trace(free(X)) > trace(X):
        assert trace(constrained(X)) <= trace(X) * (1 + 1e-6)
    assert trace(constrained(X)) <= max(trace(X), trace(free(X))) * (1 + 1e-6)


def test_integer_labels_are_one_hot_encoded():
    """[n] integer labels mean classes (one-hot), not one numeric feature as in the reference."""
    X, y = data(3)
    assert LeaceFitter.fit(X, y).z_dim == 3
    assert torch.allclose(LeaceFitter.fit(X, y).eraser(X), LeaceFitter.fit(X, one_hot_labels(y).double()).eraser(X))


def test_bad_input_is_refused():
    """Label length mismatch, one class only, NaNs, a width mismatch at apply time: clear errors."""
    X, y = data(2, n=200)
    with pytest.raises(InputError, match="199 labels for 200 activations"):
        LeaceFitter(128, 2).update(X, y[:199])
    with pytest.raises(InputError, match="one class only"):
        LeaceFitter(128, 2).update(X, torch.zeros(200, dtype=torch.long)).eraser
    bad = X.clone()
    bad[3, 4] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        LeaceFitter(128, 2).update(bad, y)
    eraser = LeaceFitter.fit(X, y).eraser
    with pytest.raises(InputError, match="fitted for width 128, got activations of width 64"):
        eraser(torch.zeros(3, 64, dtype=torch.float64))


def test_eraser_is_frozen_against_later_updates():
    """An eraser read from the fitter keeps its values when the fitter is updated again (the library's shares the running mean)."""
    X, y = data(2, n=400)
    fitter = LeaceFitter(X.shape[1], 2).update(X[:200], y[:200])
    eraser = fitter.eraser
    before = eraser(X[:5]).clone()
    fitter.update(X[200:] + 3.0, y[200:])
    assert torch.equal(eraser(X[:5]), before) and not torch.equal(fitter.eraser.bias, eraser.bias)
