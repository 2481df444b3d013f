"""TCAV arithmetic, free of models: sign scores, magnitudes and significance tests."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RunScores:
    """Scores of one CAV over the target inputs."""

    sign: float  # fraction of targets whose derivative has the counted sign
    magnitude_mean: float  # mean(S): captum >= PR #864
    magnitude_ratio: float  # sum|S·1[S counted]| / sum|S|: captum before PR #864
    magnitude_abs_mean: float  # mean(|S|): TF
    magnitude_std: float  # std(S): TF


def directional_derivatives(gradients: torch.Tensor, cav: torch.Tensor) -> torch.Tensor:
    """``S = G @ v`` for gradients ``[N, d]`` (computed once per site) and a CAV ``[d]``."""
    return gradients.double() @ cav.double()


def run_scores(S: torch.Tensor, count_negative: bool = False) -> RunScores:
    """Sign score and all magnitude definitions; exact zeros never count (as in both libraries)."""
    S = S.double()
    counted = S < 0 if count_negative else S > 0
    total = S.abs().sum()
    return RunScores(
        sign=float(counted.double().mean()),
        magnitude_mean=float(S.mean()),
        magnitude_ratio=float((S.abs() * counted).sum() / total) if total > 0 else 0.0,
        magnitude_abs_mean=float(S.abs().mean()),
        magnitude_std=float(S.std(unbiased=False)),
    )


def p_value(scores: list[float], baseline: list[float] | None, test: str, equal_var: bool = True) -> float:
    """Two-sample t-test against random-random scores, or one-sample against 0.5 (two-sided)."""
    from scipy import stats

    x = np.asarray(scores, dtype=float)
    if test == "one_sample_0.5":
        if np.allclose(x, x[0]):
            return 0.0 if not math.isclose(float(x[0]), 0.5) else 1.0
        return float(stats.ttest_1samp(x, 0.5).pvalue)
    if baseline is None:
        raise ValueError("the two-sample test needs baseline scores")
    y = np.asarray(baseline, dtype=float)
    if np.allclose(np.concatenate([x, y]), x[0]):
        return 1.0
    return float(stats.ttest_ind(y, x, equal_var=equal_var).pvalue)


def anchor_p_value(concept_mean: float, anchor_means: list[float]) -> float:
    """Calibrated test: is the concept's mean score an outlier among random sets' mean scores?

    Each random set, used as a pseudo-concept against the other random sets, gives one mean
    score; under the null the concept is exchangeable with them. The p-value is the two-sided
    Student prediction-interval test ``t = (m_c - mean(b)) / (sd(b) * sqrt(1 + 1/n))``,
    ``n - 1`` degrees of freedom. Unlike the run-level two-sample test, it does not treat runs
    that share the same concept examples as independent.
    """
    from scipy import stats

    b = np.asarray(anchor_means, dtype=float)
    n = len(b)
    if n < 3:
        raise ValueError("the random-anchor test needs at least 3 random sets")
    sd = float(b.std(ddof=1))
    diff = concept_mean - float(b.mean())
    if sd == 0:
        return 1.0 if diff == 0 else 0.0
    t = diff / (sd * math.sqrt(1 + 1 / n))
    return float(2 * stats.t.sf(abs(t), df=n - 1))
