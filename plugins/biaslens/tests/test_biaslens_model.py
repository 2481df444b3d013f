"""BiasLens end to end on tiny models: a planted bias, backend parity, options, errors, the store."""

from __future__ import annotations

import random

import pytest
import torch

import conceptkit as ck
from conceptkit_biaslens import behaviour

LETTERS = "abcdefghijklmnopqrs"


def _sentences(end: str, n: int, seed: int) -> list[str]:
    """Random lowercase 'sentences' ending in ``end`` (the last token carries the concept)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(LETTERS) for _ in range(rng.randint(5, 9))) + end for _ in range(n)]


def _neutral(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(LETTERS) for _ in range(rng.randint(6, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def planted_model():
    """tiny-tl-native with u_pos added to the embedding of 'P', u_neg to 'N', and an unembedding
    that reads u_pos into 'X' and u_neg into 'Y' (the behavioural read-out)."""
    model = ck.load_model("tiny-tl-native")
    params = dict(model.tl.named_parameters())
    W_E = next(p for n, p in params.items() if n.endswith("tok_embed._original_component.weight"))
    W_U = next(p for n, p in params.items() if n.endswith("head._original_component.weight"))  # [V, d]
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(model.d_model, 2, generator=g))
    u_pos, u_neg = q[:, 0], q[:, 1]
    tok = model.tokenizer
    ids = {c: tok.convert_tokens_to_ids(c) for c in "PNTXY"}
    with torch.no_grad():
        W_E[ids["P"]] += 6 * u_pos
        W_E[ids["N"]] += 6 * u_neg
        W_U[ids["X"]] = 8 * u_pos
        W_U[ids["Y"]] = 8 * u_neg
    base_T = W_E[ids["T"]].detach().clone()
    return model, W_E, ids, base_T, u_pos, u_neg


def _config(**kw):
    cfg = {
        "targets": [{"name": "T", "examples": _sentences("T", 40, 1), "prompts": _sentences("T", 12, 2)}],
        "references": [{"name": "pos", "examples": _sentences("P", 40, 3)}, {"name": "neg", "examples": _sentences("N", 40, 4)}],
        "negative_pool": _neutral(120, 5),
        "n_pos": 40,
        "n_neg": 40,
        "behaviour": {"positive_tokens": ["X"], "negative_tokens": ["Y"]},
        "min_probe_accuracy": 0.0,
        "bootstrap": 0,
    }
    cfg.update(kw)
    return cfg


def test_planted_bias_is_monotone_and_matches_behaviour(planted_model) -> None:
    """Adding alpha (u_pos - u_neg) to the target token: BiasLens and behaviour both rise with alpha (Spearman 1 over the sweep)."""
    model, W_E, ids, base_T, u_pos, u_neg = planted_model
    method = ck.method("biaslens")
    conceptual, behavioural = [], []
    alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
    try:
        for alpha in alphas:
            with torch.no_grad():
                W_E[ids["T"]] = base_T + alpha * (u_pos - u_neg)
            result = method.run(model, _config())
            row = result.target("T")
            conceptual.append(row.bias)
            behavioural.append(row.behaviour)
    finally:
        with torch.no_grad():
            W_E[ids["T"]] = base_T
    assert conceptual == sorted(conceptual), conceptual
    assert behavioural == sorted(behavioural), behavioural
    assert behaviour.spearman(alphas, conceptual) == pytest.approx(1.0)
    assert behaviour.spearman(conceptual, behavioural) == pytest.approx(1.0)


def test_diff_is_antisymmetric_end_to_end(planted_model) -> None:
    """Swapping the two references negates every per-layer bias on a real forward pass."""
    model = planted_model[0]
    method = ck.method("biaslens")
    a = method.run(model, _config(behaviour=None))
    cfg = _config(behaviour=None)
    cfg["references"] = cfg["references"][::-1]
    b = method.run(model, cfg)
    for ra, rb in zip(a.target("T").layers, b.target("T").layers):
        assert ra.bias == pytest.approx(-rb.bias, abs=1e-6)  # batches differ in order: float32 noise only


def test_mean_cav_removal_changes_scores_and_is_recorded(planted_model) -> None:
    """remove_mean_cav is applied (scores differ) and recorded in the settings, both ways."""
    model = planted_model[0]
    method = ck.method("biaslens")
    off = method.run(model, _config(behaviour=None))
    on = method.run(model, _config(behaviour=None, remove_mean_cav=True))
    assert off.settings["remove_mean_cav"] is False and on.settings["remove_mean_cav"] is True
    assert [r.bias for r in off.target("T").layers] != [r.bias for r in on.target("T").layers]


def test_disjoint_negatives_use_separate_slices(planted_model) -> None:
    """Disjoint negatives give each concept its own sentences, recorded by fingerprint."""
    model = planted_model[0]
    result = ck.method("biaslens").run(model, _config(behaviour=None, negatives="disjoint"))
    assert result.settings["negatives"] == "disjoint"
    assert len(result.settings["negative_fingerprints"]) == 3
    shared = ck.method("biaslens").run(model, _config(behaviour=None))
    assert len(shared.settings["negative_fingerprints"]) == 1


def test_low_accuracy_layers_are_flagged_not_averaged(planted_model) -> None:
    """With an unreachable accuracy threshold every layer is flagged and the bias is None."""
    model = planted_model[0]
    result = ck.method("biaslens").run(model, _config(behaviour=None, min_probe_accuracy=1.0, targets=[{"name": "T", "examples": _neutral(40, 9)}]))
    row = result.target("T")
    assert row.bias is None and row.kept_layers == []
    assert "n/a" in result.summary()


def test_results_are_stored_with_provenance(planted_model, tmp_path) -> None:
    """Each fitted concept becomes one record of per-layer CAVs with the method's provenance."""
    model = planted_model[0]
    store = ck.open_store(tmp_path / "store")
    result = ck.method("biaslens").run(model, _config(behaviour=None), store=store)
    assert len(result.record_ids) == 3
    record = store.get(result.record_ids[0])
    assert record.method.name == "biaslens"
    assert store.tensors(record.id)["cavs"].shape == (model.n_layers, model.d_model)
    assert "biaslens" in record.tags


