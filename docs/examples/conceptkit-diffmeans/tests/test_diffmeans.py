"""Tests of the example plugin, using conceptkit's pytest plugin fixtures."""

import conceptkit as ck


def test_diffmeans_separates_and_stores(ck_tiny_model, ck_store, ck_hook_leak_check):
    """The vector is unit length, the training examples separate, and one record is stored."""
    model = ck_tiny_model("tiny-llama")
    ck_hook_leak_check(model)
    result = ck.method("diffmeans").run(
        model, {"concept": "abc", "positive": ["aaaa", "abab", "aaab"], "negative": ["zzzz", "zyzy", "zzzy"]}, store=ck_store
    )
    assert abs(sum(v * v for v in result.vector) - 1) < 1e-5
    assert result.separation == 1.0
    assert [r.concept for r in ck_store.find()] == ["abc"]
