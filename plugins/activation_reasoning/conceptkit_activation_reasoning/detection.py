"""Stage 2: which concept propositions are true at which tokens.

Scores ``a [B, T, C]`` from SAE latents ``l [B, T, d_sae]``:

* ``top_k`` dictionary: only each token's ``m`` largest latents are kept (``top_output``; a
  latent tied with the ``m``-th value is kept too, and only positive latents count), then
  ``a(c, t) = sum_{j < k_c} omega_j * l_t[r_{c, j}]`` with log-decay weights ``omega`` of mean 1
  (``omega = 1`` for ``k_c = 1``). So with ``m = 2, k_c = 1`` a concept scores at ``t`` iff its
  first latent is among the 2 largest there, and the score is that latent's value.
* ``tree`` dictionary: ``a(c, t) = P_tree(c | l_t)`` on the ``search_top_k`` largest latents,
  0 on tokens whose latents are all zero.

Propositions (the paper's form): ``c@t`` is true iff ``a(c, t) - tau_c > 0`` (strict, like the
threshold choice). ``threshold_for_rules=False`` gives the reference code's ``a(c, t) > 0``.
With ``allow_multi=False`` only the best concept of a token (largest ``a - tau``; the lowest
concept index on ties) can be true there.
"""

from __future__ import annotations

import math

import torch

from conceptkit_activation_reasoning.dictionary import ConceptDictionary, keep_top, tree_probability
from conceptkit_activation_reasoning.thresholds import balanced_accuracy, best_threshold


def log_decay(k: int) -> torch.Tensor:
    """``omega_j ∝ 1 - ln(j+1)/ln(k+1)``, ``j = 0..k-1``, rescaled to mean 1."""
    if k == 1:
        return torch.ones(1)
    w = torch.tensor([1 - math.log(j + 1) / math.log(k + 1) for j in range(k)])
    return w / w.mean()


def scores(latents: torch.Tensor, d: ConceptDictionary, top_output: int = 2, k_c: int = 1, search_top_k: int | None = 10) -> torch.Tensor:
    """``a [B, T, C]`` (see the module docs)."""
    if d.kind == "tree":
        x = keep_top(latents, search_top_k)
        flat = x.reshape(-1, x.shape[-1])
        p = tree_probability(d.trees, flat)
        p = p * (flat.abs().sum(1, keepdim=True) > 0)
        return p.reshape(*x.shape[:-1], -1)
    kept = keep_top(latents, top_output).clamp_min(0)
    k_c = min(k_c, d.indices.shape[1])
    idx = d.indices[:, :k_c]  # [C, k_c]
    omega = log_decay(k_c)
    vals = kept[..., idx.clamp_min(0)]  # [B, T, C, k_c]
    vals = vals * (idx >= 0)
    return (vals * omega).sum(-1)


def propositions(a: torch.Tensor, thresholds: torch.Tensor, token_mask: torch.Tensor | None = None, *,
                 threshold_for_rules: bool = True, allow_multi: bool = False) -> torch.Tensor:
    """Boolean ``[B, T, C]``: proposition ``c@t`` true (see the module docs)."""
    act = a - thresholds if threshold_for_rules else a
    true = act > 0
    if not allow_multi:
        best = act.argmax(-1, keepdim=True)  # first maximum: the lowest index on ties
        true = true & torch.zeros_like(true).scatter_(-1, best, True)
    if token_mask is not None:
        true = true & token_mask.bool()[..., None]
    return true


def calibrate(d: ConceptDictionary, latents: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *,
              top_output: int = 2, k_c: int = 1, search_top_k: int | None = 10) -> ConceptDictionary:
    """Set ``d.thresholds`` per concept by balanced accuracy of ``a > tau`` against token labels."""
    a = scores(latents, d, top_output, k_c, search_top_k)
    m = torch.ones(a.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    taus, bals = [], []
    for c in range(a.shape[-1]):
        tau, bal = best_threshold(a[..., c][m], labels[..., c].bool()[m])
        taus.append(tau)
        bals.append(bal)
    d.thresholds = torch.tensor(taus, dtype=torch.float32)
    d.balanced_accuracy = bals
    return d


def detection_accuracy(d: ConceptDictionary, latents: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *,
                       level: str = "sequence", **kw: object) -> list[float]:
    """Balanced accuracy per concept of the propositions (``allow_multi=True``) against labels:
    per token, or per sequence (a concept is present iff true at some token)."""
    a = scores(latents, d, **kw)  # type: ignore[arg-type]
    m = torch.ones(a.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    p = propositions(a, d.thresholds, m, allow_multi=True)
    y = labels.bool() & m[..., None]
    if level == "sequence":
        return [balanced_accuracy(p[..., c].any(1), y[..., c].any(1)) for c in range(a.shape[-1])]
    return [balanced_accuracy(p[..., c][m], y[..., c][m]) for c in range(a.shape[-1])]
