"""Detection thresholds chosen by balanced accuracy, with one comparison convention.

A score ``s`` counts as positive iff ``s > tau`` (strict), both when choosing ``tau`` and when
detecting (the reference chooses with ``roc_curve``'s ``>=`` and predicts with ``>``; we don't).
``tau`` ranges over ``{0} ∪ {observed scores > 0}``: between two observed values the predictions
do not change, so these candidates reach every achievable balanced accuracy over ``tau >= 0``.
Ties in balanced accuracy go to the smallest ``tau``. One class only gives ``tau = 0``.
"""

from __future__ import annotations

import torch


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """``(TPR + TNR) / 2`` of boolean predictions (a missing class counts as accuracy 1 for it)."""
    pred, labels = pred.bool().reshape(-1), labels.bool().reshape(-1)
    pos, neg = labels.sum().item(), (~labels).sum().item()
    tpr = (pred & labels).sum().item() / pos if pos else 1.0
    tnr = (~pred & ~labels).sum().item() / neg if neg else 1.0
    return (tpr + tnr) / 2


def best_threshold(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """``(tau, balanced accuracy)`` maximising ``(TPR + TNR) / 2`` with ``pred = scores > tau``."""
    s = scores.detach().double().reshape(-1)
    y = labels.bool().reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.numel()}) and labels ({y.numel()}) differ in size")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.0, balanced_accuracy(s > 0, y)
    cand = torch.unique(torch.cat([s.new_zeros(1), s[s > 0]]))  # sorted ascending
    pos_sorted, _ = torch.sort(s[y])
    neg_sorted, _ = torch.sort(s[~y])
    tp = n_pos - torch.searchsorted(pos_sorted, cand, right=True)  # positives with s > tau
    tn = torch.searchsorted(neg_sorted, cand, right=True)  # negatives with s <= tau
    bal = (tp.double() / n_pos + tn.double() / n_neg) / 2
    best = int(torch.argmax(bal))  # first maximum: the smallest tau
    return float(cand[best]), float(bal[best])
