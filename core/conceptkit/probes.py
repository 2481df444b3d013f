"""Linear probes shared by methods (TCAV, BiasLens, erasure reports).

Three kinds:

* ``logistic``: L2 logistic regression on standardised features (the conceptkit default).
* ``sgd_hinge``: ``SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)``, the default of captum
  and tensorflow/tcav (kept for parity, seeded here). On unscaled LLM activations (norms around
  100) it often lands at chance; see ``standardize``.
* ``mean_diff``: the difference of class means (FastCAV style), thresholded at the midpoint.

Every setting is an argument with a documented default (see :func:`fit_probe`). The direction
is always returned in the *raw* activation space (a standardised probe's weights are divided by
the feature scales), pointing toward the concept (label 1), unit-normalised by default.

:func:`cross_validate` gives stratified k-fold accuracy (plain and balanced) per fold and on
average, for reporting how decodable a concept is with a fixed set of settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from conceptkit.errors import InputError

ProbeKind = Literal["sgd_hinge", "logistic", "mean_diff"]
Balance = Literal["none", "truncate", "subsample", "class_weight"]
ClassWeight = Literal["balanced"] | None

KINDS = ("sgd_hinge", "logistic", "mean_diff")
BALANCES = ("none", "truncate", "subsample", "class_weight")


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
    balanced_accuracy: float = float("nan")  # held-out, mean of the two per-class recalls

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.direction + self.intercept


@dataclass
class CVResult:
    """Stratified k-fold accuracy of one probe recipe (fold order = sklearn's StratifiedKFold)."""

    fold_accuracy: list[float]
    fold_balanced_accuracy: list[float]
    mean_accuracy: float
    mean_balanced_accuracy: float
    k: int
    kind: str


def _balanced(pos: np.ndarray, neg: np.ndarray, balance: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal class sizes: ``truncate`` keeps the first N of each set (the reference libraries'
    habit, so every seed sees the same examples); ``subsample`` draws N at random with ``seed``."""
    n = min(len(pos), len(neg))
    if balance == "truncate":
        return pos[:n], neg[:n]
    if balance == "subsample":
        rng = np.random.default_rng(seed)
        return pos[np.sort(rng.choice(len(pos), n, replace=False))], neg[np.sort(rng.choice(len(neg), n, replace=False))]
    return pos, neg


def _check_settings(kind: str, balance: str, class_weight: object, C: float, max_iter: int) -> None:
    if kind not in KINDS:
        raise InputError(f"unknown probe kind {kind!r}; use one of {', '.join(KINDS)}")
    if balance not in BALANCES:
        raise InputError(f"unknown balance {balance!r}; use one of {', '.join(BALANCES)}")
    if class_weight not in (None, "balanced"):
        raise InputError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    if not C > 0:
        raise InputError(f"C (inverse regularisation strength) must be > 0, got {C}")
    if max_iter < 1:
        raise InputError(f"max_iter must be >= 1, got {max_iter}")


def _as_arrays(positive: torch.Tensor, negative: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    if positive.dim() != 2 or negative.dim() != 2 or positive.shape[1] != negative.shape[1]:
        raise InputError(f"probe inputs must be [n, d] with equal d; got {tuple(positive.shape)} and {tuple(negative.shape)}")
    pos, neg = positive.double().numpy(), negative.double().numpy()
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise InputError("probe inputs contain NaN or Inf")
    return pos, neg


def _fit_linear(
    X: np.ndarray, y: np.ndarray, kind: str, *, standardize: bool, C: float, class_weight: str | None,
    max_iter: int, alpha: float, tol: float | None, seed: int,
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Fit on ``X`` (raw); returns weights ``w`` and intercept ``b`` in the standardised space and
    the standardisation ``(mu, sigma)`` (zeros/ones when off)."""
    mu = X.mean(0) if standardize else np.zeros(X.shape[1])
    sigma = X.std(0) + 1e-8 if standardize else np.ones(X.shape[1])
    Z = (X - mu) / sigma
    if kind == "mean_diff":
        m1, m0 = Z[y == 1].mean(0), Z[y == 0].mean(0)
        w = m1 - m0
        return w, -float(w @ (m1 + m0) / 2), mu, sigma
    if kind == "sgd_hinge":
        from sklearn.linear_model import SGDClassifier

        clf = SGDClassifier(alpha=alpha, max_iter=max_iter, tol=1e-3 if tol is None else tol, random_state=seed, class_weight=class_weight)
    else:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight, tol=1e-4 if tol is None else tol)
    clf.fit(Z, y)
    return clf.coef_[0], float(clf.intercept_[0]), mu, sigma


def _accuracies(Z: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> tuple[float, float]:
    pred = Z @ w + b > 0
    truth = y == 1
    recalls = [float((pred[truth == c] == c).mean()) for c in (True, False) if (truth == c).any()]
    return float((pred == truth).mean()), float(sum(recalls) / len(recalls))


def fit_probe(
    positive: torch.Tensor,
    negative: torch.Tensor,
    kind: ProbeKind = "logistic",
    *,
    C: float = 1.0,
    class_weight: ClassWeight = None,
    max_iter: int | None = None,
    standardize: bool | None = None,
    balance: Balance = "truncate",
    test_size: float = 0.33,
    seed: int = 0,
    normalize: bool = True,
    alpha: float = 0.01,
    tol: float | None = None,
) -> Probe:
    """Fit a probe separating ``positive`` (the concept) from ``negative`` activations ``[n, d]``.

    The split is stratified and seeded; accuracy is measured on the held-out part.

    Args:
        kind: ``logistic`` (default), ``sgd_hinge`` (captum/TF) or ``mean_diff``.
        C: inverse L2 strength of ``logistic`` (default 1.0, sklearn's).
        class_weight: ``None`` (default) or ``"balanced"`` (weights inverse to class frequency).
        max_iter: solver iterations (default 2000 for ``logistic``, 1000 for ``sgd_hinge``).
        standardize: z-score features on the training part before fitting (default: yes for
            ``logistic``, no for the others, which keeps the reference recipes' behaviour).
        balance: ``truncate`` (default: first N of the larger set, as the reference libraries),
            ``subsample`` (N drawn at random with ``seed``), ``class_weight`` (keep all, weight
            classes; same as ``class_weight="balanced"``) or ``none``.
        test_size: held-out fraction (default 0.33).
        seed: split, subsample and SGD seed.
        normalize: unit-normalise the returned direction (default yes).
        alpha: L2 strength of ``sgd_hinge`` (default 0.01, captum/TF).
        tol: solver tolerance (default: sklearn's 1e-4 for logistic, 1e-3 for SGD as captum/TF).
    """
    from sklearn.model_selection import train_test_split

    _check_settings(kind, balance, class_weight, C, max_iter or 1)
    pos, neg = _balanced(*_as_arrays(positive, negative), balance, seed)
    if min(len(pos), len(neg)) < 4:
        raise InputError(
            f"too few examples for a held-out split: {len(pos)} concept and {len(neg)} other examples (need at least 4 each)"
        )
    if not 0 < test_size < 1:
        raise InputError(f"test_size must be in (0, 1), got {test_size}")
    X = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)
    standardize = (kind == "logistic") if standardize is None else standardize
    weights = "balanced" if balance == "class_weight" else class_weight
    iters = max_iter or (1000 if kind == "sgd_hinge" else 2000)
    w, b, mu, sigma = _fit_linear(X_tr, y_tr, kind, standardize=standardize, C=C, class_weight=weights,
                                  max_iter=iters, alpha=alpha, tol=tol, seed=seed)
    train_acc, _ = _accuracies((X_tr - mu) / sigma, y_tr, w, b)
    test_acc, test_bal = _accuracies((X_te - mu) / sigma, y_te, w, b)
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
        balanced_accuracy=test_bal,
    )


