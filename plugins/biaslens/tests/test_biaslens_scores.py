"""BiasLens identities and planted tests without a model (spec section 5, items 1, 2, 4, 5)."""

from __future__ import annotations

import math

import pytest
import torch

from conceptkit_biaslens import behaviour, scores
from conceptkit_biaslens.sae_options import represent, topk_sparse


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_diff_is_antisymmetric_in_the_references() -> None:
    """Bias(t; r1, r2) == -Bias(t; r2, r1) for the diff score."""
    t, r1, r2 = _rand(3, 32).unbind(0)
    a = scores.bias_from_alignment(scores.alignment(t, [r1, r2]))
    b = scores.bias_from_alignment(scores.alignment(t, [r2, r1]))
    assert float(a) == pytest.approx(-float(b), abs=1e-15)


def test_identical_references_give_zero() -> None:
    """Bias(t; r, r) == 0 for both score forms."""
    t, r = _rand(2, 32, seed=1).unbind(0)
    align = scores.alignment(t, [r, r])
    assert float(scores.bias_from_alignment(align, "diff")) == 0.0
    assert float(scores.bias_from_alignment(align, "std")) == 0.0


def test_orthogonal_or_equally_aligned_target_gives_zero() -> None:
    """A target orthogonal to both references, or equally aligned with them, has zero bias."""
    e = torch.eye(8, dtype=torch.float64)
    assert float(scores.bias_from_alignment(scores.alignment(e[0], [e[1], e[2]]))) == 0.0
    t = e[1] + e[2]
    assert float(scores.bias_from_alignment(scores.alignment(t, [e[1], e[2]]))) == pytest.approx(0.0, abs=1e-15)


def test_std_is_order_invariant_and_half_the_absolute_diff() -> None:
    """std is invariant to reference order; for two references std == |diff| / 2."""
    t, r1, r2, r3 = _rand(4, 16, seed=2).unbind(0)
    s1 = scores.bias_from_alignment(scores.alignment(t, [r1, r2, r3]), "std")
    s2 = scores.bias_from_alignment(scores.alignment(t, [r3, r1, r2]), "std")
    assert float(s1) == pytest.approx(float(s2), abs=1e-15)
    align = scores.alignment(t, [r1, r2])
    assert float(scores.bias_from_alignment(align, "std")) == pytest.approx(abs(float(scores.bias_from_alignment(align, "diff"))) / 2, abs=1e-15)


def test_diff_refuses_more_than_two_references() -> None:
    """diff with three references is an error that says to use std."""
    with pytest.raises(ValueError, match="std"):
        scores.bias_from_alignment(torch.zeros(3), "diff")


def test_planted_geometric_bias_is_recovered() -> None:
    """z_t = a u1 + b u2 + noise: sign(bias) == sign(a - b) and Spearman(bias, a - b) > 0.95 over 50 draws."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 2, generator=g, dtype=torch.float64))
    u1, u2 = q[:, 0], q[:, 1]
    biases, planted = [], []
    for _ in range(50):
        a, b = (float(v) for v in torch.rand(2, generator=g, dtype=torch.float64) * 2)
        z = a * u1 + b * u2 + 0.05 * torch.randn(64, generator=g, dtype=torch.float64)
        bias = float(scores.bias_from_alignment(scores.alignment(z, [u1, u2])))
        if abs(a - b) > 0.1:
            assert math.copysign(1, bias) == math.copysign(1, a - b)
        biases.append(bias)
        planted.append(a - b)
    assert behaviour.spearman(biases, planted) > 0.95


def test_layers_below_the_accuracy_threshold_are_never_averaged() -> None:
    """aggregate averages kept layers only and returns None when none is kept."""
    per_layer = torch.tensor([1.0, 100.0, 3.0])
    assert scores.aggregate(per_layer, torch.tensor([True, False, True])) == pytest.approx(2.0)
    assert scores.aggregate(per_layer, torch.tensor([False, False, False])) is None


def test_mean_removal_makes_the_concepts_sum_to_zero_direction() -> None:
    """remove_mean subtracts the shared component: a common offset no longer inflates cosines."""
    g = torch.Generator().manual_seed(3)
    common = torch.randn(32, generator=g, dtype=torch.float64) * 5
    v = torch.randn(4, 32, generator=g, dtype=torch.float64) + common
    before = scores.cosine(v[0], v[1])
    after = scores.remove_mean(v)
    assert float(before) > 0.8
    assert float(scores.cosine(after[0], after[1])).__abs__() < float(before)
    assert torch.allclose(after.norm(dim=-1), torch.ones(4, dtype=torch.float64))


class _SyntheticSAE:
    """An SAE-like object whose decoder rows include the planted directions."""

    def __init__(self, W_dec: torch.Tensor) -> None:
        self.W_dec = W_dec
        self.W_enc = W_dec.T.clone()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc)


def test_sae_option_a_peaks_at_the_planted_atoms() -> None:
    """With decoder rows u1, u2 among random atoms, option a puts the largest entries at u1 and u2."""
    g = torch.Generator().manual_seed(4)
    d, n = 32, 256
    W_dec = torch.randn(n, d, generator=g, dtype=torch.float64)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * 0.3
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))
    W_dec[7], W_dec[42] = q[:, 0], q[:, 1]
    sae = _SyntheticSAE(W_dec)
    z1 = represent("a", q[:, 0], sae, k=8)
    z2 = represent("a", q[:, 1], sae, k=8)
    assert int(z1.abs().argmax()) == 7 and int(z2.abs().argmax()) == 42
    assert int((z1 != 0).sum()) == 8
    assert float(scores.cosine(z1, z2)) < float(scores.cosine(q[:, 0], q[:, 0]))


def test_topk_keeps_the_largest_magnitudes_signed() -> None:
    """topk_sparse keeps the k entries of largest magnitude with their signs."""
    z = torch.tensor([0.1, -3.0, 2.0, 0.5])
    assert topk_sparse(z, 2).tolist() == [0.0, -3.0, 2.0, 0.0]


def test_probe_recovers_a_separable_direction() -> None:
    """On linearly separable activations the probe has accuracy 1.0 and cos(v, true) > 0.95."""
    from conceptkit.api import fit_probe

    g = torch.Generator().manual_seed(5)
    true = torch.randn(48, generator=g)
    true = true / true.norm()
    pos = torch.randn(120, 48, generator=g) * 0.3 + 3 * true
    neg = torch.randn(120, 48, generator=g) * 0.3 - 3 * true
    probe = fit_probe(pos, neg, "logistic", C=1.0, test_size=0.2, balance="class_weight", seed=0, standardize=False)
    assert probe.accuracy == 1.0
    assert float(scores.cosine(probe.direction, true)) > 0.95


def test_validation_bootstrap_interval_contains_rho() -> None:
    """validate returns Spearman rho with a seeded bootstrap interval around it."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(20, generator=g)
    y = x + 0.3 * torch.randn(20, generator=g)
    v = behaviour.validate(x.tolist(), y.tolist(), n_boot=500, seed=0)
    assert v["ci_low"] <= v["spearman"] <= v["ci_high"]
    assert v == behaviour.validate(x.tolist(), y.tolist(), n_boot=500, seed=0)
