"""ROCR on SmolLM2-135M-Instruct: what the spec (§7.3) and the issue claim, on one entity.

Statistics come from 400 of the shipped neutral sentences (not the default corpus) to keep the
module fast; the full measurement over all entities is ``scripts/measure_smollm2.py``.
"""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit import concepts
from conceptkit_rocr.edit import compute_edit, read_at_subject, resid_site
from conceptkit_rocr.evaluate import entity, forms_data
from conceptkit_rocr.scoring import kl_per_token, score_answers
from conceptkit_rocr.stats import layer_stats

pytestmark = pytest.mark.slow

TARGET, HARMLESS, LAYERS = "Charles Darwin", "John Smith", [4, 5, 6]


@pytest.fixture(scope="module")
def setup():
    model = ck.load_model("smollm2-135m", backend="transformer_lens")
    texts = list(concepts.load("neutral").examples)[:400]
    stats = layer_stats(model, LAYERS, texts, "neutral[:400]")
    edit = compute_edit(model, TARGET, HARMLESS, LAYERS, {l: s.projector.P for l, s in stats.items()})
    return model, edit


def test_hidden_state_moves_to_the_harmless_concept(setup):
    """After the edit the target's block-6 state in the bare prompt is closer (cosine) to z than before."""
    model, edit = setup
    z = read_at_subject(model, edit.info["templates"][:1], HARMLESS, resid_site(6))[0]
    before = read_at_subject(model, ["{}"], TARGET, resid_site(6))[0]
    with edit.apply(model):
        after = read_at_subject(model, ["{}"], TARGET, resid_site(6))[0]
    cos = torch.nn.functional.cosine_similarity
    assert cos(after, z, dim=0) > cos(before, z, dim=0) + 0.1


def test_fact_probability_drops_in_unseen_forms(setup):
    """The answer's probability falls in the paraphrased forms, which the edit never saw."""
    model, edit = setup
    forms = entity(TARGET)["forms"]
    items = [(forms[f]["prompt"], forms[f]["answer"]) for f in ("paraphrase_1", "paraphrase_2")]
    before = score_answers(model, items)
    with edit.apply(model):
        after = score_answers(model, items)
    for b, a in zip(before, after):
        assert a.prob < 0.5 * b.prob


def test_unrelated_text_kl_is_small_and_removal_is_exact(setup):
    """KL on unrelated text is <= 0.01 nats/token, and removing the edit restores W_out bit for bit."""
    model, edit = setup
    W = [model.weights.W_out(l).detach().clone() for l in LAYERS]
    assert kl_per_token(model, forms_data()["unrelated"][:10], lambda: edit.apply(model)) <= 0.01
    for l, w in zip(LAYERS, W):
        assert torch.equal(model.weights.W_out(l), w)