def cross_validate(
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    k: int = 5,
    kind: ProbeKind = "logistic",
    seed: int = 0,
    C: float = 1.0,
    class_weight: ClassWeight = None,
    max_iter: int | None = None,
    standardize: bool | None = None,
    balance: Balance = "none",
    alpha: float = 0.01,
    tol: float | None = None,
) -> CVResult:
    """Stratified k-fold accuracy of a probe recipe: per fold and mean, plain and balanced.

    Each fold fits on the other ``k - 1`` folds (standardisation statistics included, so nothing
    of the test fold leaks) and scores the held-out fold. Balanced accuracy (mean per-class
    recall, chance 0.5) is the number to read when the classes differ in size. Settings as in
    :func:`fit_probe`; ``balance`` defaults to ``none`` (all examples kept).

    Example:
        >>> cv = cross_validate(acts_pos, acts_neg, k=5, C=0.1)  # doctest: +SKIP
        >>> cv.mean_balanced_accuracy, cv.fold_balanced_accuracy  # doctest: +SKIP
    """
    from sklearn.model_selection import StratifiedKFold

    _check_settings(kind, balance, class_weight, C, max_iter or 1)
    pos, neg = _balanced(*_as_arrays(positive, negative), balance, seed)
    if k < 2:
        raise InputError(f"cross-validation needs k >= 2 folds, got k={k}")
    if min(len(pos), len(neg)) < k:
        raise InputError(f"too few examples for {k} folds: {len(pos)} concept and {len(neg)} other examples (need at least {k} each)")
    X = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    standardize = (kind == "logistic") if standardize is None else standardize
    weights = "balanced" if balance == "class_weight" else class_weight
    iters = max_iter or (1000 if kind == "sgd_hinge" else 2000)
    accs, bals = [], []
    for train, test in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y):
        w, b, mu, sigma = _fit_linear(X[train], y[train], kind, standardize=standardize, C=C, class_weight=weights,
                                      max_iter=iters, alpha=alpha, tol=tol, seed=seed)
        acc, bal = _accuracies((X[test] - mu) / sigma, y[test], w, b)
        accs.append(acc)
        bals.append(bal)
    return CVResult(accs, bals, float(np.mean(accs)), float(np.mean(bals)), k, kind)


