"""The TCAV experiment on tensors (no model): random-set draws, batched CAV runs, Monte Carlo replays.

The calibrated test replays the *whole* experiment — drawing the sets, fitting the CAVs,
scoring (over all CAVs; the quality gate only decides whether the concept is tested) — with a pseudo-concept in place of the concept, ``n_null`` times.
Whatever makes runs dependent (they share the concept's examples; random sets may share pool
examples when drawn with replacement; each probe's split) is reproduced in every replay, so the
replays are exchangeable with the real experiment under the null hypothesis ("the concept's
examples behave like a draw from the pool" for plain TCAV, "the concept labels are
exchangeable" for relative TCAV) and ``p = (1 + #replays as extreme) / (n_null + 1)`` is valid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from conceptkit_tcav.scores import batch_cosines, batch_scores, experiment_statistic

#: replays fitted in one batch are capped at about this many float64 numbers
_CHUNK_NUMBERS = 12_000_000


@dataclass
class Recipe:
    """How every CAV of one experiment is fitted and judged (identical for concept and random sides)."""

    kind: str
    C: float
    standardize: bool | None
    test_size: float
    normalize: bool
    class_weight: str | None
    min_accuracy: float
    count_negative: bool


@dataclass
class Runs:
    """The CAV runs of one experiment."""

    directions: torch.Tensor  # [m, d]
    accuracy: torch.Tensor  # [m]
    signs: torch.Tensor  # [m]
    magnitudes: torch.Tensor  # [m]
    keep: torch.Tensor  # [m] bool: accuracy >= min_accuracy
    cosines: torch.Tensor  # [m] mean over targets of cos(gradient, CAV)

    def statistic(self, kind: str) -> tuple[float, ...]:
        """The Monte Carlo statistic over all runs (the quality filter gates, it does not select)."""
        return experiment_statistic(kind, self.signs, self.magnitudes, self.cosines)

    def gated(self, max_below: float) -> bool:
        """True when more than ``max_below`` (a fraction) of the CAVs are below the accuracy
        threshold: the experiment is then not tested (the same rule for the concept and replays)."""
        return self.n_dropped > max_below * len(self.keep)

    @property
    def n_dropped(self) -> int:
        return int((~self.keep).sum())


def fit_runs(pos: torch.Tensor, neg: torch.Tensor, G: torch.Tensor, recipe: Recipe, seed: int, negate: bool = False,
             check_finite: bool = True) -> Runs:
    """CAVs for ``pos [P, n1, d]`` vs ``neg [P, n0, d]`` and their scores on gradients ``G [N, d]``."""
    from conceptkit.api import fit_probes

    batch = fit_probes(
        pos, neg, recipe.kind, C=recipe.C, class_weight=recipe.class_weight, standardize=recipe.standardize,  # type: ignore[arg-type]
        test_size=recipe.test_size, seed=seed, normalize=recipe.normalize, check_finite=check_finite,
    )
    directions = -batch.directions if negate else batch.directions
    signs, mags = batch_scores(G, directions, recipe.count_negative)
    cos = batch_cosines(G, directions)
    return Runs(directions, batch.accuracy, signs, mags, batch.accuracy >= recipe.min_accuracy, -cos if recipe.count_negative else cos)


def draw_sets(rng: np.random.Generator, n_available: int, n_sets: int, size: int) -> tuple[np.ndarray, bool]:
    """``n_sets`` index sets of ``size`` from ``range(n_available)``: disjoint while the pool allows,
    else each set drawn on its own (no repeats within a set; sets may share examples)."""
    if n_sets * size <= n_available:
        return rng.permutation(n_available)[: n_sets * size].reshape(n_sets, size), True
    return rng.random((n_sets, n_available)).argsort(1)[:, :size], False


def per_run_subsets(rng: np.random.Generator, n: int, k: int, runs: int, balance: str) -> np.ndarray:
    """Which ``k`` of ``n`` examples each run uses: all (k == n), the first k (``truncate``) or a
    fresh random draw per run."""
    if k >= n:
        return np.tile(np.arange(n), (runs, 1))
    if balance == "truncate":
        return np.tile(np.arange(k), (runs, 1))
    return np.sort(rng.random((runs, n)).argsort(1)[:, :k], 1)


@dataclass
class Plain:
    """Concept vs random sets drawn from a pool: sizes and draws, replayable with pseudo-concepts."""

    n_concept: int
    n_pool: int
    runs: int
    n_pos: int  # concept examples per run
    n_neg: int  # random examples per run (= random set size)
    balance: str

    def draw(self, rng: np.random.Generator, pool_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(concept-side indices [runs, n_pos] into the concept, random-side [runs, n_neg] into ``pool_ids``)."""
        sets, disjoint = draw_sets(rng, len(pool_ids), self.runs, self.n_neg)
        return per_run_subsets(rng, self.n_concept, self.n_pos, self.runs, self.balance), pool_ids[sets], disjoint

    def replay(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A pseudo-concept from the pool and its random sets from the rest: pool indices."""
        order = rng.permutation(self.n_pool)
        pseudo, rest = order[: self.n_concept], order[self.n_concept :]
        c_idx, r_idx, _ = self.draw(rng, rest)
        return pseudo[c_idx], r_idx


@dataclass
class Relative:
    """Concept vs the union of the others, in subsampled runs; replayed by permuting the labels."""

    n_concept: int
    n_other: int
    runs: int
    n_pos: int
    n_neg: int

    def draw(self, rng: np.random.Generator, pos_ids: np.ndarray, neg_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.sort(rng.random((self.runs, len(pos_ids))).argsort(1)[:, : self.n_pos], 1)
        n = np.sort(rng.random((self.runs, len(neg_ids))).argsort(1)[:, : self.n_neg], 1)
        return pos_ids[p], neg_ids[n]

    def replay(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        order = rng.permutation(self.n_concept + self.n_other)
        return self.draw(rng, order[: self.n_concept], order[self.n_concept :])


@dataclass
class Null:
    """The replays of one experiment: their statistics and what the quality filter saw in them."""

    stats: list[tuple[float, ...]]
    mean_scores: list[float]  # each replay's mean sign score (for the report)
    n_dropped: int  # replay CAVs below the accuracy threshold
    n_cavs: int
    n_gated: int  # replays that the quality gate would not have tested


def replays(
    draw: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    pos_rows: torch.Tensor,
    neg_rows: torch.Tensor,
    G: torch.Tensor,
    recipe: Recipe,
    n_null: int,
    seed: int,
    statistic: str,
    gate: float,
    negate: bool = False,
) -> Null:
    """Run ``n_null`` replays; ``draw(rng)`` gives (pos indices [runs, n1], neg indices [runs, n0])
    into ``pos_rows`` / ``neg_rows``. Each replay is summarised by the same statistic as the real
    experiment, over all its CAVs; how many replays the quality gate (more than ``gate`` of the
    CAVs below ``recipe.min_accuracy``) would have refused is counted, not acted on: the test is
    unconditional, and gating the real experiment can only lower its rejection rate."""
    rng = np.random.default_rng([seed, 7919])
    draws = [draw(rng) for _ in range(n_null)]
    runs, n1 = draws[0][0].shape
    n0 = draws[0][1].shape[1]
    d = pos_rows.shape[1]
    per_chunk = max(1, _CHUNK_NUMBERS // (runs * (n1 + n0) * d))
    if not (bool(torch.isfinite(pos_rows).all()) and bool(torch.isfinite(neg_rows).all())):
        from conceptkit.api import InputError

        raise InputError("activations contain NaN or Inf")
    out = Null([], [], 0, 0, 0)
    for start in range(0, n_null, per_chunk):
        part = draws[start : start + per_chunk]
        p_idx = torch.from_numpy(np.concatenate([p for p, _ in part]))
        n_idx = torch.from_numpy(np.concatenate([n for _, n in part]))
        fitted = fit_runs(pos_rows[p_idx], neg_rows[n_idx], G, recipe, seed=seed * 1_000_003 + 17 + start, negate=negate, check_finite=False)
        k = len(part)
        signs, mags, cos, keep = (x.view(k, runs) for x in (fitted.signs, fitted.magnitudes, fitted.cosines, fitted.keep))
        for j in range(k):
            out.stats.append(experiment_statistic(statistic, signs[j], mags[j], cos[j]))
            out.mean_scores.append(float(signs[j].mean()))
        dropped = (~keep).sum(1)
        out.n_dropped += int(dropped.sum())
        out.n_gated += int((dropped > gate * runs).sum())
        out.n_cavs += k * runs
    return out
