"""The BiasLens score on concept representations: alignment, per-layer bias, aggregation.

Pure functions on tensors (no model), so the spec's identities are tested exactly:
``diff`` is antisymmetric in the references and zero for identical ones, ``std`` is invariant
to their order, and for two references ``std == |diff| / 2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Score = Literal["diff", "std"]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last axis in float64; 0 where either vector is zero (no direction)."""
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    dot = (a * b).sum(-1)
    out = dot / (na * nb).clamp_min(1e-300)
    return torch.where((na == 0) | (nb == 0), torch.zeros_like(out), out)


def alignment(target: torch.Tensor, references: Sequence[torch.Tensor]) -> torch.Tensor:
    """``align[..., j] = cos(target, reference_j)`` for representations ``[..., d]``."""
    return torch.stack([cosine(target, r) for r in references], dim=-1)


def bias_from_alignment(align: torch.Tensor, score: Score = "diff") -> torch.Tensor:
    """Per-layer bias from ``align [..., R]``: ``diff`` = align_1 - align_2 (two references;
    the sign says which is favoured), ``std`` = population std over the references."""
    if score == "diff":
        if align.shape[-1] != 2:
            raise ValueError(f"score 'diff' needs exactly two references, got {align.shape[-1]}; use score='std'")
        return align[..., 0] - align[..., 1]
    if score == "std":
        return align.std(dim=-1, unbiased=False)
    raise ValueError(f"unknown score {score!r}; use 'diff' or 'std'")


def remove_mean(vectors: torch.Tensor) -> torch.Tensor:
    """Remove the mean unit vector across concepts (axis 0) and renormalise (spec pitfall 3:
    CAVs fitted against one shared negative pool share a "not generic text" component)."""
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    centred = unit - unit.mean(0, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def aggregate(per_layer: torch.Tensor, keep: torch.Tensor) -> float | None:
    """Mean of the per-layer values over kept layers; ``None`` when no layer is kept
    (a near-chance probe makes a layer's score meaningless: never averaged in)."""
    if not bool(keep.any()):
        return None
    return float(per_layer[keep].double().mean())