def holdout_accuracy(
    X_train: torch.Tensor,
    y_train: torch.Tensor,
    X_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    C: float = 0.1,
    max_iter: int = 300,
    class_weight: ClassWeight = "balanced",
    tol: float = 1e-3,
) -> float:
    """Balanced held-out accuracy of a standardised logistic probe (chance = 0.5 for 2 classes).

    For measuring whether a concept is linearly decodable from activations on examples the
    probe never saw (e.g. before and after an erasure), with classes of any balance. Defaults
    (C=0.1, 300 iterations, balanced class weights, tol 1e-3) favour a quick, stable read-out.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    _check_settings("logistic", "none", class_weight, C, max_iter)
    if len(set(y_train.tolist())) < 2:
        raise InputError("the probe's training labels hold one class only")
    scaler = StandardScaler().fit(X_train.double().numpy())
    clf = LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight, tol=tol)
    clf.fit(scaler.transform(X_train.double().numpy()), y_train.numpy())
    pred = clf.predict(scaler.transform(X_test.double().numpy()))
    return float(balanced_accuracy_score(y_test.numpy(), pred))


@dataclass
class ProbeBatch:
    """``P`` probes fitted at once (see :func:`fit_probes`); row ``p`` is probe ``p``."""

    directions: torch.Tensor  # [P, d] float64, raw activation space, toward the concept
    intercepts: torch.Tensor  # [P]
    accuracy: torch.Tensor  # [P] held-out
    train_accuracy: torch.Tensor  # [P]
    n_train: int
    n_test: int
    kind: str


def _stratified_split(n_pos: int, n_neg: int, test_size: float, P: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-problem stratified splits with equal sizes across problems: ``(train [P, n_tr], test [P, n_te])``."""
    t_pos = max(1, int(round(test_size * n_pos)))
    t_neg = max(1, int(round(test_size * n_neg)))
    rng = np.random.default_rng(seed)
    pos = rng.random((P, n_pos)).argsort(1)
    neg = n_pos + rng.random((P, n_neg)).argsort(1)
    test = np.sort(np.concatenate([pos[:, :t_pos], neg[:, :t_neg]], 1), 1)
    train = np.sort(np.concatenate([pos[:, t_pos:], neg[:, t_neg:]], 1), 1)
    return train, test


