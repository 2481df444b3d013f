"""The spec's identities (methods/rocr.md §7) on synthetic data and tiny models."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit_rocr.edit import apply_factors, compute_edit, key_site
from conceptkit_rocr.solve import nullspace_projector, rocr_key_factor, rocr_key_factor_dense, rocr_update

_MODELS: dict = {}


def tiny(name: str, backend: str = "transformer_lens"):
    if (name, backend) not in _MODELS:
        _MODELS[(name, backend)] = ck.load_model(name, backend=backend)
    return _MODELS[(name, backend)]


def _synthetic(seed: int = 0, d_mlp: int = 48, d: int = 16, n0: int = 20):
    g = torch.Generator().manual_seed(seed)
    K0 = torch.randn(n0, d_mlp, generator=g, dtype=torch.float64)
    k = torch.randn(d_mlp, generator=g, dtype=torch.float64)
    R = torch.randn(d, generator=g, dtype=torch.float64)
    keys_prev = torch.randn(3, d_mlp, generator=g, dtype=torch.float64)
    return K0, k, R, keys_prev.T @ keys_prev


def test_update_is_rank_one():
    """Each layer's update w Rᵀ has rank exactly one, with or without P and C_prev."""
    K0, k, R, C = _synthetic()
    P = nullspace_projector(K0.T @ K0 / len(K0), threshold=1e-9).P
    for proj, c in ((None, None), (P, None), (P, C)):
        w, r = rocr_update(k, R, proj, c, lam=1.0)
        assert torch.linalg.matrix_rank(torch.outer(w, r)) == 1


def test_preserved_keys_unchanged():
    """‖Δ K0‖ / ‖K0‖ < 1e-6 for preserved keys K0 with P k0 = 0 (P built from those keys)."""
    K0, k, R, C = _synthetic()
    proj = nullspace_projector(K0.T @ K0 / len(K0), threshold=1e-9)
    assert proj.null_dim == K0.shape[1] - K0.shape[0] and proj.key_rank == K0.shape[0]
    w, r = rocr_update(k, R, proj.P, C, lam=1.0)
    delta_T = torch.outer(w, r)  # [d_mlp, d]
    assert (K0 @ delta_T).norm() / K0.norm() < 1e-6
    assert (k @ delta_T).norm() > 1e-3 * R.norm()  # the edited key does move


def test_exact_constraint_without_projection():
    """With P = I and λ -> 0 the update maps the key exactly onto the residual: Δk = R."""
    _, k, R, _ = _synthetic()
    for lam in (1e-12, 0.0):
        w, r = rocr_update(k, R, None, None, lam=max(lam, 1e-300))
        assert torch.allclose(k @ torch.outer(w, r), R, rtol=1e-9, atol=1e-9)


def test_matches_alphaedit_formula_written_independently():
    """Δᵀ = P (A P + λI)⁻¹ k Rᵀ (the spec's push-through form) equals the solve we use."""
    K0, k, R, C = _synthetic(seed=3)
    P = nullspace_projector(K0.T @ K0 / len(K0), threshold=1e-9).P
    lam = 0.7
    A = torch.outer(k, k) + C
    expected = P @ torch.linalg.inv(A @ P + lam * torch.eye(len(k), dtype=torch.float64)) @ torch.outer(k, R)
    w, r = rocr_update(k, R, P, C, lam)
    assert torch.allclose(torch.outer(w, r), expected, atol=1e-10)


@pytest.mark.parametrize("lam", [1.0, 0.3, 0.01])
@pytest.mark.parametrize("with_prev", [False, True])
def test_fast_factor_equals_the_dense_solve(lam, with_prev):
    """The Sherman-Morrison factor equals solve(P (k kᵀ + C_prev) + λ I, P k), with and without
    P and earlier edits (λ = 0 makes the dense system singular; that case is tested below)."""
    K0, k, R, C = _synthetic(seed=5)
    P = nullspace_projector(K0.T @ K0 / len(K0), threshold=1e-9).P
    for proj in (None, P):
        c = C if with_prev else None
        fast, dense = rocr_key_factor(k, proj, c, lam), rocr_key_factor_dense(k, proj, c, lam)
        assert torch.allclose(fast, dense, rtol=1e-7, atol=1e-10)


def test_fast_factor_lambda_zero_with_projection_is_exact_on_the_projected_key():
    """λ = 0, no earlier edit: w = P k / kᵀ P k, so wᵀ k = 1 (Δk = R) while P-protected keys stay fixed."""
    K0, k, R, _ = _synthetic(seed=6)
    P = nullspace_projector(K0.T @ K0 / len(K0), threshold=1e-9).P
    w = rocr_key_factor(k, P, None, 0.0)
    assert abs(float(w @ k) - 1) < 1e-12 and (K0 @ w).abs().max() < 1e-10


