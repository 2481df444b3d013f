"""Behavioural bias measured directly on the model, and its rank correlation with BiasLens.

``behavioural_bias``: for each prompt, ``logsumexp(log p(positive words)) - logsumexp(log p(negative
words))`` at the next token, averaged over the target's prompts (e.g. ``log p(" she") - log p(" he")``
after "The nurse said that"). ``validate``: Spearman's rho over targets with a percentile
bootstrap interval that resamples targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from conceptkit.api import InputError, token_id


def token_ids(model: Any, words: Sequence[str]) -> list[int]:
    """One id per word; a word that is not a single token is an error naming it."""
    return [token_id(model, w) for w in words]


def behavioural_bias(model: Any, prompts: Sequence[str], positive: Sequence[int], negative: Sequence[int], batch_size: int = 16) -> float:
    """Mean over prompts of the log-probability mass of ``positive`` minus ``negative`` tokens."""
    if not prompts:
        raise InputError("behavioural bias needs at least one prompt")
    logits = model.run(list(prompts), reduce="last", batch_size=batch_size).double()
    logp = torch.log_softmax(logits, -1)
    pos = torch.logsumexp(logp[:, list(positive)], -1)
    neg = torch.logsumexp(logp[:, list(negative)], -1)
    return float((pos - neg).mean())


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    x_arr, y_arr = np.asarray(x, float), np.asarray(y, float)
    if len(x_arr) < 3 or np.ptp(x_arr) == 0 or np.ptp(y_arr) == 0:
        return float("nan")
    return float(spearmanr(x_arr, y_arr).statistic)


def validate(conceptual: Sequence[float], behavioural: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Spearman rho between the two bias measures over targets, with a bootstrap interval."""
    x, y = np.asarray(conceptual, float), np.asarray(behavioural, float)
    if len(x) != len(y):
        raise InputError(f"validation needs paired scores, got {len(x)} and {len(y)}")
    rho = spearman(x, y)
    lo = hi = float("nan")
    if n_boot > 0 and len(x) >= 3:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(n_boot):
            idx = rng.integers(0, len(x), len(x))
            r = spearman(x[idx], y[idx])
            if np.isfinite(r):
                draws.append(r)
        if draws:
            lo, hi = (float(v) for v in np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2]))
    return {"spearman": rho, "ci_low": lo, "ci_high": hi, "level": level, "n_targets": int(len(x)), "n_bootstrap": int(n_boot)}