def _newton_logistic(F: torch.Tensor, y: torch.Tensor, c: torch.Tensor, C: float, max_iter: int, tol: float) -> torch.Tensor:
    """Batched L2 logistic regression by damped Newton: ``F [P, n, r]`` features, ``y [P, n]`` in
    {0, 1}, sample weights ``c [P, n]``. Minimises ``C·Σ c_i·logloss_i + ½‖β‖²`` with an
    unpenalised intercept (sklearn's objective); returns ``θ = [β; b]`` as ``[P, r + 1]``."""
    P, n, r = F.shape
    Ft = torch.cat([F, torch.ones(P, n, 1, dtype=F.dtype)], -1)
    reg = torch.ones(r + 1, dtype=F.dtype)
    reg[-1] = 0
    theta = torch.zeros(P, r + 1, dtype=F.dtype)

    def loss(th: torch.Tensor) -> torch.Tensor:
        z = (Ft @ th[..., None])[..., 0]
        return C * (c * (torch.nn.functional.softplus(z) - y * z)).sum(-1) + 0.5 * (reg * th * th).sum(-1)

    current = loss(theta)
    for _ in range(max_iter):
        z = (Ft @ theta[..., None])[..., 0]
        p = torch.sigmoid(z)
        grad = C * (Ft.transpose(1, 2) @ (c * (p - y))[..., None])[..., 0] + reg * theta
        if float(grad.abs().max()) < tol:
            break
        H = C * Ft.transpose(1, 2) @ ((c * p * (1 - p))[..., None] * Ft) + torch.diag_embed(reg + 1e-12)
        step = torch.linalg.solve(H, grad[..., None])[..., 0]
        scale = torch.ones(P, dtype=F.dtype)
        for _ in range(30):  # step halving where the loss would rise
            trial = loss(theta - scale[:, None] * step)
            worse = trial > current + 1e-12 * current.abs()
            if not bool(worse.any()):
                break
            scale = torch.where(worse, scale / 2, scale)
        theta = theta - scale[:, None] * step
        current = loss(theta)
    return theta


