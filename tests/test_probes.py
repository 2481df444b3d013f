"""Linear probes: settings as arguments, held-out and cross-validated accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptkit.errors import InputError
from conceptkit.probes import cross_validate, fit_probe, holdout_accuracy


def _blobs(n_pos: int, n_neg: int, d: int = 8, shift: float = 2.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(d)
    u[0] = shift
    return torch.randn(n_pos, d, generator=g) + u, torch.randn(n_neg, d, generator=g) - u


def test_direction_points_to_the_concept_in_raw_space():
    """The returned direction is unit-norm, raw-space, and scores the concept above the rest."""
    pos, neg = _blobs(40, 40)
    pos, neg = pos * 50 + 7, neg * 50 + 7  # far from unit scale: standardisation must be undone
    for kind in ("logistic", "sgd_hinge", "mean_diff"):
        probe = fit_probe(pos, neg, kind, standardize=True)
        assert abs(float(probe.direction.norm()) - 1) < 1e-5
        assert int(probe.direction.abs().argmax()) == 0 and probe.direction[0] > 0.5 and probe.accuracy > 0.9
        assert (probe.decision(pos) > 0).float().mean() > 0.9 and (probe.decision(neg) < 0).float().mean() > 0.9


def test_settings_reach_the_solver():
    """C changes the logistic solution; max_iter, class_weight and tol are accepted and used."""
    pos, neg = _blobs(30, 30, shift=0.5)
    strong, weak = fit_probe(pos, neg, C=1e-4), fit_probe(pos, neg, C=10.0)
    assert not torch.allclose(strong.direction, weak.direction, atol=1e-3)
    with pytest.warns(Warning):  # one iteration cannot converge: the setting reached sklearn
        fit_probe(pos, neg, max_iter=1)
    a = fit_probe(pos[:30], neg[:10], balance="none", class_weight=None)
    b = fit_probe(pos[:30], neg[:10], balance="none", class_weight="balanced")
    assert a.n_train + a.n_test == 40 and b.n_train + b.n_test == 40
    assert not torch.allclose(a.direction, b.direction)


def test_subsample_balance_draws_different_examples_per_seed():
    """balance='subsample' keeps N random examples of the larger set (seeded); 'truncate' the first N."""
    pos, neg = _blobs(60, 20, seed=1)
    t0, t1 = fit_probe(pos, neg, balance="truncate", seed=0), fit_probe(pos, neg, balance="truncate", seed=1)
    s0, s1 = fit_probe(pos, neg, balance="subsample", seed=0), fit_probe(pos, neg, balance="subsample", seed=1)
    assert t0.n_train + t0.n_test == 40 == s0.n_train + s0.n_test
    assert torch.equal(s0.direction, fit_probe(pos, neg, balance="subsample", seed=0).direction)
    assert not torch.allclose(s0.direction, s1.direction) and not torch.allclose(t0.direction, t1.direction)


def test_bad_settings_are_named():
    """Unknown kinds/balances, C <= 0, a bad class_weight and too few examples raise InputError."""
    pos, neg = _blobs(10, 10)
    for kwargs, match in [({"kind": "svm"}, "unknown probe kind 'svm'"), ({"balance": "x"}, "unknown balance 'x'"),
                          ({"C": 0.0}, "C .* must be > 0, got 0.0"), ({"class_weight": "auto"}, "class_weight .* got 'auto'")]:
        with pytest.raises(InputError, match=match):
            fit_probe(pos, neg, **kwargs)
    with pytest.raises(InputError, match="too few examples"):
        fit_probe(pos[:3], neg)
    with pytest.raises(InputError, match="too few examples for 5 folds: 3 concept"):
        cross_validate(pos[:3], neg, k=5)


def test_cross_validate_matches_a_hand_written_stratified_k_fold():
    """Per-fold accuracy equals sklearn's StratifiedKFold + StandardScaler + LogisticRegression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    pos, neg = _blobs(35, 20, shift=0.6, seed=2)
    cv = cross_validate(pos, neg, k=5, seed=3, C=0.5)
    X = np.concatenate([pos.double().numpy(), neg.double().numpy()])
    y = np.r_[np.ones(35), np.zeros(20)]
    accs, bals = [], []
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=3).split(X, y):
        scaler = StandardScaler().fit(X[tr])
        clf = LogisticRegression(C=0.5, max_iter=2000).fit(scaler.transform(X[tr]), y[tr])
        pred = clf.predict(scaler.transform(X[te]))
        accs.append(float((pred == y[te]).mean()))
        bals.append(float(balanced_accuracy_score(y[te], pred)))
    assert cv.k == 5 and len(cv.fold_accuracy) == 5
    assert cv.fold_accuracy == pytest.approx(accs, abs=1e-9) and cv.fold_balanced_accuracy == pytest.approx(bals, abs=1e-9)
    assert cv.mean_accuracy == pytest.approx(np.mean(accs)) and cv.mean_balanced_accuracy == pytest.approx(np.mean(bals))


