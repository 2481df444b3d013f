"""Concept representations in an SAE basis (spec section 3, step 4; all design choices).

An SAE here is anything with ``W_dec [d_sae, d]`` and ``encode(x [n, d]) -> [n, d_sae]`` (the
core's ``conceptkit.sae.SAE``). Top-k keeps the entries of largest magnitude: decoder projections
of a direction are signed, and a strongly negative projection is as informative as a positive one.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Option = Literal["none", "a", "b", "c"]


def topk_sparse(z: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the ``k`` entries of largest magnitude (last axis)."""
    if k >= z.shape[-1]:
        return z
    idx = z.abs().topk(k, dim=-1).indices
    out = torch.zeros_like(z)
    return out.scatter(-1, idx, z.gather(-1, idx))


def represent(
    option: Option,
    cav: torch.Tensor,
    sae: Any = None,
    *,
    k: int = 64,
    pos_mean: torch.Tensor | None = None,
    neg_mean: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The representation ``z`` of one concept at one layer under ``option``."""
    if option == "none":
        return cav.double()
    if sae is None:
        raise ValueError(f"sae_option {option!r} needs an SAE at this layer")
    W_dec = sae.W_dec.detach().double()
    if option == "a":
        return topk_sparse(W_dec @ cav.double(), k)
    with torch.no_grad():
        if option == "b":
            if pos_mean is None or neg_mean is None:
                raise ValueError("sae_option 'b' needs the mean positive and negative activations")
            codes = sae.encode(torch.stack([pos_mean, neg_mean]).to(sae.W_dec.dtype)).double()
            return topk_sparse(codes[0] - codes[1], k)
        if option == "c":
            s = float(scale) if scale is not None else 1.0
            code = sae.encode((s * cav).unsqueeze(0).to(sae.W_dec.dtype)).double()[0]
            return topk_sparse(code, k)
    raise ValueError(f"unknown sae_option {option!r}; use none, a, b or c")
