"""TCAV claims on the real SmolLM2-135M-Instruct (sentiment lives in middle-to-late layers).

Activations and gradients go through the session's TCAV cache, so the three tests share the
captures of the concept sets at layer 18."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import conceptkit as ck
from conceptkit import concepts
from conceptkit.probes import fit_probe

pytestmark = pytest.mark.slow

TEMPLATE = "Review: {}\nSentiment:"
OBJECTIVE = {"kind": "logit_diff", "positive": " positive", "negative": " negative"}
SITE = "blocks.18.hook_resid_post"  # the demo's layer (the default site on this 30-layer model)
TARGETS = list(concepts.load("review_targets_positive").examples)


@pytest.fixture(scope="module")
def model():
    return ck.load_model("smollm2-135m", backend="transformer_lens")


def test_relative_tcav_positive_vs_negative_sentiment(model):
    """Relative TCAV at layer 18 under the default (calibrated) test: positive sentiment is
    significantly above permuted labels on positive reviews, tested once for the pair, p > 0."""
    result = ck.method("tcav").run(model, {
        "concepts": ["positive_sentiment", "negative_sentiment"], "relative": True, "targets": TARGETS[:20],
        "target_template": TEMPLATE, "objective": OBJECTIVE, "sites": [SITE], "n_null": 100,
    })
    print(result.summary())
    row, other = result.row("positive_sentiment"), result.row("negative_sentiment")
    assert row.mean > 0.5 and row.significant and row.direction == "above" and 0 < row.p_value < 0.05
    assert row.cav_accuracy >= 0.85 and result.conventions["test"] == "monte_carlo"
    assert other.same_test_as == "positive_sentiment" and other.p_value == row.p_value and other.mean < 0.5


FULL = pytest.mark.skipif(not os.environ.get("CONCEPTKIT_TCAV_FULL"), reason=(
    "captures the whole neutral pool (800 sentences) and runs 6 x 200 replays: 991 s on an empty cache, 66 s on a filled one, "
    "on a loaded 2-core machine; set CONCEPTKIT_TCAV_FULL=1 to run (measured table: plugins/tcav/results/smollm2.md)"))
NEUTRAL_DATA = Path(__file__).parent / "data"


def _neutral(name: str) -> dict:
    lines = (NEUTRAL_DATA / f"{name}.txt").read_text().splitlines()
    return {"name": name, "examples": [x for x in lines if x.strip() and not x.startswith("#")]}


@pytest.fixture(scope="module")
def concept_vs_random(model):
    """One default run at the demo's layer over the shipped sentiment and topic sets and the
    plugin's sentiment-neutral topic sets (the concepts share the pool's captures)."""
    result = ck.method("tcav").run(model, {
        "concepts": ["positive_sentiment", "negative_sentiment", "topic_food", "topic_sport",
                     _neutral("topic_food_neutral"), _neutral("topic_sport_neutral")],
        "targets": TARGETS, "target_template": TEMPLATE, "objective": OBJECTIVE, "sites": [SITE],
    })
    print(result.summary())
    return result


@FULL
@pytest.mark.xfail(strict=False, reason=(
    "measured, not met (results/smollm2.md): positive_sentiment 0.962, mean cos(gradient, CAV) +0.037 against "
    "pseudo-concepts' -0.005 +- 0.031, p = 0.169 (the sentiment CAV at layer 18 is barely more aligned with the "
    "objective's gradient than a noise direction); negative_sentiment is significant below random (p = 0.030)"))
def test_positive_sentiment_is_significant_above_random(concept_vs_random):
    """Issue 13's acceptance claim, first half: positive sentiment vs random sets at the demo's layer is
    significant above random at 0.05 under the default test."""
    row = concept_vs_random.row("positive_sentiment")
    assert row.cav_accuracy >= 0.85 and row.significant and row.direction == "above"


@FULL
@pytest.mark.xfail(strict=False, reason=(
    "measured, not met (results/smollm2.md): the shipped topic_food set is read as positive by the model (mean logit "
    "difference +2.05 vs +0.31 for the neutral pool) and is significant above random (p = 0.00995); of the "
    "sentiment-neutral control sets topic_food_neutral is not significant (p = 0.139) but topic_sport_neutral is, "
    "below random (p = 0.0199): any coherent set is a systematic direction, and the test's null is 'examples like the pool'"))
def test_neutral_topic_sets_are_not_significant(concept_vs_random):
    """Issue 13's acceptance claim, second half: sentiment-neutral topic sets are not significant."""
    for name in ("topic_food_neutral", "topic_sport_neutral"):
        assert not concept_vs_random.row(name).significant, name


@FULL
def test_concept_vs_random_reports_direction_and_both_sides_quality(concept_vs_random):
    """What holds and is asserted: every concept is tested (CAVs well above chance), each row says its
    direction, p > 0, and the random side's quality counts are reported."""
    for row in concept_vs_random.rows:
        assert row.tested and row.cav_accuracy >= 0.9 and row.direction in ("above", "below") and row.p_value > 0
        assert row.random_side["n_cavs"] == 200 * 10 and 0 <= row.random_side["n_gated"] <= 200
    assert "cos(gradient, CAV)" in concept_vs_random.summary()


def test_reference_probe_recipe_is_at_chance_and_the_default_is_not(model):
    """captum/TF's SGD hinge on unscaled activations lands at chance at an early layer of this
    model; a standardised probe does not, and TCAV flags the former as not tested."""
    pos, neg = list(concepts.load("positive_sentiment").examples), list(concepts.load("negative_sentiment").examples)
    acts = model.capture(pos + neg, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]
    reference = [fit_probe(acts[: len(pos)], acts[len(pos):], "sgd_hinge", standardize=False, seed=s).accuracy for s in range(6)]
    default = fit_probe(acts[: len(pos)], acts[len(pos):], "logistic", seed=0)
    assert sum(reference) / len(reference) <= 0.65 and default.accuracy >= 0.85
    from conceptkit_tcav.method import PositionMismatchWarning

    with pytest.warns(PositionMismatchWarning):  # bare sentences for the CAVs (as measured before), templated targets
        result = ck.method("tcav").run(model, {
            "concepts": ["positive_sentiment", "negative_sentiment"], "relative": True, "probe": "sgd_hinge", "standardize": False,
            "targets": TARGETS[:10], "target_template": TEMPLATE, "concept_template": "{}",
            "objective": OBJECTIVE, "sites": ["blocks.1.hook_resid_post"], "n_random": 6,
        })
    row = result.row("positive_sentiment")
    assert row.low_quality and not row.significant and not row.tested and "near chance" in result.summary()
