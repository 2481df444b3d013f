"""The pull-back steps of ObsProp as pure tensor functions (no model, no hooks).

Every function maps a feature ``y`` living at a node's *output* to the feature at its *input*, so
that ``y_in · x`` predicts ``y_out · node(x)`` to first order (exactly for the OV circuit).
Layouts are TransformerLens ``[in, out]``: ``W_U [d, V]``, ``W_V [H_kv, d, d_h]``,
``W_O [H, d_h, d]``, ``W_in/W_gate [d, d_mlp]``, ``W_out [d_mlp, d]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from conceptkit.api import InputError

NormKind = str  # "layernorm" | "rmsnorm"


# -- unembedding ---------------------------------------------------------------------------------
def unembed_pullback(W_U: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``y = W_U n`` (reference ``make_range_normal``: ``lm_head.weight.T @ n``); a sparse ``n``
    (a few tokens) reads only its columns."""
    n = n.to(W_U.dtype)
    nz = n.nonzero().flatten()
    if nz.numel() * 8 < n.numel():
        return W_U[:, nz] @ n[nz]
    return W_U @ n


# -- norms ---------------------------------------------------------------------------------------
def norm_forward(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None, kind: NormKind, eps: float) -> torch.Tensor:
    """LayerNorm (mean removed, biased variance) or RMSNorm, with gain and optional bias."""
    if kind == "layernorm":
        xc = x - x.mean(-1, keepdim=True)
        out = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    elif kind == "rmsnorm":
        out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    else:
        raise InputError(f"unknown norm kind {kind!r}; use layernorm or rmsnorm")
    out = out * gamma
    return out + beta if beta is not None else out


def norm_approx_pullback(y: torch.Tensor, gamma: torch.Tensor, kind: NormKind, x: torch.Tensor | None = None) -> torch.Tensor:
    """``(sqrt(d)/|x̄|) P(gamma ⊙ y)``: the norm as a fixed scaling (spec step 2/5).

    ``x̄`` is the norm's input (mean-removed for LayerNorm) at the chosen token; ``P`` removes the
    mean (LayerNorm only: its gradient has no component along the all-ones vector). Without
    ``x`` the scale is 1 (unit RMS), which changes the norm of ``y`` but not its direction.
    """
    g = gamma * y
    if kind == "layernorm":
        g = g - g.mean(-1, keepdim=True)
    if x is None:
        return g
    d = x.shape[-1]
    xb = x - x.mean(-1, keepdim=True) if kind == "layernorm" else x
    return g * (math.sqrt(d) / xb.norm(dim=-1, keepdim=True))


def norm_exact_pullback(
    y: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None, kind: NormKind, eps: float
) -> torch.Tensor:
    """``grad_x [y · Norm(x)]`` at ``x`` (reference ``use_ln_real=True``)."""
    return grad_of(lambda v: y @ norm_forward(v, gamma, beta, kind, eps), x)


# -- attention -----------------------------------------------------------------------------------
def head_list(head: int | Sequence[int], n_heads: int) -> list[int]:
    """``-1`` means all heads; an int one head; a list those heads (each checked)."""
    heads = list(range(n_heads)) if head == -1 else ([head] if isinstance(head, int) else list(head))
    if not heads:
        raise InputError("an attention node needs at least one head")
    for h in heads:
        if not 0 <= h < n_heads:
            raise InputError(f"head {h} is out of range: the model has {n_heads} heads per layer")
    return heads


