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


@dataclass
class TestOutcome:
    """A test's answer, or the reason no test was possible (then ``p_value`` is NaN)."""

    p_value: float
    direction: str  # "above" | "below" | "" (no test)
    note: str = ""
    p_greater: float = float("nan")
    p_less: float = float("nan")


def batch_scores(G: torch.Tensor, directions: torch.Tensor, count_negative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign scores and ``mean(S)`` magnitudes of many CAVs at once: ``G [N, d]``, ``directions [P, d]``."""
    S = G.double() @ directions.double().T  # [N, P]
    counted = S < 0 if count_negative else S > 0
    return counted.double().mean(0), S.mean(0)


def batch_cosines(G: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Mean over targets of ``cos(g_k, v)`` for many CAVs: the directional derivative normalised by
    both lengths, ``G [N, d]``, ``directions [P, d]`` -> ``[P]``. The sign score is the fraction of
    these cosines above 0; unlike it, their mean does not saturate when all gradients point alike."""
    G = G.double()
    V = directions.double()
    cos = (G @ V.T) / (G.norm(dim=1, keepdim=True).clamp_min(1e-300) * V.norm(dim=1).clamp_min(1e-300))
    return cos.mean(0)


#: the Monte Carlo test's statistic of one experiment, by name (see :func:`experiment_statistic`)
STATISTICS = ("cosine", "score")


def experiment_statistic(kind: str, signs: torch.Tensor, magnitudes: torch.Tensor, cosines: torch.Tensor) -> tuple[float, ...]:
    """The test statistic of one experiment over **all** its CAVs (the quality filter decides
    whether a concept is tested, never which of its CAVs count, so the concept and every replay
    are summarised by the same function).

    ``cosine``: the mean over runs and targets of ``cos(gradient, CAV)``, continuous and scale-free.
    ``score``: the mean TCAV sign score, ties broken by the mean directional derivative
    (lexicographic); it saturates when the targets' gradients point alike (a mean score of 1.0
    is then reached by a fair share of random directions)."""
    if kind == "cosine":
        return (float(cosines.mean()),)
    if kind == "score":
        return round(float(signs.mean()), 12), float(magnitudes.mean())
    raise ValueError(f"unknown statistic {kind!r}: use one of {STATISTICS}")


def monte_carlo_p(observed: tuple[float, float], null: list[tuple[float, float]], alternative: str = "auto") -> TestOutcome:
    """Monte Carlo p-value of ``observed`` among ``null`` replays of the whole experiment.

    Statistics are tuples compared lexicographically (see :func:`experiment_statistic`). With ``B``
    replays, ``p = (1 + #{replays at least as extreme}) / (B + 1)`` (never 0; exact for
    exchangeable replays). ``alternative``: ``greater`` / ``less`` test one side;
    ``auto`` reports the side the data fall on and doubles the smaller one-sided p (two one-sided
    tests at alpha/2: the direction is read from the data, so it must be paid for).
    """
    B = len(null)
    if B < 1:
        return TestOutcome(float("nan"), "", "no replays: no Monte Carlo test")
    ge = sum(1 for t in null if t >= observed)  # tuple order = lexicographic
    le = sum(1 for t in null if t <= observed)
    p_greater, p_less = (1 + ge) / (B + 1), (1 + le) / (B + 1)
    if alternative == "greater":
        return TestOutcome(p_greater, "above", p_greater=p_greater, p_less=p_less)
    if alternative == "less":
        return TestOutcome(p_less, "below", p_greater=p_greater, p_less=p_less)
    direction = "above" if p_greater <= p_less else "below"
    return TestOutcome(min(1.0, 2 * min(p_greater, p_less)), direction, p_greater=p_greater, p_less=p_less)


def t_test(scores: list[float], baseline: list[float] | None, test: str, equal_var: bool = True) -> TestOutcome:
    """TF's two-sample t-test against random-random scores, or the paper's one-sample test vs 0.5
    (both two-sided; the direction is the side of the mean). Both treat runs that share the
    concept's examples as independent, which makes them anticonservative; kept for parity.
    Returns no p-value (with the reason) when a t statistic does not exist."""
    x = np.asarray(scores, dtype=float)
    if len(x) < 2:
        return TestOutcome(float("nan"), "", f"{len(x)} run(s) kept: a t-test needs at least 2")
    if test == "one_sample_0.5":
        centre = 0.5
        if np.ptp(x) < 1e-12:
            return TestOutcome(float("nan"), "", f"all {len(x)} runs scored {x[0]:.3f}: no variance, no t-test possible")
        t, df = (x.mean() - 0.5) / (x.std(ddof=1) / math.sqrt(len(x))), len(x) - 1
    else:
        if baseline is None or len(baseline) < 2:
            return TestOutcome(float("nan"), "", "fewer than 2 random-random runs kept: no two-sample test possible")
        y = np.asarray(baseline, dtype=float)
        centre = float(y.mean())
        if np.ptp(x) < 1e-12 and np.ptp(y) < 1e-12:
            return TestOutcome(float("nan"), "", f"all runs scored {x[0]:.3f} and all random runs {y[0]:.3f}: no variance, no t-test possible")
        t, df = _two_sample_t(y, x, equal_var)
    p = _two_sided_t_p(t, df)
    if not math.isfinite(p):
        return TestOutcome(float("nan"), "", "the t statistic is undefined for these scores")
    return TestOutcome(max(p, np.finfo(float).tiny), "above" if x.mean() >= centre else "below")


def _two_sample_t(a: np.ndarray, b: np.ndarray, equal_var: bool) -> tuple[float, float]:
    """scipy.stats.ttest_ind's statistic and degrees of freedom (Student or Welch)."""
    na, nb = len(a), len(b)
    va, vb = a.var(ddof=1), b.var(ddof=1)
    if equal_var:
        df = na + nb - 2
        pooled = ((na - 1) * va + (nb - 1) * vb) / df
        return (a.mean() - b.mean()) / math.sqrt(pooled * (1 / na + 1 / nb)), df
    sa, sb = va / na, vb / nb
    return (a.mean() - b.mean()) / math.sqrt(sa + sb), (sa + sb) ** 2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))


def _two_sided_t_p(t: float, df: float) -> float:
    """Two-sided p of Student's t (scipy.special.stdtr: no scipy.stats import, no warnings)."""
    from scipy.special import stdtr

    if not math.isfinite(t):
        return float("nan")
    return float(2 * stdtr(df, -abs(t)))


def compute_statistics(scores: list[float]) -> dict[str, float]:
    """Stability of per-layer scores across layers (GCAV's ``compute_statistics``): mean,
    population Std, CV = Std / mean, RR = (max - min) / mean."""
    s = np.asarray(scores, dtype=float)
    mean = float(s.mean())
    std = float(s.std())
    return {"mean": mean, "std": std, "cv": std / mean if mean else float("nan"), "rr": float(np.ptp(s)) / mean if mean else float("nan")}
