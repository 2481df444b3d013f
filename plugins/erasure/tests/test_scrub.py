"""Concept scrubbing through the erasure method: tiny models on both backends, stored erasers."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit.errors import ConceptkitError, InputError
from conceptkit.testing import assert_no_hook_leak
from conceptkit_erasure.scrub import Scrubber


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_scrubbing_removes_the_concept_at_every_site(backend):
    """On a tiny Llama, 'is a digit' is decodable before and at chance after, at every site."""
    model = ck.load_model("tiny-llama", backend=backend)
    with assert_no_hook_leak(model):
        result = ck.method("erasure").run(model, {"token_property": "digit"})
    assert len(result.sites) == 2 * model.n_layers and result.n_test_tokens >= 1000
    for row in result.sites:
        assert row.probe_accuracy_before > 0.9, row
        assert abs(row.probe_accuracy_after - 0.5) <= 0.03, row
        assert row.rank == 1
    assert result.bits_per_byte_random is not None


def test_erasers_are_stored_and_applied_from_the_store(ck_store):
    """The erasers go to the store as one record; applying them from there matches the fit."""
    model = ck.load_model("tiny-llama", backend="nnsight")
    method = ck.method("erasure")
    result = method.run(model, {"token_property": "digit"}, store=ck_store)
    [record] = ck_store.find(method="erasure")
    assert record.kind == "eraser" and record.metrics["max_probe_accuracy_after"] <= 0.53
    tensors = ck_store.tensors(record.id)
    assert set(tensors) == {f"{r.site}/{part}" for r in result.sites for part in ("proj_left", "proj_right", "bias")}
    texts = ["Ticket 4521 costs 30 euros.", "The bus left at 9."]
    fitted = Scrubber.from_tensors(result.tensors)
    with method.apply(tensors, model):
        from_store = model.run(texts)
    with fitted.apply(model):
        direct = model.run(texts)
    assert torch.equal(from_store, direct) and not torch.equal(direct, model.run(texts))


def test_eraser_for_another_width_is_refused():
    """An eraser fitted for width d applied at a site of width d' is a clear error."""
    small = ck.load_model("tiny-llama", backend="nnsight")
    scrubber = ck.method("erasure").fit(small, {"sites": ["blocks.0.ln1.hook_out"]})
    wide = Scrubber({"blocks.0.ln1.hook_out": type(next(iter(scrubber.erasers.values())))(
        torch.zeros(32, 1, dtype=torch.float64), torch.zeros(1, 32, dtype=torch.float64), None)})
    with pytest.raises(InputError, match="width 32 but the site's activations have width 64"):
        with wide.apply(small):
            small.run(["abc"])


def test_bad_configs_store_nothing(ck_store):
    """Mismatched labels or a single class: a clear error and the store unchanged."""
    model = ck.load_model("tiny-llama", backend="nnsight")
    texts = ["abc 12", "de 3"]
    with pytest.raises(ConceptkitError, match="1 label lists for 2 texts"):
        ck.method("erasure").run(model, {"texts": texts, "labels": [[0, 1]]}, store=ck_store)
    with pytest.raises(ConceptkitError, match="one class only"):
        ck.method("erasure").run(model, {"texts": texts * 4, "labels": [[0] * len(t) for t in texts * 4]}, store=ck_store)
    assert len(ck_store) == 0


def test_edit_apply_command_serves_erasers(ck_store, capsys):
    """`conceptkit edit apply RECORD` reports bits per byte without and with a stored eraser."""
    from conceptkit.cli import main

    model = ck.load_model("tiny-llama", backend="nnsight")
    ck.method("erasure").run(model, {"sites": ["blocks.0.ln1.hook_out"]}, store=ck_store)
    [record] = ck_store.find(method="erasure")
    main(["edit", "apply", record.id[:10], "--model", "tiny-llama", "--backend", "nnsight", "--store", str(ck_store.root),
          "--text", "Room 12 holds 4 boxes."])
    out = capsys.readouterr().out
    assert "bits/byte without" in out and "with:" in out

def test_default_reports_a_spread_of_sites_and_full_reports_all():
    """By default probe reports cover 8 evenly spaced sites (first and last included); erasers cover every site."""
    from conceptkit_erasure.method import ErasureConfig, report_subset

    sites = [f"blocks.{i // 2}.ln{1 + i % 2}.hook_out" for i in range(60)]
    picked = report_subset(sites, 8)
    assert len(picked) == 8 and picked[0] == sites[0] and picked[-1] == sites[-1] and len(set(picked)) == 8
    assert report_subset(sites, None) == sites and report_subset(sites[:4], 8) == sites[:4]
    assert ErasureConfig().report_sites == 8 and not ErasureConfig().full


def test_one_pass_fit_equals_site_by_site_fit():
    """Fitting every eraser in one forward pass gives the site-by-site (one capture per site) erasers."""
    from conceptkit_erasure.corpus import digit_corpus, token_labels
    from conceptkit_erasure.scrub import fit_scrubber

    model = ck.load_model("tiny-llama")
    texts = digit_corpus(24, seed=1)
    labels = token_labels(model, texts, "digit")
    fast = fit_scrubber(model, texts, labels)
    slow = fit_scrubber(model, texts, labels, one_pass_max_texts=0)
    assert list(fast.erasers) == list(slow.erasers) and len(fast.erasers) == 2 * model.n_layers
    probe = model.capture(texts[:4], list(fast.erasers), reduce="all")
    for site in fast.erasers:
        assert torch.allclose(fast.erasers[site](probe[site].double()), slow.erasers[site](probe[site].double()), atol=1e-4)