def test_cross_validate_is_at_chance_on_noise_and_high_on_signal():
    """Balanced accuracy ~0.5 when both classes are the same distribution, ~1 when separated."""
    noise = cross_validate(*_blobs(50, 50, shift=0.0, seed=4), k=5)
    signal = cross_validate(*_blobs(50, 50, shift=2.0, seed=4), k=5, kind="mean_diff")
    assert abs(noise.mean_balanced_accuracy - 0.5) < 0.15 and signal.mean_balanced_accuracy > 0.95


def test_holdout_accuracy_is_balanced():
    """On labels unrelated to the features with 10% positives, balanced accuracy is ~0.5, not ~0.9."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(400, 4, generator=g)
    y = (torch.rand(400, generator=g) < 0.1).long()
    acc = holdout_accuracy(X[:200], y[:200], X[200:], y[200:], class_weight=None)
    assert acc == pytest.approx(0.5, abs=0.1)


def test_batched_logistic_solves_sklearns_objective():
    """fit_probes' Newton solver gives sklearn LogisticRegression's optimum on the same split (cos > 1 - 1e-9)."""
    from sklearn.linear_model import LogisticRegression

    from conceptkit.probes import _stratified_split, fit_probes

    g = torch.Generator().manual_seed(6)
    pos = torch.randn(6, 20, 50, generator=g, dtype=torch.float64) * 10 + 1
    neg = torch.randn(6, 24, 50, generator=g, dtype=torch.float64) * 10
    for C, weight in [(1.0, None), (0.05, "balanced")]:
        batch = fit_probes(pos, neg, C=C, class_weight=weight, seed=2)
        train, test = _stratified_split(20, 24, 0.33, 6, 2)
        for i in range(6):
            X = torch.cat([pos[i], neg[i]]).numpy()
            y = np.r_[np.ones(20), np.zeros(24)]
            mu, sd = X[train[i]].mean(0), X[train[i]].std(0) + 1e-8
            clf = LogisticRegression(C=C, class_weight=weight, tol=1e-10, max_iter=10000).fit((X[train[i]] - mu) / sd, y[train[i]])
            w = clf.coef_[0] / sd
            b = clf.intercept_[0] - w @ mu
            assert float(w @ batch.directions[i].numpy()) / np.linalg.norm(w) > 1 - 1e-9
            assert float(batch.accuracy[i]) == pytest.approx(float(((X[test[i]] @ w + b > 0) == y[test[i]]).mean()))


def test_batched_mean_diff_equals_the_single_probe():
    """fit_probes(kind='mean_diff') gives the class-mean difference of each training part."""
    from conceptkit.probes import _stratified_split, fit_probes

    g = torch.Generator().manual_seed(7)
    pos, neg = torch.randn(3, 12, 5, generator=g, dtype=torch.float64) + 1, torch.randn(3, 12, 5, generator=g, dtype=torch.float64)
    batch = fit_probes(pos, neg, "mean_diff", seed=4)
    train, _ = _stratified_split(12, 12, 0.33, 3, 4)
    for i in range(3):
        X = torch.cat([pos[i], neg[i]])[train[i]]
        y = torch.from_numpy(train[i] < 12)
        w = X[y].mean(0) - X[~y].mean(0)
        assert torch.allclose(batch.directions[i], w / w.norm(), atol=1e-12)
