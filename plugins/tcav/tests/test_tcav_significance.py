"""TCAV's significance tests: calibration and power of the Monte Carlo default, the t-test options,
one hypothesis per relative pair, and rows that cannot be tested saying why."""

from __future__ import annotations

import math
import warnings

import pytest

import conceptkit as ck
from conceptkit_tcav.scores import monte_carlo_p, t_test
from tcav_toys import null_concepts_model, planted_model


def test_null_concepts_false_positive_rate_is_at_most_7_percent():
    """200 seeded null concepts drawn like the random sets (10 models x 20), on a net whose random
    directions give widely spread scores: the default test rejects at most 7% at alpha 0.05."""
    significant = tested = 0
    spread = []
    for seed in range(10):
        model, config = null_concepts_model(seed)
        result = ck.method("tcav").run(model, dict(config, probe="mean_diff", n_null=99, min_cav_accuracy=0.0))
        significant += sum(r.significant for r in result.rows)
        tested += sum(r.tested for r in result.rows)
        spread += [r.random_side["std"] for r in result.rows]
    print(f"null concepts: {significant}/{tested} significant at alpha 0.05 (rate {significant / tested:.3f})")
    assert tested == 200
    assert sum(spread) / len(spread) > 0.15  # random sets' scores are widely spread on this net
    assert significant / tested <= 0.07


def test_run_level_two_sample_test_is_anticonservative():
    """Documents why TF's run-level test is only an option: on 20 null concepts it rejects far
    more often than alpha (runs sharing the concept's examples are treated as independent)."""
    model, config = null_concepts_model(0)
    result = ck.method("tcav").run(model, dict(config, probe="mean_diff", min_cav_accuracy=0.0, test="two_sample_random"))
    assert sum(r.significant for r in result.rows) / len(result.rows) > 0.2
    assert "ANTICONSERVATIVE" in result.summary()


def test_planted_concept_is_detected_with_p_below_001(vector_model):
    """The spec's planted concept under the default test (logistic probe: mean_diff CAVs of this toy are
    too often at chance and the row is, rightly, not tested): score > 0.9, p < 0.01, 'above random'."""
    model, config = planted_model(vector_model, seed=0, null=False, n_random=10)
    result = ck.method("tcav").run(model, dict(config, probe="logistic"))
    row = result.row("planted")
    print(f"planted: score {row.mean:.3f}, p {row.p_value:.5f}, {row.direction}")
    assert row.mean > 0.9 and row.p_value < 0.01 and row.significant and row.direction == "above"
    assert "above random" in result.summary() and "monte_carlo" in result.summary()


def test_monte_carlo_p_is_never_zero_and_one_sided_in_the_reported_direction():
    """p = (1 + #as extreme) / (B + 1) on each side; 'auto' doubles the smaller side; ties broken by magnitude."""
    null = [(0.5, 0.0)] * 99
    top = monte_carlo_p((1.0, 1.0), null)
    assert top.p_greater == pytest.approx(1 / 100) and top.p_value == pytest.approx(2 / 100) and top.direction == "above"
    low = monte_carlo_p((0.0, -1.0), null, alternative="less")
    assert low.p_value == pytest.approx(1 / 100) and low.direction == "below"
    tie = monte_carlo_p((1.0, 2.0), [(1.0, 1.0)] * 50 + [(1.0, 3.0)] * 49)  # same score: magnitude decides
    assert tie.p_greater == pytest.approx(50 / 100) and tie.p_less == pytest.approx(51 / 100)


def test_relative_pair_is_tested_once_and_reported_once(vector_model):
    """Two concepts in relative mode: one test; the second row mirrors it (same p, opposite
    direction, complementary scores) and the summary says that scores measure sensitivity."""
    model, config = planted_model(vector_model, seed=3, null=False, n_random=6)
    other = {"name": "other", "examples": [f"r{i}" for i in range(40)]}
    result = ck.method("tcav").run(model, dict(config, concepts=[config["concepts"][0], other], relative=True, n_null=99))
    a, b = result.row("planted"), result.row("other")
    assert b.same_test_as == "planted" and a.p_value == b.p_value and a.p_value > 0
    assert {a.direction, b.direction} == {"above", "below"}
    assert all(x + y == pytest.approx(1.0) for x, y in zip(a.scores, b.scores))
    assert "not class membership" in result.summary() and "reported once" in result.summary()


def test_one_target_is_not_tested_and_says_why(vector_model):
    """With one target input there is nothing to test: no p-value, not significant, the reason shown."""
    model, config = planted_model(vector_model, seed=0, null=False, n_random=4)
    result = ck.method("tcav").run(model, dict(config, targets=["t0"]))
    row = result.row("planted")
    assert not row.tested and not row.significant and math.isnan(row.p_value)
    assert "1 target input" in result.summary() and "0.00e+00" not in result.summary()


def test_identical_runs_give_no_t_test_and_no_scipy_warning():
    """All runs scoring the same: the t-test options report 'no variance' instead of p = 0, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = t_test([1.0] * 10, None, "one_sample_0.5")
        two = t_test([1.0] * 10, [1.0] * 9, "two_sample_random")
        near = t_test([1.0] * 9 + [0.9], [0.5] * 8 + [0.6], "two_sample_random")
    assert math.isnan(one.p_value) and "no variance" in one.note
    assert math.isnan(two.p_value) and "no variance" in two.note
    assert 0 < near.p_value < 1e-6 and near.direction == "above"


def test_quality_filter_is_the_same_for_concept_and_random_cavs(vector_model):
    """The random side's CAVs are dropped by the same accuracy rule, and the counts are reported."""
    model, config = planted_model(vector_model, seed=0, null=False, n_random=6)
    result = ck.method("tcav").run(model, dict(config, n_null=49, min_cav_accuracy=0.6, probe="logistic"))
    row = result.row("planted")
    assert row.tested and row.random_side["n_cavs"] == 49 * 6 and row.random_side["n_dropped"] > 0
    strict = ck.method("tcav").run(model, dict(config, n_null=49, min_cav_accuracy=0.0, probe="logistic")).row("planted")
    assert strict.random_side["n_dropped"] == 0 and strict.n_chance_cavs == 0


def test_t_tests_equal_scipys():
    """The t-test options give scipy.stats' p-values (Student, Welch, one-sample vs 0.5)."""
    from scipy import stats

    x, y = [0.9, 0.7, 0.8, 1.0, 0.6, 0.85], [0.5, 0.4, 0.65, 0.55, 0.3]
    assert t_test(x, y, "two_sample_random").p_value == pytest.approx(stats.ttest_ind(y, x).pvalue, rel=1e-9)
    assert t_test(x, y, "two_sample_random", equal_var=False).p_value == pytest.approx(stats.ttest_ind(y, x, equal_var=False).pvalue, rel=1e-9)
    assert t_test(x, None, "one_sample_0.5").p_value == pytest.approx(stats.ttest_1samp(x, 0.5).pvalue, rel=1e-9)
