"""Composing pull-backs: the feature of an observable along a path, and the data-free head ranking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from conceptkit.api import InputError
from conceptkit_obsprop import pullback as pb
from conceptkit_obsprop.circuit import Circuit
from conceptkit_obsprop.config import Node
from conceptkit_obsprop.trace import Trace


@dataclass
class Feature:
    """One feature vector: where it is scored, how it was made, and every intermediate vector."""

    observable: str
    path: list[Node]  # latest first
    y: torch.Tensor  # [d], normalised if requested
    norm: float  # |y| before normalisation
    site: str  # where to score it (the earliest node's input residual)
    token: int  # the earliest node's token (in the linearisation prompts)
    intermediates: list[torch.Tensor] = field(default_factory=list)  # after the final norm, then after each node
    boundary_t: list[float] = field(default_factory=list)  # t* of each MLP tangent

    @property
    def label(self) -> str:
        return " <= ".join(n.label for n in self.path) or "ln_final"


def input_site(node: Node) -> str:
    """Attention features are scored at ``resid_pre`` (the ``ln1`` input), MLP features at ``resid_mid``."""
    return f"blocks.{node.layer}.{'hook_resid_pre' if node.sublayer == 'attn' else 'hook_resid_mid'}"


def final_feature(circuit: Circuit, n: torch.Tensor, ln_mode: str, trace: Trace | None = None, token: int = -1) -> torch.Tensor:
    """``W_U n`` pulled back through the final norm (spec step 1-2)."""
    y = pb.unembed_pullback(circuit.W_U, n.to(circuit.dtype))
    if ln_mode == "none":
        return y
    x = None if trace is None else trace.final_in[trace.position(token)].to(circuit.dtype)
    if ln_mode == "approx":
        return circuit.pull_norm("ln_final", None, y, x, "approx")
    if ln_mode == "tangent":
        if x is None:
            raise InputError("ln_mode='tangent' needs a prompt (its final residual seeds the projection); give a prompt_pair")
        f = lambda v: y @ circuit.norm("ln_final", None, v)  # noqa: E731
        x_star = pb.project_to_level_set(f, x)
        return pb.grad_of(f, x_star)
    raise InputError(f"unknown ln_mode {ln_mode!r}; use approx, tangent or none")


def path_feature(
    circuit: Circuit,
    y_final: torch.Tensor,
    path: list[Node],
    *,
    observable: str = "",
    node_norm: str = "none",
    mlp_mode: str = "tangent",
    normalize: bool = True,
    pos: Trace | None = None,
    neg: Trace | None = None,
) -> Feature:
    """Pull ``y_final`` back along ``path`` (latest node first; spec steps 3-6)."""
    if not path:
        raise InputError("a path needs at least one node")
    y = y_final.to(circuit.dtype)
    inter = [y]
    ts: list[float] = []
    c = 0.0
    previous = 2 * circuit.n_layers  # the final norm comes after every node
    for node in path:
        if node.layer >= circuit.n_layers:
            raise InputError(f"node {node.label}: layer {node.layer} is out of range (the model has {circuit.n_layers} layers)")
        ordinal = 2 * node.layer + (node.sublayer == "mlp")
        if ordinal >= previous:
            raise InputError(f"path nodes go from the latest to the earliest: {node.label} does not come before the node after it")
        previous = ordinal
        x_in = None
        if node.sublayer == "attn":
            y = pb.ov_pullback(circuit.W_V(node.layer), circuit.W_O(node.layer), y, node.head if node.head is not None else -1)
            if pos is not None:
                x_in = pos.resid_pre[node.layer, pos.position(node.token)]
        else:
            if mlp_mode == "fake":
                if circuit.gated:
                    raise InputError(
                        f"mlp_mode='fake' is for non-gated MLPs; {circuit.model.name!r} has gated MLPs (the identity trick "
                        "gives a quadratic map): use mlp_mode='tangent' with a prompt_pair"
                    )
                y = pb.mlp_fake_pullback(circuit.W_in(node.layer), circuit.W_out(node.layer), y)
            else:
                if pos is None or neg is None:
                    raise InputError(f"MLP node {node.label}: mlp_mode='tangent' needs a prompt_pair (the linearisation points)")
                if pos.n_tokens != neg.n_tokens:
                    raise InputError(f"the prompt pair has {pos.n_tokens} and {neg.n_tokens} tokens; MLP linearisation needs equal lengths")
                t_pos, t_neg = pos.position(node.token), neg.position(node.token)
                x_pos = circuit.norm("ln2", node.layer, pos.resid_mid[node.layer, t_pos])
                x_neg = circuit.norm("ln2", node.layer, neg.resid_mid[node.layer, t_neg])
                y, x_star, t = pb.mlp_tangent_pullback(lambda v, l=node.layer: circuit.mlp(l, v), y, x_pos, x_neg, c)
                c = float(y @ x_star)  # the level set y·x = c is the image of the boundary (spec step 4.2)
                ts.append(t)
            if pos is not None:
                x_in = pos.resid_mid[node.layer, pos.position(node.token)]
        y = circuit.pull_norm(circuit.norm_role(node.sublayer), node.layer, y, x_in, node_norm)
        inter.append(y)
    norm = float(y.norm())
    if normalize:
        y = y / y.norm().clamp_min(1e-30)
    earliest = path[-1]
    return Feature(observable=observable, path=list(path), y=y, norm=norm, site=input_site(earliest), token=earliest.token,
                   intermediates=inter, boundary_t=ts)


def head_feature_norms(
    circuit: Circuit,
    n: torch.Tensor,
    *,
    with_norms: bool = False,
    traces: list[Trace] | None = None,
) -> torch.Tensor:
    """``[L, H]`` norms of every head's feature ``|W_V^h W_O^h y|`` (spec step 8, "feature norms").

    ``y = W_U n`` without norm factors. With them, ``y`` is first pulled through the final norm
    and each head's feature through its ``ln1`` (approximation: gains, mean removed for
    LayerNorm); the ``sqrt(d)/|x|`` scales come from ``traces`` when given (mean over prompts of
    the final residual at the last token, and of ``ln1`` inputs over all tokens but the first),
    else are 1.
    """
    y = pb.unembed_pullback(circuit.W_U, n.to(circuit.dtype))
    sqrt_d = circuit.sqrt_d()
    scale_f = 1.0
    if with_norms:
        if traces:
            scale_f = sqrt_d / float(torch.stack([t.final_in[-1].norm() for t in traces]).mean())
        y = circuit.pull_norm("ln_final", None, y, None, "approx") * scale_f
    out = torch.zeros(circuit.n_layers, circuit.n_heads, dtype=circuit.dtype)
    for layer in range(circuit.n_layers):
        F = circuit.head_features(layer, y)
        if with_norms:
            F = circuit.pull_norm("ln1", layer, F, None, "approx")
            if traces:
                norms = torch.cat([t.resid_pre[layer, 1:].norm(dim=-1) for t in traces if t.n_tokens > 1])
                if norms.numel():
                    F = F * (sqrt_d / float(norms.mean()))
        out[layer] = F.norm(dim=-1)
    return out


def rank_heads(norms: torch.Tensor, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` largest entries of an ``[L, H]`` matrix as ``(layer, head, value)``."""
    flat = norms.flatten()
    k = min(k, flat.numel())
    vals, idx = torch.topk(flat, k)
    H = norms.shape[1]
    return [(int(i) // H, int(i) % H, float(v)) for v, i in zip(vals, idx)]


def coupling_matrices(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``C[i, j] = y_i·y_j / |y_i|²`` and the cosine matrix, for features at the same site."""
    Y = torch.stack([f.double() for f in features])
    G = Y @ Y.T
    sq = torch.diagonal(G)
    C = G / sq.unsqueeze(1)
    cos = G / torch.sqrt(sq.unsqueeze(1) * sq.unsqueeze(0))
    return C, cos


def fit_line(x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Least-squares ``y ≈ a + b x``: slope, intercept, r² (as the reference's ``BestFitScores``)."""
    x, y = x.double().flatten(), y.double().flatten()
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    if sxx == 0:
        raise InputError("cannot fit a line: the first feature's scores are constant")
    b = ((x - xm) * (y - ym)).sum() / sxx
    a = ym - b * xm
    resid = y - (a + b * x)
    syy = ((y - ym) ** 2).sum()
    r2 = 1 - (resid**2).sum() / syy if syy > 0 else torch.tensor(float("nan"))
    return {"slope": float(b), "intercept": float(a), "r2": float(r2), "n": int(x.numel())}
