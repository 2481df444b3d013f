"""Exact identities and statistical behaviour of TCAV on toy models."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit.errors import InputError, UnknownNameError
from conceptkit_tcav.scores import directional_derivatives, run_scores
from tcav_toys import Net as _Net
from tcav_toys import planted_model as _planted_model


def test_linear_read_out_gives_binary_scores_and_exact_magnitude(vector_model):
    """If the output is linear in the site, S = a·v for every input: score in {0,1}, magnitude = a·v."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(16, 3, generator=g, dtype=torch.float64)
    table = {f"x{i}": torch.randn(1, 16, generator=g, dtype=torch.float64) for i in range(200)}
    model = vector_model(_Net(torch.nn.Identity(), _Linear(A)), table)
    keys = list(table)
    G = model.grad(keys[:30], model.SITE, {"kind": "token_logit", "token": 0})
    assert torch.allclose(G, A[:, 0].float().expand_as(G), atol=1e-6)
    config = {
        "concepts": [{"name": "c", "examples": keys[30:70]}], "targets": keys[:30], "objective": {"kind": "token_logit", "token": 0},
        "sites": [model.SITE], "random_pool": keys[70:], "n_random": 3, "probe": "mean_diff",
    }
    result = ck.method("tcav").run(model, config)
    cavs = torch.tensor(result.cavs[f"c|{model.SITE}"], dtype=torch.float64)
    row = result.row("c")
    for cav, score in zip(cavs, row.scores):
        a_dot_v = float(A[:, 0] @ cav)
        assert score == (1.0 if a_dot_v > 0 else 0.0)
    assert row.magnitude_mean == pytest.approx(float((cavs @ A[:, 0]).mean()), abs=1e-6)


def _Linear(A):
    class Lin(torch.nn.Module):
        def forward(self, h):
            return h @ A

    return Lin()


def test_binary_set_scores_are_complementary():
    """For a concept and its partner (CAV -v), sign scores sum to 1 and magnitudes are opposite."""
    g = torch.Generator().manual_seed(3)
    G, v = torch.randn(50, 8, generator=g), torch.randn(8, generator=g)
    a, b = run_scores(directional_derivatives(G, v)), run_scores(directional_derivatives(G, -v))
    assert a.sign + b.sign == 1.0
    assert a.magnitude_mean == pytest.approx(-b.magnitude_mean)
    assert a.magnitude_ratio + b.magnitude_ratio == pytest.approx(1.0)


@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_finite_differences_match_directional_derivative(reduce):
    """On a tiny TransformerLens model, (y(+eps v) - y(-eps v)) / 2eps ≈ G·v for last and mean."""
    from conceptkit import interventions as iv
    from conceptkit.objectives import as_objective

    model = ck.load_model("tiny-tl-native", backend="transformer_lens")
    site, texts = "blocks.0.hook_resid_post", ["hello there", "abc", "tcav test"]
    objective = {"kind": "logit_diff", "positive": 5, "negative": 9}
    G = model.grad(texts, site, objective, reduce=reduce)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    fn = as_objective(objective, model)
    eps = 1e-3

    def value(c):
        out = []
        for t in texts:
            b = model.tokenize([t])
            with model._running(b, [iv.Add(site=site, vector=v, coeff=c, positions="last" if reduce == "last" else "all")]), torch.no_grad():
                out.append(fn(model._forward(b), b))
        return torch.cat(out)

    assert torch.allclose((value(eps) - value(-eps)) / (2 * eps), G @ v, rtol=5e-3, atol=5e-3)


def test_runs_are_deterministic(vector_model):
    """Fixed seeds give bit-identical CAVs and scores."""
    model, config = _planted_model(vector_model, seed=1, null=False, n_random=4)
    a, b = ck.method("tcav").run(model, config), ck.method("tcav").run(model, config)
    assert a.cavs == b.cavs and a.model_dump_json() == b.model_dump_json()  # (NaN baseline p-values)


def test_near_chance_cavs_are_flagged_not_scored(vector_model):
    """A CAV whose held-out accuracy is near chance is flagged and never called significant."""
    model, config = _planted_model(vector_model, seed=2, null=True, n_concept=20, n_random=6)
    row = ck.method("tcav").run(model, config).row("planted")
    assert row.cav_accuracy < 0.6 and row.low_quality and not row.significant and row.n_chance_cavs > row.n_runs / 4
    assert "near chance" in ck.method("tcav").run(model, config).summary()


def test_bad_input_is_reported_clearly(vector_model):
    """Too few examples, unknown site, empty random pool, multi-token target: clear errors."""
    model, config = _planted_model(vector_model, seed=0, null=False, n_random=3)
    with pytest.raises(InputError, match="too few examples for a held-out split: concept .tiny. has 3"):
        ck.method("tcav").run(model, dict(config, concepts=[{"name": "tiny", "examples": ["c0", "c1", "c2"]}]))
    with pytest.raises(UnknownNameError, match="unknown site 'blocks.7.hook_resid_post'"):
        ck.method("tcav").run(model, dict(config, sites=["blocks.7.hook_resid_post"]))
    with pytest.raises(InputError, match="random pool is empty"):
        ck.method("tcav").run(model, dict(config, random_pool=[]))
    tiny = ck.load_model("tiny-llama", backend="nnsight")
    with pytest.raises(InputError, match="target token ' positive' is not a single token"):
        ck.method("tcav").run(tiny, {"concepts": ["positive_sentiment"], "targets": ["a"], "sites": ["blocks.1.hook_resid_post"]})


def test_result_plots_and_saves_cavs(vector_model, ck_store, tmp_path):
    """The result draws the bar chart and stores one CAV record per (concept, site)."""
    model, config = _planted_model(vector_model, seed=0, null=False, n_random=4)
    result = ck.method("tcav").run(model, config, store=ck_store)
    path = result.plot(tmp_path / "tcav.png")
    assert path.exists() and path.stat().st_size > 1000
    [record] = ck_store.find(method="tcav")
    assert record.concept == "planted" and record.kind == "cav"
    assert record.metrics["significant"] == result.row("planted").significant and record.metrics["p_value"] == result.row("planted").p_value
    tensors = ck_store.tensors(record.id)
    assert tensors["cav_runs"].shape == (4, 64) and abs(float(tensors["cav"].norm()) - 1) < 1e-5
    assert record.method.config["n_random"] == 4 and record.model["name"] == "toy"


def test_tf_loss_convention_counts_negative_derivatives(vector_model):
    """gradient_of='loss' differentiates the cross-entropy and counts S < 0 (TF), and records it."""
    model, config = _planted_model(vector_model, seed=0, null=False, n_random=4)
    target = ck.method("tcav").run(model, dict(config, objective={"kind": "logit_diff", "positive": 0, "negative": 1}))
    loss = ck.method("tcav").run(model, dict(config, objective={"kind": "logit_diff", "positive": 0, "negative": 1}, gradient_of="loss"))
    assert loss.conventions["counted_sign"] == "S < 0" and target.conventions["counted_sign"] == "S > 0"
    # With two classes, -d CE/dz_0 = (1 - p_0)(d z_0 - d z_1): same sign as the logit difference.
    assert loss.row("planted").scores == target.row("planted").scores
