"""BiasLens on the embedded SmolLM2-135M-Instruct (spec section 5, item 7)."""

from __future__ import annotations

import math

import pytest

import conceptkit as ck

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return ck.load_model("smollm2-135m", backend="transformer_lens")


def test_food_against_sentiment_has_accurate_probes_and_an_antisymmetric_score(smollm2) -> None:
    """Target food vs positive/negative sentiment at layers 14, 18, 22: probes >= 0.8, bias finite, swapping references negates it."""
    method = ck.method("biaslens")
    cfg = {"targets": ["topic_food"], "references": ["positive_sentiment", "negative_sentiment"], "layers": [14, 18, 22],
           "n_pos": 48, "n_neg": 96, "bootstrap": 0}
    result = method.run(smollm2, cfg)
    swapped = method.run(smollm2, {**cfg, "references": cfg["references"][::-1]})
    for concept, acc in result.probe_accuracy.items():
        assert min(acc) >= 0.8, (concept, acc)
    row = result.target("topic_food")
    assert row.bias is not None and math.isfinite(row.bias)
    assert swapped.target("topic_food").bias == pytest.approx(-row.bias, abs=1e-5)