def ov_pullback(W_V: torch.Tensor, W_O: torch.Tensor, y: torch.Tensor, head: int | Sequence[int]) -> torch.Tensor:
    """``sum_h W_V[h // group] W_O[h] y`` (grouped KV heads: query head ``h`` reads value ``h // group``)."""
    n_heads, n_kv = W_O.shape[0], W_V.shape[0]
    if n_heads % n_kv:
        raise InputError(f"{n_heads} query heads cannot share {n_kv} value heads evenly")
    group = n_heads // n_kv
    out = torch.zeros(W_V.shape[1], dtype=y.dtype, device=y.device)
    for h in head_list(head, n_heads):
        out = out + W_V[h // group] @ (W_O[h] @ y)
    return out


def ov_pullback_all(W_V: torch.Tensor, W_O: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-head features of one layer at once: ``[H, d]``."""
    n_heads, n_kv = W_O.shape[0], W_V.shape[0]
    z = (W_O @ y).reshape(n_kv, n_heads // n_kv, -1)  # [H_kv, group, d_h]: query heads by their value head
    out = torch.matmul(W_V, z.transpose(1, 2))  # [H_kv, d, group]
    return out.permute(0, 2, 1).reshape(n_heads, -1)


# -- MLPs ----------------------------------------------------------------------------------------
def mlp_fake_pullback(W_in: torch.Tensor, W_out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Identity nonlinearity: ``W_in W_out y`` (non-gated MLPs only; reference ``get_fake_mlp_normal``)."""
    return W_in @ (W_out @ y)


def boundary_t(g: Callable[[float], float], tol: float = 1e-7, max_iter: int = 200) -> float:
    """A ``t in [0, 1]`` with ``g(t) = 0``, or the ``t`` where ``|g|`` is smallest.

    Deterministic replacement for the reference's Adam search (``domain_boundary_intersection``):
    bisection when ``g`` changes sign on ``[0, 1]`` (the same fixed point), else a grid search
    refined by golden sections on ``|g|``.
    """
    a, b = 0.0, 1.0
    ga, gb = g(a), g(b)
    if ga == 0.0:
        return a
    if gb == 0.0:
        return b
    if (ga < 0) != (gb < 0):
        for _ in range(max_iter):
            m = 0.5 * (a + b)
            gm = g(m)
            if abs(gm) < tol or b - a < 1e-12:
                return m
            if (gm < 0) == (ga < 0):
                a, ga = m, gm
            else:
                b = m
        return 0.5 * (a + b)
    grid = [i / 100 for i in range(101)]
    vals = [abs(g(t)) for t in grid]
    i = min(range(101), key=vals.__getitem__)
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, 100)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if abs(g(c)) < abs(g(d)):
            hi = d
        else:
            lo = c
    t = 0.5 * (lo + hi)
    return t if abs(g(t)) <= vals[i] else grid[i]


def mlp_tangent_pullback(
    mlp: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    x_pos: torch.Tensor,
    x_neg: torch.Tensor,
    c: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Tangent of ``y · mlp`` at the boundary point between two inputs (spec step 4).

    Returns ``(grad_x [y · mlp(x)] at x*, x*, t*)`` with ``x* = (1 - t*) x_neg + t* x_pos`` and
    ``y · mlp(x*) = c`` where such a ``t*`` exists in ``[0, 1]``.
    """
    with torch.no_grad():
        def g(t: float) -> float:
            return float(y @ mlp((1 - t) * x_neg + t * x_pos)) - c

        t = boundary_t(g)
    x_star = (1 - t) * x_neg + t * x_pos
    return grad_of(lambda v: y @ mlp(v), x_star), x_star.detach(), t


# -- final norm: exact tangent at the projected boundary point ----------------------------------------
def project_to_level_set(
    f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, target: float = 0.0, tol: float = 1e-10, max_iter: int = 100
) -> torch.Tensor:
    """The point of ``{x : f(x) = target}`` closest to ``x0``.

    Sequential linearised projection ``x <- x0 - ((f(x) - target + ∇f·(x0 - x)) / |∇f|²) ∇f``,
    whose fixed points are the KKT points of ``min |x - x0|²  s.t. f(x) = target``: the problem
    the reference solves with MDMM (``torch_domain_boundary_proj``, lr 0.02), without its
    learning-rate and stopping constants.
    """
    x = x0.detach().clone()
    for _ in range(max_iter):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            val = f(xg)
            (grad,) = torch.autograd.grad(val, xg)
        gg = grad.pow(2).sum()
        if gg == 0:
            raise InputError("the observable's gradient vanishes at the final residual; cannot project onto its level set")
        new = x0 - ((val.detach() - target + grad @ (x0 - x)) / gg) * grad
        moved = (new - x).norm()
        x = new.detach()
        if moved <= tol * (1 + x.norm()) and abs(float(val.detach()) - target) < 1e-5 * (1 + abs(target)):
            break
    return x


# -- helpers ---------------------------------------------------------------------------------------
def grad_of(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``grad_x fn(x)`` of a scalar function, without touching any parameter's ``.grad``."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(fn(xg), xg)
    return g.detach()


def coupling(y1: torch.Tensor, y2: torch.Tensor) -> float:
    """``C(y1, y2) = y1·y2 / |y1|²``: the expected score of ``y2`` per unit score of ``y1``."""
    return float((y1 @ y2) / (y1 @ y1))


def cosine(y1: torch.Tensor, y2: torch.Tensor) -> float:
    return float((y1 @ y2) / (y1.norm() * y2.norm()))
