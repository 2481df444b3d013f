"""The method and its CLI on a tiny model: dictionary built from examples, per-prompt trace, accuracy lines."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

import conceptkit as ck

CONFIG = {
    "site": "blocks.1.hook_resid_post",
    "concepts": ["red", "blue"],
    "examples": ["a red car", "the red hat", "a blue sea", "the blue sky", "a red and blue flag", "a green tree", "my old dog"],
    "rules": ["red and blue -> flag", "red and not blue -> rose"],
    "prompts": ["a red and blue thing", "a red thing"],
    "answers": ["x", "e"],
    "max_new_tokens": 3,
    "allow_multi": True,
}


def test_cli_run_prints_trace_and_stores_the_dictionary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`conceptkit run activation_reasoning` prints detected -> fired -> steered per prompt, both accuracies, and stores the dictionary."""
    from conceptkit.cli import cli

    cfg = tmp_path / "ar.json"
    cfg.write_text(json.dumps(CONFIG))
    res = CliRunner().invoke(cli, ["run", "activation_reasoning", "--config", str(cfg), "--model", "tiny-llama", "--store", str(tmp_path / "s"), "-q"])
    assert res.exit_code == 0, res.output
    assert res.output.count("detected [") == 2 and "-> fired" in res.output and "-> steered" in res.output
    assert "accuracy without AR" in res.output and "with AR" in res.output
    store = ck.open_store(tmp_path / "s")
    recs = store.find(kind="concept_dictionary")
    assert len(recs) == 1 and recs[0].method.name == "activation_reasoning"


def test_method_dictionary_reused_from_store(tmp_path, ck_tiny_model) -> None:  # type: ignore[no-untyped-def]
    """A stored dictionary (record id) gives the same thresholds and detections as the one built."""
    model = ck_tiny_model("tiny-llama")
    store = ck.open_store(tmp_path / "s")
    m = ck.method("activation_reasoning")
    first = m.run(model, CONFIG, store=store)
    rid = first.record_ids[0]
    second = m.run(model, {**CONFIG, "dictionary": rid, "examples": [], "concepts": []}, store=store)
    assert second.thresholds == first.thresholds
    assert [t.detected for t in second.traces] == [t.detected for t in first.traces]
    assert [t.fired for t in second.traces] == [t.fired for t in first.traces]
    assert torch.isfinite(torch.tensor(first.thresholds)).all()


def test_ar_steer_is_a_registered_component() -> None:
    """ar_steer round-trips through the core's intervention registry (JSON dump and parse)."""
    from conceptkit_activation_reasoning.steering import ARSteer

    steer = ARSteer(site="blocks.0.hook_resid_post", direction=torch.tensor([1.0, 0.0, 2.0]), alpha=0.25, positions="last")
    back = ck.interventions.parse(ck.interventions.dump([steer])[0])
    assert isinstance(back, ARSteer) and back.alpha == 0.25 and torch.equal(back.direction, steer.direction)


def test_dictionary_from_stored_concept_vectors(tmp_path, ck_tiny_model) -> None:  # type: ignore[no-untyped-def]
    """vectors={name: record id} builds a vector dictionary from stored vectors, calibrated on the examples (no SAE)."""
    from conceptkit.api import RecordDraft

    model = ck_tiny_model("tiny-llama")
    store = ck.open_store(tmp_path / "s")
    g = torch.Generator().manual_seed(0)
    ids = {c: store.put(RecordDraft(tensors={"vector": torch.randn(64, generator=g)}, concept=c, site=CONFIG["site"])).id for c in ("red", "blue")}
    cfg = {**CONFIG, "concepts": [], "vectors": ids}
    res = ck.method("activation_reasoning").run(model, cfg, store=store)
    assert res.source == "vectors" and res.concepts == ["red", "blue"] and len(res.train_balanced_accuracy) == 2
    assert res.site == CONFIG["site"] and len(res.traces) == 2
