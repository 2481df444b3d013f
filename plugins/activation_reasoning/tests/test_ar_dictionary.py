"""Stage 1 and 2 on synthetic latents: mean differences by hand, feature ordering, thresholds, detection."""

from __future__ import annotations

import pytest
import torch

from conceptkit_activation_reasoning import detection as det
from conceptkit_activation_reasoning.dictionary import (
    ConceptDictionary, fit_trees, keep_top, mean_difference, select_features, tree_probability, vector_dictionary,
)
from conceptkit_activation_reasoning.thresholds import best_threshold


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lat = torch.rand(6, 5, 20, generator=g) * (torch.rand(6, 5, 20, generator=g) > 0.6)
    lab = torch.rand(6, 5, 3, generator=g) > 0.7
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[0, 4] = mask[3, 3:] = False
    return lat, lab, mask


def test_mean_difference_over_tokens_by_hand() -> None:
    """tokens: Delta_c = mean of latents over labelled tokens minus mean over the other unmasked tokens."""
    lat, lab, mask = _data()
    delta = mean_difference(lat, lab, mask, "tokens")
    for c in range(3):
        pos = [lat[i, t] for i in range(6) for t in range(5) if mask[i, t] and lab[i, t, c]]
        neg = [lat[i, t] for i in range(6) for t in range(5) if mask[i, t] and not lab[i, t, c]]
        torch.testing.assert_close(delta[c], torch.stack(pos).mean(0) - torch.stack(neg).mean(0), atol=1e-6, rtol=0)


def test_mean_difference_over_samples_by_hand() -> None:
    """samples (reference code): mean over samples of per-sample means, a sample without the concept a zero row."""
    lat, lab, mask = _data(1)
    delta = mean_difference(lat, lab, mask, "samples")
    for c in range(3):
        pos, neg = [], []
        for i in range(6):
            p = [lat[i, t] for t in range(5) if mask[i, t] and lab[i, t, c]]
            n = [lat[i, t] for t in range(5) if mask[i, t] and not lab[i, t, c]]
            pos.append(torch.stack(p).mean(0) if p else torch.zeros(20))
            neg.append(torch.stack(n).mean(0) if n else torch.zeros(20))
        torch.testing.assert_close(delta[c], torch.stack(pos).mean(0) - torch.stack(neg).mean(0), atol=1e-6, rtol=0)


def test_top_k_and_orders() -> None:
    """top-k by Delta; unique_first moves shared latents to the back (stably); unique_only drops them (-1)."""
    delta = torch.tensor([[5.0, 4, 3, 0, 0, 0], [0, 9, 0, 8, 1, 0], [0, 0, 7, 0, 6, 5]])
    idx, w = select_features(delta, 3, "original_order")
    assert idx.tolist() == [[0, 1, 2], [1, 3, 4], [2, 4, 5]] and w[1].tolist() == [9, 8, 1]
    idx, w = select_features(delta, 3, "unique_first")
    assert idx.tolist() == [[0, 1, 2], [3, 1, 4], [5, 2, 4]] and w[1].tolist() == [8, 9, 1]
    idx, w = select_features(delta, 3, "unique_only")
    assert idx.tolist() == [[0, -1, -1], [-1, 3, -1], [-1, -1, 5]] and w[0].tolist() == [5, 0, 0]


def test_threshold_equals_brute_force() -> None:
    """The chosen tau maximises (TPR+TNR)/2 of score > tau over {0} ∪ scores, smallest tau on ties (brute force)."""
    g = torch.Generator().manual_seed(3)
    for trial in range(30):
        n = int(torch.randint(5, 40, (1,), generator=g))
        s = torch.round(torch.rand(n, generator=g) * 6) / 2 * (torch.rand(n, generator=g) > 0.3)  # ties and zeros
        y = torch.rand(n, generator=g) > 0.5
        if y.all() or (~y).all():
            continue
        best = (-1.0, None)
        for tau in sorted({0.0, *[float(v) for v in s if v > 0]}):
            p = s > tau
            bal = ((p & y).sum().item() / y.sum().item() + (~p & ~y).sum().item() / (~y).sum().item()) / 2
            if bal > best[0] + 1e-12:
                best = (bal, tau)
        tau, bal = best_threshold(s, y)
        assert tau == best[1] and bal == pytest.approx(best[0], abs=1e-12), trial


def test_threshold_one_class_is_zero() -> None:
    """With a single class the threshold is 0."""
    assert best_threshold(torch.tensor([0.5, 2.0]), torch.tensor([True, True]))[0] == 0.0


def _dict(idx: list[list[int]], taus: list[float] | None = None) -> ConceptDictionary:
    C = len(idx)
    return ConceptDictionary([f"c{i}" for i in range(C)], torch.tensor(idx), torch.ones(C, len(idx[0])),
                             torch.tensor(taus or [0.0] * C))


def test_detection_top2_with_ties() -> None:
    """m=2, k_c=1: a concept scores iff its latent is among the top 2 (ties at the 2nd value kept); score = the latent."""
    d = _dict([[0], [1], [2], [3]])
    lat = torch.tensor([[[3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.0]]])
    a = det.scores(lat, d, top_output=2, k_c=1)
    assert a[0, 0].tolist() == [3, 2, 0, 0]
    assert a[0, 1].tolist() == [0, 2, 2, 0]  # tie at the 2nd value: both kept, the 1.0 drops
    assert a[0, 2].tolist() == [0, 0, 0, 0]


