"""Spec §6 identities that need no model: pure tensor toys in float64."""

from __future__ import annotations

import math

import pytest
import torch

from conceptkit_obsprop import pullback as pb
from conceptkit_obsprop.features import coupling_matrices, fit_line


def _attn_only_model(seed: int, T: int = 6, d: int = 24, H: int = 3, d_h: int = 8, V: int = 40):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(x=r(T, d), W_Q=r(H, d, d_h), W_K=r(H, d, d_h), W_V=r(H, d, d_h), W_O=r(H, d_h, d) / 3, W_U=r(d, V))


def _forward(m: dict, pattern: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention-only layer, no norms, causal; returns logits [T, V] and the pattern [H, T, T]."""
    x = m["x"]
    T = x.shape[0]
    if pattern is None:
        q = torch.einsum("td,hdk->htk", x, m["W_Q"])
        k = torch.einsum("td,hdk->htk", x, m["W_K"])
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        pattern = scores.softmax(-1)
    v = torch.einsum("td,hdk->htk", x, m["W_V"])
    z = pattern @ v  # [H, T, d_h]
    out = torch.einsum("htk,hkd->td", z, m["W_O"])
    return (x + out) @ m["W_U"], pattern


def test_end_to_end_decomposition_of_one_attention_layer():
    """§6.3: n·logits[dst] = direct path + sum_h sum_s A_h[dst, s] x_s·(W_V^h W_O^h W_U n), to 1e-10."""
    m = _attn_only_model(0)
    logits, A = _forward(m)
    n = torch.zeros(m["W_U"].shape[1], dtype=torch.float64)
    n[3], n[7] = 1.0, -1.0
    y = pb.unembed_pullback(m["W_U"], n)
    dst = 5
    total = m["x"][dst] @ y
    for h in range(A.shape[0]):
        feature = pb.ov_pullback(m["W_V"], m["W_O"], y, h)
        total = total + (A[h, dst] * (m["x"] @ feature)).sum()
    assert torch.allclose(total, logits[dst] @ n, atol=1e-10, rtol=0)


def test_pure_ov_identity_with_frozen_pattern():
    """§6.1: perturbing source s by eps*v moves y·(head output at dst) by eps*A[dst,s]*v·(W_V W_O y), exactly."""
    m = _attn_only_model(1)
    _, A = _forward(m)
    g = torch.Generator().manual_seed(2)
    y_down = torch.randn(m["x"].shape[1], generator=g, dtype=torch.float64)
    v = torch.randn(m["x"].shape[1], generator=g, dtype=torch.float64)
    h, s, dst, eps = 1, 2, 4, 1e-3

    def head_out(x: torch.Tensor) -> torch.Tensor:
        return (A[h] @ (x @ m["W_V"][h])) @ m["W_O"][h]

    x2 = m["x"].clone()
    x2[s] += eps * v
    change = (head_out(x2)[dst] - head_out(m["x"])[dst]) @ y_down
    predicted = eps * A[h, dst, s] * (v @ pb.ov_pullback(m["W_V"], m["W_O"], y_down, h))
    assert torch.allclose(change, predicted, atol=1e-14, rtol=1e-9)


def test_planted_head_is_found_first_with_the_planted_direction():
    """§6.4: a head whose OV maps a planted u onto W_U n gives y ∝ u (cos ~1) and ranks first by feature norm."""
    m = _attn_only_model(3)
    n = torch.zeros(m["W_U"].shape[1], dtype=torch.float64)
    n[1], n[2] = 1.0, -1.0
    target = pb.unembed_pullback(m["W_U"], n)
    u = torch.randn(m["x"].shape[1], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    W_V, W_O = m["W_V"] * 0.05, m["W_O"] * 0.05
    e = torch.zeros(W_V.shape[2], dtype=torch.float64)
    e[0] = 1.0
    W_V[0] = torch.outer(u, e)
    W_O[0] = torch.outer(e, target / target.norm())
    feats = pb.ov_pullback_all(W_V, W_O, target)
    assert pb.cosine(feats[0], u) > 1 - 1e-12
    assert int(feats.norm(dim=-1).argmax()) == 0


def test_grouped_kv_heads_pair_query_head_with_value_head_h_div_group():
    """§6.6 (toy): with H=6 query and 2 value heads, head h uses W_V[h // 3]; the batched form agrees."""
    g = torch.Generator().manual_seed(5)
    W_V = torch.randn(2, 12, 4, generator=g, dtype=torch.float64)
    W_O = torch.randn(6, 4, 12, generator=g, dtype=torch.float64)
    y = torch.randn(12, generator=g, dtype=torch.float64)
    for h in range(6):
        assert torch.allclose(pb.ov_pullback(W_V, W_O, y, h), W_V[h // 3] @ W_O[h] @ y)
    assert torch.allclose(pb.ov_pullback_all(W_V, W_O, y)[4], W_V[1] @ W_O[4] @ y)
    assert torch.allclose(pb.ov_pullback(W_V, W_O, y, -1), sum(W_V[h // 3] @ W_O[h] @ y for h in range(6)))
    assert torch.allclose(pb.ov_pullback(W_V, W_O, y, [0, 5]), W_V[0] @ W_O[0] @ y + W_V[1] @ W_O[5] @ y)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_exact_norm_pullback_is_the_autograd_gradient(kind):
    """§6.2 (norm): the exact pull-back equals torch.autograd of y·Norm(x) (LayerNorm via F.layer_norm)."""
    g = torch.Generator().manual_seed(6)
    d = 32
    x, y, gamma, beta = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(4))
    got = pb.norm_exact_pullback(y, x, gamma, beta if kind == "layernorm" else None, kind, 1e-5)
    xg = x.clone().requires_grad_(True)
    if kind == "layernorm":
        out = torch.nn.functional.layer_norm(xg, (d,), gamma, beta, 1e-5)
    else:
        out = xg * torch.rsqrt(xg.pow(2).mean() + 1e-5) * gamma
    (ref,) = torch.autograd.grad(out @ y, xg)
    assert torch.allclose(got, ref, atol=1e-12)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norm_approximation_tracks_the_exact_gradient_in_high_dimension(kind):
    """§6.2 (norm): the sqrt(d)/|x| gamma⊙y approximation has cosine > 0.99 with the exact gradient (d=2048, random x, y)."""
    g = torch.Generator().manual_seed(7)
    d = 2048
    x, y = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    gamma = 1 + 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
    approx = pb.norm_approx_pullback(y, gamma, kind, x)
    exact = pb.norm_exact_pullback(y, x, gamma, None, kind, 1e-5)
    assert pb.cosine(approx, exact) > 0.99


def test_mlp_tangent_is_the_gradient_at_the_boundary_point():
    """§6.2 (MLP): the tangent pull-back equals autograd of y·mlp(x*) and x* lies on the boundary y·mlp = 0."""
    g = torch.Generator().manual_seed(8)
    d, m = 16, 40
    W_in, W_out = torch.randn(d, m, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64) / 5
    mlp = lambda x: torch.nn.functional.gelu(x @ W_in) @ W_out  # noqa: E731
    y = torch.randn(d, generator=g, dtype=torch.float64)
    x_pos, x_neg = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    assert float(y @ mlp(x_pos)) * float(y @ mlp(x_neg)) < 0  # the toy's segment crosses the boundary
    y_new, x_star, t = pb.mlp_tangent_pullback(mlp, y, x_pos, x_neg)
    assert 0 <= t <= 1 and abs(float(y @ mlp(x_star))) < 1e-6
    xg = x_star.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(y @ mlp(xg), xg)
    assert torch.allclose(y_new, ref, atol=1e-12)


def test_fake_mlp_is_the_identity_nonlinearity():
    """Spec step 4 (fake): W_in W_out y is the gradient of y·(x W_in W_out)."""
    g = torch.Generator().manual_seed(9)
    W_in, W_out, y = torch.randn(8, 20, generator=g), torch.randn(20, 8, generator=g), torch.randn(8, generator=g)
    xg = torch.randn(8, generator=g).requires_grad_(True)
    (ref,) = torch.autograd.grad(y @ (xg @ W_in @ W_out), xg)
    assert torch.allclose(pb.mlp_fake_pullback(W_in, W_out, y), ref, atol=1e-5)


def test_level_set_projection_satisfies_the_kkt_conditions():
    """Spec step 2 (tangent): the projected point is on f = 0 and x* - x0 is parallel to grad f(x*)."""
    g = torch.Generator().manual_seed(10)
    d = 64
    gamma, w = 1 + 0.1 * torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    f = lambda x: w @ pb.norm_forward(x, gamma, None, "layernorm", 1e-5) + 0.3  # noqa: E731
    x0 = torch.randn(d, generator=g, dtype=torch.float64) * 3
    x = pb.project_to_level_set(f, x0)
    grad = pb.grad_of(f, x)
    assert abs(float(f(x))) < 1e-8
    assert abs(pb.cosine(x - x0, grad)) > 1 - 1e-8


def test_coupling_predicts_the_slope_on_the_sphere():
    """§6.5: for x uniform on the sphere (d=256), the best-fit slope of x·y2 on x·y1 is C(y1, y2) (±0.02, 200k samples)."""
    g = torch.Generator().manual_seed(11)
    d = 256
    y1 = torch.randn(d, generator=g, dtype=torch.float64)
    y2 = 0.63 * y1 + 0.8 * torch.randn(d, generator=g, dtype=torch.float64)
    C = pb.coupling(y1, y2)
    x = torch.randn(200_000, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    fit = fit_line(x @ y1, x @ y2)
    assert abs(fit["slope"] - C) < 0.02, (fit, C)
    Cm, cos = coupling_matrices([y1, y2])
    assert math.isclose(float(Cm[0, 1]), C, rel_tol=1e-12) and math.isclose(float(cos[0, 1]), pb.cosine(y1, y2), rel_tol=1e-12)
    assert math.isclose(float(Cm[1, 0]), pb.coupling(y2, y1), rel_tol=1e-12)


def test_boundary_search_without_a_sign_change_returns_the_closest_point():
    """The boundary search falls back to the t minimising |g| when g keeps its sign on [0, 1]."""
    t = pb.boundary_t(lambda t: (t - 0.3) ** 2 + 0.01)
    assert abs(t - 0.3) < 1e-6
    assert abs(pb.boundary_t(lambda t: t - 0.7) - 0.7) < 1e-6