def test_bad_inputs_are_refused_before_compute(planted_model) -> None:
    """One reference, out-of-range layers, a multi-token behaviour word and an SAE option without SAEs are clear errors."""
    model = planted_model[0]
    method = ck.method("biaslens")
    with pytest.raises(ck.ConceptkitError, match="two or more reference"):
        method.run(model, _config(references=[{"name": "pos", "examples": _sentences("P", 10, 3)}]))
    with pytest.raises(ck.ConceptkitError, match="out of range"):
        method.run(model, _config(layers=[0, 7]))
    with pytest.raises(ck.ConceptkitError, match="not a single token"):
        method.run(model, _config(behaviour={"positive_tokens": ["XY"], "negative_tokens": ["Y"]}))
    with pytest.raises(ck.ConceptkitError, match="needs an SAE"):
        method.run(model, _config(sae_option="a"))


def test_cavs_agree_across_backends() -> None:
    """The same concept sets give the same CAVs through TransformerLens and nnsight (cosine > 0.9999)."""
    method = ck.method("biaslens")
    cfg = _config(behaviour=None, targets=[{"name": "T", "examples": _sentences("T", 40, 1)}])
    results = {b: method.run(ck.load_model("tiny-llama", backend=b), cfg) for b in ("transformer_lens", "nnsight")}
    a, b = results["transformer_lens"].cav_tensors, results["nnsight"].cav_tensors
    for concept in a:
        cos = torch.nn.functional.cosine_similarity(a[concept].double(), b[concept].double(), dim=-1)
        assert float(cos.min()) > 0.9999, (concept, cos)
