"""Linear probes shared by methods (TCAV, BiasLens, erasure reports).

Three kinds:

* ``sgd_hinge``: ``SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)``, the default of captum
  and tensorflow/tcav (kept for parity, seeded here). On unscaled LLM activations (norms around
  100) it often lands at chance; see ``standardize``.
* ``logistic``: L2 logistic regression on standardised features (the conceptkit default).
* ``mean_diff``: the difference of class means (FastCAV style), thresholded at the midpoint.

The direction is always returned in the *raw* activation space (a standardised probe's weights
are divided by the feature scales), pointing toward the concept (label 1), unit-normalised by
default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from conceptkit.errors import InputError

ProbeKind = Literal["sgd_hinge", "logistic", "mean_diff"]
Balance = Literal["none", "truncate", "class_weight"]


@dataclass
class Probe:
    """A fitted linear probe: ``direction · x + intercept > 0`` means "concept"."""

    direction: torch.Tensor  # [d], float32, raw activation space
    intercept: float
    accuracy: float  # held-out
    train_accuracy: float
    n_train: int
    n_test: int
    kind: str
    standardized: bool
    normalized: bool

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.direction + self.intercept


def _balanced(pos: np.ndarray, neg: np.ndarray, balance: Balance) -> tuple[np.ndarray, np.ndarray]:
    if balance == "truncate":
        n = min(len(pos), len(neg))
        return pos[:n], neg[:n]
    return pos, neg


def fit_probe(
    positive: torch.Tensor,
    negative: torch.Tensor,
    kind: ProbeKind = "logistic",
    *,
    balance: Balance = "truncate",
    test_size: float = 0.33,
    seed: int = 0,
    normalize: bool = True,
    standardize: bool | None = None,
    alpha: float = 0.01,
    C: float = 1.0,
) -> Probe:
    """Fit a probe separating ``positive`` (the concept) from ``negative`` activations ``[n, d]``.

    The split is stratified and seeded; accuracy is measured on the held-out part.
    """
    from sklearn.model_selection import train_test_split

    if positive.dim() != 2 or negative.dim() != 2 or positive.shape[1] != negative.shape[1]:
        raise InputError(f"probe inputs must be [n, d] with equal d; got {tuple(positive.shape)} and {tuple(negative.shape)}")
    pos, neg = _balanced(positive.double().numpy(), negative.double().numpy(), balance)
    if min(len(pos), len(neg)) < 4:
        raise InputError(
            f"too few examples for a held-out split: {len(pos)} concept and {len(neg)} other examples (need at least 4 each)"
        )
    X = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    if not np.isfinite(X).all():
        raise InputError("probe inputs contain NaN or Inf")
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)
    standardize = (kind == "logistic") if standardize is None else standardize
    mu = X_tr.mean(0) if standardize else np.zeros(X.shape[1])
    sigma = X_tr.std(0) + 1e-8 if standardize else np.ones(X.shape[1])
    Z_tr, Z_te = (X_tr - mu) / sigma, (X_te - mu) / sigma
    weights = "balanced" if balance == "class_weight" else None

    if kind == "mean_diff":
        w = Z_tr[y_tr == 1].mean(0) - Z_tr[y_tr == 0].mean(0)
        b = -float(w @ (Z_tr[y_tr == 1].mean(0) + Z_tr[y_tr == 0].mean(0)) / 2)
    elif kind == "sgd_hinge":
        from sklearn.linear_model import SGDClassifier

        clf = SGDClassifier(alpha=alpha, max_iter=1000, tol=1e-3, random_state=seed, class_weight=weights)
        clf.fit(Z_tr, y_tr)
        w, b = clf.coef_[0], float(clf.intercept_[0])
    elif kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, max_iter=2000, class_weight=weights)
        clf.fit(Z_tr, y_tr)
        w, b = clf.coef_[0], float(clf.intercept_[0])
    else:
        raise InputError(f"unknown probe kind {kind!r}; use sgd_hinge, logistic or mean_diff")

    def acc(Z: np.ndarray, labels: np.ndarray) -> float:
        return float(((Z @ w + b > 0) == (labels == 1)).mean())

    train_acc, test_acc = acc(Z_tr, y_tr), acc(Z_te, y_te)
    # Back to raw space: w·(x - mu)/sigma + b = (w/sigma)·x + (b - (w/sigma)·mu)
    w_raw = w / sigma
    b_raw = b - float(w_raw @ mu)
    norm = float(np.linalg.norm(w_raw))
    if not norm > 0:
        raise InputError("the probe found no direction (all weights are zero): are the two sets identical?")
    if normalize:
        w_raw, b_raw = w_raw / norm, b_raw / norm
    return Probe(
        direction=torch.from_numpy(w_raw).float(),
        intercept=b_raw,
        accuracy=test_acc,
        train_accuracy=train_acc,
        n_train=len(y_tr),
        n_test=len(y_te),
        kind=kind,
        standardized=bool(standardize),
        normalized=normalize,
    )


def holdout_accuracy(
    X_train: torch.Tensor, y_train: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor, *, C: float = 0.1, max_iter: int = 300
) -> float:
    """Balanced held-out accuracy of a standardised logistic probe (chance = 0.5 for 2 classes).

    For measuring whether a concept is linearly decodable from activations on examples the
    probe never saw (e.g. before and after an erasure), with classes of any balance.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    if len(set(y_train.tolist())) < 2:
        raise InputError("the probe's training labels hold one class only")
    scaler = StandardScaler().fit(X_train.double().numpy())
    clf = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced", tol=1e-3)
    clf.fit(scaler.transform(X_train.double().numpy()), y_train.numpy())
    pred = clf.predict(scaler.transform(X_test.double().numpy()))
    return float(balanced_accuracy_score(y_test.numpy(), pred))
