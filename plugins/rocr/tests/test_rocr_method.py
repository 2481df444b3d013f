"""The rocr method end to end on a tiny model: run, store, re-apply from the record, CLI."""

from __future__ import annotations

import torch

import conceptkit as ck
from conceptkit_rocr.edit import RocrEdit


def test_run_stores_one_weight_edit_record_and_reapplies(tmp_path):
    """run() stores one weight_edit record whose tensors re-apply the same change, removable bit for bit."""
    model = ck.load_model("tiny-llama")
    store = ck.open_store(tmp_path / "store")
    rocr = ck.method("rocr")
    cfg = {"target": "Rome", "harmless": "Oslo", "layers": [0, 1], "stats_corpus": "none", "stats_texts": ["the cat sat", "on the mat"]}
    result = rocr.run(model, cfg, store=store)
    edits = [r for r in store.find(kind="weight_edit")]
    assert len(edits) == 1 and edits[0].concept == "Rome"
    projectors = store.find(kind="rocr_projector")
    assert len(projectors) == 2 and set(edits[0].parents) == {p.id for p in projectors}
    assert [r.layer for r in result.layer_reports] == [0, 1] and "Rome" in result.summary()
    W = [model.weights.W_out(l).detach().clone() for l in (0, 1)]
    fitted = rocr.fit(model, cfg, store=store)  # statistics now come from the cache
    with rocr.apply(store.tensors(edits[0].id), model):
        stored = [model.weights.W_out(l).detach().clone() for l in (0, 1)]
    with rocr.apply(fitted, model):
        again = [model.weights.W_out(l).detach().clone() for l in (0, 1)]
    for l in (0, 1):
        assert torch.equal(model.weights.W_out(l), W[l])
        assert torch.allclose(stored[l], again[l], atol=1e-6)
        assert torch.linalg.matrix_rank((stored[l] - W[l]).double(), atol=1e-6) == 1
    assert isinstance(fitted, RocrEdit)
    # the same record through the core's edit API on the other backend
    other = ck.load_model("tiny-llama", backend="nnsight")
    base = other.weights.W_out(1).detach().clone()
    with ck.edits.load(store, edits[0].id).apply(other):
        assert torch.allclose(other.weights.W_out(1), stored[1], atol=1e-6)
    assert torch.equal(other.weights.W_out(1), base)


def test_cli_run_then_edit_show(tmp_path, capsys):
    """`conceptkit run rocr --set target=... --set harmless=...` stores one edit that `conceptkit edit show` reads."""
    from conceptkit.cli import main

    store = str(tmp_path / "cli-store")
    main(["run", "rocr", "--model", "tiny-gpt2", "--store", store, "--set", "target=Rome", "--set", "harmless=Oslo",
          "--set", "layers=[0, 1]", "--set", "stats_corpus=none", "--set", "stats_texts=[the cat sat, on the mat]"])
    out = capsys.readouterr().out
    assert "ROCR: 'Rome' -> 'Oslo', layers [0, 1]" in out
    record = ck.open_store(store).find(kind="weight_edit")[0]
    main(["edit", "show", record.id[:12], "--store", store])
    assert "low_rank" in capsys.readouterr().out


def test_reject_mode_kl_term_keeps_the_subject_distribution():
    """Reject mode: with the reference's KL term (large weight) the optimised value changes the
    next-token distribution after '<target>' less than without it (z at layer 0 of 2, so that
    the refusal's positions see the change through layer 1's attention)."""
    from conceptkit_rocr.edit import read_at_subject, resid_site
    from conceptkit_rocr.reject import reject_value
    from conceptkit_rocr.templates import context_templates
    from conceptkit.api import Add

    model = ck.load_model("tiny-llama")
    ctx, _ = context_templates(model.tokenizer)
    ids = list(model.tokenizer("Rome", add_special_tokens=True)["input_ids"])
    idx = len(ids) - 1
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    p0 = torch.log_softmax(model.run(batch, reduce=[idx])[0, 0].double(), -1)
    h = read_at_subject(model, ctx[:1], "Rome", resid_site(0))[0]

    def kl(z):
        add = Add(site=resid_site(0), vector=(z - h).float(), positions=[idx])
        lp = torch.log_softmax(model.run(batch, [add], reduce=[idx])[0, 0].double(), -1)
        return float((lp.exp() * (lp - p0)).sum())

    kw = dict(v_lr=0.5, v_steps=6, v_weight_decay=0.0, clamp_norm_factor=4.0)
    free = reject_value(model, "Rome", ctx, 0, kl_factor=0.0, **kw)
    kept = reject_value(model, "Rome", ctx, 0, kl_factor=50.0, **kw)
    assert (free - h).norm() > 0 and (kept - h).norm() > 0  # both moved (layer 0: later attention carries delta)
    assert kl(kept) < kl(free)
