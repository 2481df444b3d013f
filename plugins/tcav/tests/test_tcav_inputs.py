"""Where TCAV reads and what it reuses: templates, the default site, the disk cache."""

from __future__ import annotations

import warnings

import pytest
import torch

import conceptkit as ck
from conceptkit_tcav import cache
from conceptkit_tcav.method import PositionMismatchWarning, default_site, position_note

POS = ["I loved it", "what a great day", "wonderful food", "happy and bright", "so good", "a delight"]
NEG = ["I hated it", "what a bad day", "awful food", "sad and grey", "so bad", "a disaster"]
POOL = [f"the item number {i} is on the shelf" for i in range(40)]
TEMPLATE = "Review: {}\nAnswer:"


@pytest.fixture(scope="module")
def tiny():
    return ck.load_model("tiny-llama", backend="transformer_lens")


def _config(**kw):
    return {"concepts": [{"name": "pos", "examples": POS}, {"name": "neg", "examples": NEG}], "targets": POS[:3] + NEG[:3],
            "objective": {"kind": "logit_diff", "positive": 5, "negative": 9}, "random_pool": POOL, "n_random": 3,
            "n_null": 19, "min_cav_accuracy": 0.0, **kw}


def test_default_site_is_derived_from_the_model(tiny):
    """Without `sites`, TCAV tests the residual stream at 60% depth of *this* model (no fixed layer 18)."""
    result = ck.method("tcav").run(tiny, _config())
    assert result.conventions["sites"] == [default_site(tiny)] == [f"blocks.{round(0.6 * tiny.n_layers)}.hook_resid_post"]
    help_text = ck.method("tcav").Config.model_json_schema()["properties"]["sites"]["description"]
    assert "derived from the model" in help_text and "blocks.18" in help_text


def test_concept_template_defaults_to_the_target_template(tiny):
    """Concept and random examples go through target_template unless concept_template is given:
    the CAVs come from the activations of the formatted texts."""
    site = default_site(tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PositionMismatchWarning)
        result = ck.method("tcav").run(tiny, _config(relative=True, target_template=TEMPLATE, probe="mean_diff", standardize=False, balance="none", subsample=1.0))
    assert result.conventions["concept_template"] == TEMPLATE and not result.conventions["position_warning"]
    acts = tiny.capture([TEMPLATE.format(e) for e in POS + NEG], [site])[site].double()
    pos, neg = acts[: len(POS)], acts[len(POS):]
    cav = torch.tensor(result.cavs[f"pos|{site}"][0], dtype=torch.float64)
    # mean_diff on all examples but each run's held-out part: the CAV is close to the class-mean difference
    assert float(torch.nn.functional.cosine_similarity(cav, pos.mean(0) - neg.mean(0), dim=0)) > 0.9


def test_position_mismatch_warns(tiny):
    """CAVs read after one template and gradients after another (last token) give a warning, also in the summary."""
    assert position_note("{}", TEMPLATE, "last") and not position_note("{}", TEMPLATE, "mean")
    assert not position_note("Text: {}\nAnswer:", TEMPLATE, "last")
    with pytest.warns(PositionMismatchWarning, match="different kinds of position"):
        result = ck.method("tcav").run(tiny, _config(target_template=TEMPLATE, concept_template="{}"))
    assert "different kinds of position" in result.summary()


def test_second_run_reads_everything_from_the_cache(tiny, monkeypatch, tmp_path):
    """Re-running with another test, probe and seed calls the model for nothing; results match a
    cache-free run; clear() empties the cache."""
    monkeypatch.setattr(cache, "cache_root", lambda: tmp_path / "tcav")
    first = ck.method("tcav").run(tiny, _config())
    assert cache.info()["files"] == 2  # activations and gradients at the one site

    def refuse(*args, **kwargs):
        raise AssertionError("the model was called although everything is cached")

    monkeypatch.setattr(tiny, "capture", refuse)
    monkeypatch.setattr(tiny, "grad", refuse)
    again = ck.method("tcav").run(tiny, _config(test="two_sample_random", probe="mean_diff", seed=3))
    same = ck.method("tcav").run(tiny, _config())
    assert same.cavs == first.cavs and [r.p_value for r in same.rows] == [r.p_value for r in first.rows]
    assert again.rows and again.conventions["test"] == "two_sample_random"
    monkeypatch.undo()
    monkeypatch.setattr(cache, "cache_root", lambda: tmp_path / "tcav")
    uncached = ck.method("tcav").run(tiny, _config(cache=False))
    assert torch.allclose(torch.tensor(uncached.cavs[f"pos|{default_site(tiny)}"]), torch.tensor(first.cavs[f"pos|{default_site(tiny)}"]), atol=1e-5)
    assert cache.clear() == 2 and cache.info()["files"] == 0


def test_a_weight_edit_is_a_cache_miss(tiny, monkeypatch, tmp_path):
    """The key holds the model's weights hash, recomputed after an edit: a run under an edit
    recomputes its activations and gradients (and matches a cache-free run), and after the edit
    is removed the first entries serve again."""
    monkeypatch.setattr(cache, "cache_root", lambda: tmp_path / "tcav")
    first = ck.method("tcav").run(tiny, _config())
    layer = round(0.6 * tiny.n_layers) - 1  # the block before the read site
    g = torch.Generator().manual_seed(0)
    edit = ck.WeightEdit.low_rank(torch.randn(tiny.weights.W_out(layer).shape[0], generator=g) * 0.5,
                                  torch.randn(tiny.weights.W_out(layer).shape[1], generator=g), role="out", layer=layer)
    with tiny.apply_edit(edit):
        edited = ck.method("tcav").run(tiny, _config())
        assert cache.info()["files"] == 4  # a second set of entries under the edited weights' hash
        uncached = ck.method("tcav").run(tiny, _config(cache=False))
    site = default_site(tiny)
    assert not torch.allclose(torch.tensor(edited.cavs[f"pos|{site}"]), torch.tensor(first.cavs[f"pos|{site}"]))
    assert torch.allclose(torch.tensor(edited.cavs[f"pos|{site}"]), torch.tensor(uncached.cavs[f"pos|{site}"]), atol=1e-5)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was called although the unedited entries are cached")

    monkeypatch.setattr(tiny, "capture", refuse)
    monkeypatch.setattr(tiny, "grad", refuse)
    again = ck.method("tcav").run(tiny, _config())
    assert again.cavs == first.cavs


def test_cache_command_reports_and_clears(monkeypatch, tmp_path):
    """`conceptkit tcav-cache info|clear` show the location and empty it."""
    from click.testing import CliRunner

    from conceptkit import cli as cli_module

    monkeypatch.setattr(cache, "cache_root", lambda: tmp_path / "tcav")
    (tmp_path / "tcav" / "v1").mkdir(parents=True)
    (tmp_path / "tcav" / "v1" / "x.safetensors").write_bytes(b"0")
    out = CliRunner().invoke(cli_module.cli, ["tcav-cache", "info"])
    assert out.exit_code == 0 and "1 file(s)" in out.output and str(tmp_path) in out.output
    out = CliRunner().invoke(cli_module.cli, ["tcav-cache", "clear"])
    assert out.exit_code == 0 and "removed 1 file(s)" in out.output and not (tmp_path / "tcav").exists()