def test_relative_threshold_is_scale_free():
    """The relative threshold keeps the same null space when the keys are rescaled."""
    K0, *_ = _synthetic()
    M = K0.T @ K0 / len(K0) + 1e-3 * torch.eye(K0.shape[1], dtype=torch.float64)
    a = nullspace_projector(M, threshold=None, relative=1e-2)
    b = nullspace_projector(M * 1e4, threshold=None, relative=1e-2)
    assert a.null_dim == b.null_dim and torch.allclose(a.P, b.P, atol=1e-8)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_removal_restores_bits(backend):
    """Applying a rank-one edit then removing it restores the parameter bit for bit."""
    model = tiny("tiny-llama", backend)
    before = model.weights.W_out(1).detach().clone()
    g = torch.Generator().manual_seed(1)
    handle = apply_factors(model, [(1, torch.randn(128, generator=g), torch.randn(64, generator=g))])
    assert not torch.equal(model.weights.W_out(1), before)
    handle.remove()
    assert torch.equal(model.weights.W_out(1), before)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_same_functional_change_conv1d_and_linear(name):
    """A factor pair (w, R) changes hook_mlp_out by (hook_post · w) R through Conv1D and Linear alike."""
    model = tiny(name)
    layer, texts = 1, ["hello there", "a rank one edit"]
    sites = [key_site(layer), f"blocks.{layer}.hook_mlp_out"]
    before = model.capture(texts, sites, reduce="all")
    d_mlp = before[sites[0]].shape[-1]
    g = torch.Generator().manual_seed(2)
    w, R = torch.randn(d_mlp, generator=g) / d_mlp, torch.randn(model.d_model, generator=g)
    with apply_factors(model, [(layer, w, R)]):
        after = model.capture(texts, sites, reduce="all")
    assert torch.allclose(after[sites[0]], before[sites[0]])  # the key (input) does not change
    expected = torch.outer(before[sites[0]] @ w, R)
    assert torch.allclose(after[sites[1]] - before[sites[1]], expected, atol=1e-5)


def test_edit_on_tiny_model_protects_seen_keys_and_redirects():
    """On tiny-llama the solved edit keeps preserved keys' outputs (P from them) and moves h toward z."""
    from conceptkit_rocr.edit import read_at_subject, resid_site
    from conceptkit_rocr.stats import second_moments

    model = tiny("tiny-llama")
    layers = [0, 1]
    preserved = ["the cat sat on the mat", "numbers 1 2 3", "Paris is in France"]
    moments, n = second_moments(model, preserved, layers)
    projectors = {l: nullspace_projector(moments[l], threshold=1e-8).P for l in layers}
    edit = compute_edit(model, "Rome", "Oslo", layers, projectors, l2=1e-4)
    assert edit.templates_kind == "plain" and len(edit.factors) == 2
    keys = model.capture(preserved, [key_site(l) for l in layers], reduce="all")
    for f in edit.factors:
        K0 = keys[key_site(f.layer)].double()
        assert (K0 @ torch.outer(f.left.double(), f.right.double())).norm() / K0.norm() < 1e-6
    z = read_at_subject(model, edit.info["templates"][:1], "Oslo", resid_site(1))[0]
    h0 = read_at_subject(model, ["{}"], "Rome", resid_site(1))[0]
    with edit.apply(model):
        h1 = read_at_subject(model, ["{}"], "Rome", resid_site(1))[0]
    assert (h1 - z).norm() < 0.5 * (h0 - z).norm()


def test_batched_edit_equals_the_spec_pseudocode():
    """compute_edit (reads batched, one forward per layer, Sherman-Morrison factor) equals the
    spec's pseudo-code run read by read with the dense solve, on tiny-llama with a projector
    (value context bare and templates, with C_prev, z from the first template or all of them)."""
    from conceptkit_rocr.edit import read_at_subject, resid_site
    from conceptkit_rocr.stats import second_moments
    from conceptkit_rocr.templates import context_templates

    model = tiny("tiny-llama")
    layers = [0, 1]
    moments, _ = second_moments(model, ["the cat sat on the mat", "numbers 1 2 3"], layers)
    P = {l: nullspace_projector(moments[l], threshold=1e-8).P for l in layers}
    C_prev = {l: 0.1 * torch.eye(P[l].shape[0], dtype=torch.float64) for l in layers}
    for value_context, prev, z_context in (("bare", None, "first"), ("templates", C_prev, "first"), ("templates", None, "templates")):
        edit = compute_edit(model, "Rome", "Oslo", layers, P, l2=0.5, value_context=value_context, C_prev=prev, z_context=z_context)
        ctx, _ = context_templates(model.tokenizer)
        vt = ["{}"] if value_context == "bare" else ctx
        zt = ctx[:1] if z_context == "first" else ctx
        z = torch.stack([read_at_subject(model, [t], "Oslo", resid_site(1))[0] for t in zt]).mean(0)
        handles = []
        try:
            for i, l in enumerate(layers):
                k = torch.stack([read_at_subject(model, [t], "Rome", key_site(l))[0] for t in ctx]).mean(0)
                h = torch.stack([read_at_subject(model, [t], "Rome", resid_site(1))[0] for t in vt]).mean(0)
                R = (z - h) / (len(layers) - i)
                w = rocr_key_factor_dense(k, P[l], None if prev is None else prev[l], 0.5)
                f = edit.factors[i]
                assert torch.allclose(f.right.double(), R, atol=1e-4, rtol=1e-4)
                assert torch.allclose(f.left.double(), w, atol=1e-6, rtol=1e-4)
                handles.append(apply_factors(model, [(l, w, R)]))
        finally:
            for hd in reversed(handles):
                hd.remove()