def fit_probes(
    positive: torch.Tensor,
    negative: torch.Tensor,
    kind: ProbeKind = "logistic",
    *,
    C: float = 1.0,
    class_weight: ClassWeight = None,
    standardize: bool | None = None,
    test_size: float = 0.33,
    seed: int = 0,
    normalize: bool = True,
    max_iter: int = 100,
    tol: float = 1e-8,
    alpha: float = 0.01,
    chunk: int = 128,
    check_finite: bool = True,
) -> ProbeBatch:
    """Many probes at once: ``positive [P, n1, d]`` against ``negative [P, n0, d]``, one probe per row.

    For experiments that fit hundreds of probes of equal shape (TCAV's random runs and its
    Monte Carlo null). ``logistic`` solves sklearn's objective (L2, strength ``1/C``, unpenalised
    intercept, on features standardised with the training part's mean and std) exactly, by
    batched Newton in the span of the training rows (the optimum lies there: representer
    theorem), so it agrees with :func:`fit_probe`'s ``LogisticRegression`` to the solver's
    tolerance while being ~100x faster for n << d. ``mean_diff`` is closed form; ``sgd_hinge``
    falls back to sklearn one probe at a time. Each problem gets its own seeded stratified split
    (test share ``test_size`` of each class).
    """
    if positive.dim() != 3 or negative.dim() != 3 or positive.shape[0] != negative.shape[0] or positive.shape[2] != negative.shape[2]:
        raise InputError(f"batched probe inputs must be [P, n, d] with equal P and d; got {tuple(positive.shape)} and {tuple(negative.shape)}")
    _check_settings(kind, "none", class_weight, C, max_iter)
    P, n1, d = positive.shape
    n0 = negative.shape[1]
    if min(n1, n0) < 4:
        raise InputError(f"too few examples for a held-out split: {n1} concept and {n0} other examples (need at least 4 each)")
    standardize = (kind == "logistic") if standardize is None else standardize
    train_idx, test_idx = _stratified_split(n1, n0, test_size, P, seed)
    y = torch.cat([torch.ones(n1), torch.zeros(n0)]).double()
    dirs, intercepts, accs, train_accs = [], [], [], []
    for start in range(0, P, chunk):
        X = torch.cat([positive[start : start + chunk], negative[start : start + chunk]], 1).double()
        if check_finite and not bool(torch.isfinite(X).all()):
            raise InputError("probe inputs contain NaN or Inf")
        p = X.shape[0]
        tr = torch.from_numpy(train_idx[start : start + p])
        te = torch.from_numpy(test_idx[start : start + p])
        X_tr = torch.gather(X, 1, tr[..., None].expand(-1, -1, d))
        X_te = torch.gather(X, 1, te[..., None].expand(-1, -1, d))
        y_tr, y_te = y[tr], y[te]
        if standardize:
            mu = X_tr.mean(1, keepdim=True)
            sigma = X_tr.std(1, unbiased=False, keepdim=True) + 1e-8
        else:
            mu, sigma = torch.zeros(p, 1, d, dtype=X.dtype), torch.ones(p, 1, d, dtype=X.dtype)
        Z = (X_tr - mu) / sigma
        if kind == "mean_diff":
            m1 = (Z * y_tr[..., None]).sum(1) / y_tr.sum(1, keepdim=True)
            m0 = (Z * (1 - y_tr)[..., None]).sum(1) / (1 - y_tr).sum(1, keepdim=True)
            w = m1 - m0
            b = -(w * (m1 + m0)).sum(-1) / 2
        elif kind == "logistic":
            K = Z @ Z.transpose(1, 2)
            lam, U = torch.linalg.eigh(K)
            keep = lam > lam[:, -1:].clamp_min(1e-300) * 1e-10
            root = torch.where(keep, lam.clamp_min(0).sqrt(), torch.zeros_like(lam))
            F = U * root[:, None, :]  # Z = U S V^T  ->  Z V = U S
            if class_weight == "balanced":
                n_tr = y_tr.shape[1]
                pos_n = y_tr.sum(1, keepdim=True)
                c = torch.where(y_tr > 0, n_tr / (2 * pos_n), n_tr / (2 * (n_tr - pos_n)))
            else:
                c = torch.ones_like(y_tr)
            theta = _newton_logistic(F, y_tr, c, C, max_iter, tol)
            inv = torch.where(keep, 1 / root.clamp_min(1e-300), torch.zeros_like(root))
            w = (Z.transpose(1, 2) @ (U @ (inv * theta[:, :-1])[..., None]))[..., 0]  # V β = Z^T U S^-1 β
            b = theta[:, -1]
        else:
            from sklearn.linear_model import SGDClassifier

            ws, bs = [], []
            for i in range(p):
                clf = SGDClassifier(alpha=alpha, max_iter=1000, tol=1e-3, random_state=seed + start + i, class_weight=class_weight)
                clf.fit(Z[i].numpy(), y_tr[i].numpy())
                ws.append(torch.from_numpy(clf.coef_[0]))
                bs.append(float(clf.intercept_[0]))
            w, b = torch.stack(ws).double(), torch.tensor(bs, dtype=torch.float64)
        w_raw = w / sigma[:, 0]
        b_raw = b - (w_raw * mu[:, 0]).sum(-1)
        train_accs.append(((((X_tr @ w_raw[..., None])[..., 0] + b_raw[:, None]) > 0).double() == y_tr).double().mean(1))
        accs.append(((((X_te @ w_raw[..., None])[..., 0] + b_raw[:, None]) > 0).double() == y_te).double().mean(1))
        if normalize:
            norm = w_raw.norm(dim=-1).clamp_min(1e-300)
            w_raw, b_raw = w_raw / norm[:, None], b_raw / norm
        dirs.append(w_raw)
        intercepts.append(b_raw)
    return ProbeBatch(
        directions=torch.cat(dirs), intercepts=torch.cat(intercepts), accuracy=torch.cat(accs),
        train_accuracy=torch.cat(train_accs), n_train=int(train_idx.shape[1]), n_test=int(test_idx.shape[1]), kind=kind,
    )