def test_allow_multi_false_keeps_argmax_lowest_on_ties() -> None:
    """allow_multi=False keeps only the largest a - tau per token (the lowest index on ties); thresholds are strict."""
    a = torch.tensor([[[3.0, 2.0, 0.0], [2.0, 2.0, 1.0], [1.0, 0.5, 0.0]]])
    multi = det.propositions(a, torch.tensor([0.0, 0.0, 0.0]), allow_multi=True)
    single = det.propositions(a, torch.tensor([0.0, 0.0, 0.0]), allow_multi=False)
    assert multi[0].int().tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0]]
    assert single[0].int().tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0]]
    strict = det.propositions(a, torch.tensor([1.0, 0.0, 0.0]), allow_multi=True)
    assert strict[0, 2].tolist() == [False, True, False]  # 1.0 - 1.0 = 0 is not > 0
    legacy = det.propositions(a, torch.tensor([1.0, 1.0, 1.0]), threshold_for_rules=False, allow_multi=True)
    assert legacy[0, 2].tolist() == [True, True, False]  # the reference's mask ignores tau


def test_multi_concept_log_decay_weights() -> None:
    """k_c=2: a = omega_0 l[r0] + omega_1 l[r1] with log-decay omega of mean 1 (unit weights at k_c=1)."""
    d = _dict([[0, 1]])
    lat = torch.tensor([[[3.0, 2.0, 0.0]]])
    w = det.log_decay(2)
    assert w.mean().item() == pytest.approx(1.0) and w[0] > w[1]
    assert det.scores(lat, d, top_output=2, k_c=2)[0, 0, 0].item() == pytest.approx(3 * w[0].item() + 2 * w[1].item())


def test_calibrate_sets_strict_thresholds() -> None:
    """calibrate gives each concept the balanced-accuracy threshold of its scores (perfect on separable data)."""
    d = _dict([[0], [1]])
    lat = torch.zeros(4, 3, 4)
    lab = torch.zeros(4, 3, 2, dtype=torch.bool)
    lat[:, 0, 0] = 5.0
    lab[:, 0, 0] = True
    lat[:, 1, 0] = 1.0  # weak, unlabelled
    lat[:, 2, 1] = 2.0
    lab[:, 2, 1] = True
    det.calibrate(d, lat, lab)
    assert d.thresholds.tolist() == [1.0, 0.0] and d.balanced_accuracy == [1.0, 1.0]
    assert det.detection_accuracy(d, lat, lab, level="token") == [1.0, 1.0]


def test_tree_dictionary_is_seeded_and_predicts_like_sklearn() -> None:
    """Trees with the same seed are identical; the tensor walk equals the tree's own probabilities on training rows."""
    lat, lab, mask = _data(4)
    t1 = fit_trees(lat, lab, mask, depth=3, seed=7)
    t2 = fit_trees(lat, lab, mask, depth=3, seed=7)
    assert all(torch.equal(t1[k], t2[k]) for k in t1)
    x = lat.reshape(-1, 20)
    p = tree_probability(t1, x)
    assert p.shape == (30, 3) and ((p >= 0) & (p <= 1)).all()
    from sklearn.tree import DecisionTreeClassifier  # the walk against sklearn on one concept

    X, Y = x[:12].double().numpy(), [1, 0] * 6
    clf = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, Y)
    tr = clf.tree_
    val = torch.as_tensor(tr.value[:, 0, :])
    arrays = {"left": torch.as_tensor(tr.children_left)[None], "right": torch.as_tensor(tr.children_right)[None],
              "feature": torch.as_tensor(tr.feature)[None], "threshold": torch.as_tensor(tr.threshold)[None],
              "prob": (val[:, 1] / val.sum(1))[None]}
    torch.testing.assert_close(tree_probability(arrays, x)[:, 0], torch.as_tensor(clf.predict_proba(x.double().numpy())[:, 1]).float())


def test_vector_dictionary_round_trips_through_the_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A dictionary is a concept_dictionary store record; loading it back gives equal tensors and names."""
    import conceptkit as ck

    store = ck.open_store(tmp_path / "store")
    d = vector_dictionary(["red", "blue"], torch.randn(2, 8, generator=torch.Generator().manual_seed(0)), site="blocks.0.hook_resid_post")
    d.thresholds = torch.tensor([0.5, 1.5])
    rid = store.put(d.to_draft()).id
    back = ConceptDictionary.from_record(store, rid)
    assert back.names == ["red", "blue"] and back.source == "vectors" and back.site == d.site
    assert torch.equal(back.thresholds, d.thresholds) and torch.equal(back.vectors, d.vectors) and torch.equal(back.indices, d.indices)


def test_keep_top_zeroes_the_rest() -> None:
    """keep_top keeps the k largest latents of each token."""
    x = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    assert keep_top(x, 2).tolist() == [[0.0, 5.0, 0.0, 4.0]]
