"""Stages on a tiny model with a planted concept-vector "SAE": steering identities, the planted
end-to-end case, and TransformerLens/nnsight parity."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit_activation_reasoning import detection as det
from conceptkit_activation_reasoning.dictionary import vector_dictionary
from conceptkit_activation_reasoning.engine import ActivationReasoner, ARSettings
from conceptkit_activation_reasoning.steering import ARSteer, concept_direction
from conceptkit_activation_reasoning.thresholds import best_threshold

SITE = "blocks.0.hook_resid_post"
NAMES = ["Bridge", "San Francisco", "United States", "Golden Gate Bridge"]
RULES = {("Bridge", "San Francisco", "United States"): "Golden Gate Bridge"}
PROMPTS = ["abcdefgh", "hgfedcba"]
SCALE = 60.0  # planted magnitude; unplanted scores stay below SCALE / 2 (checked)


def _planted() -> tuple[torch.Tensor, None]:
    """Orthonormal concept directions U [4, 64] (seeded)."""
    q, _ = torch.linalg.qr(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)))
    return q.T.contiguous(), None


class RowAdd(ck.Add):
    """An Add restricted to one batch row (planting differs per prompt)."""

    row: int = 0

    def apply(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.clone()
        keep = torch.zeros_like(m)
        keep[self.row] = True
        return super().apply(x, m & keep)


def _plants(U: torch.Tensor) -> list:
    out = []
    for row, order in ((0, [0, 1, 2]), (1, [2, 1, 0])):
        for pos, c in zip((1, 3, 5), order):
            out.append(RowAdd(site=SITE, vector=SCALE * U[c], positions=[pos], row=row))
    return out


def _reasoner(model, mode: str = "forward_chaining", **kw) -> tuple[ActivationReasoner, torch.Tensor]:  # type: ignore[no-untyped-def]
    U, _ = _planted()
    d = vector_dictionary(NAMES, U, site=SITE)
    d.thresholds = torch.full((4,), SCALE / 2)
    return ActivationReasoner(model, d, RULES, settings=ARSettings(rules_mode=mode, **kw)), U


@pytest.fixture(scope="module")
def tl():  # type: ignore[no-untyped-def]
    return ck.load_model("tiny-llama", backend="transformer_lens")


def test_planted_detection_reasoning_and_delta(tl) -> None:  # type: ignore[no-untyped-def]
    """Planted concepts are detected exactly where planted; the rule fires; the delta is alpha*||h_T|| along U[3]."""
    ar, U = _reasoner(tl)
    plants = _plants(U)
    clean = ar.detect(PROMPTS)
    assert all(float(d.scores.max()) < SCALE / 2 for d in clean) and not any(d.props.any() for d in clean)
    out = ar.generate(PROMPTS, max_new_tokens=3, interventions=plants)
    assert out.detections[0].detected() == ["Bridge", "San Francisco", "United States"]
    assert out.detections[1].detected() == ["United States", "San Francisco", "Bridge"]
    assert [torch.nonzero(d.props)[:, 0].tolist() for d in out.detections] == [[1, 3, 5], [1, 3, 5]]
    assert [i.concluded for i in out.inferences] == [["Golden Gate Bridge"]] * 2 and out.steered == [["Golden Gate Bridge"]] * 2
    h = ar.activations(PROMPTS, plants)
    for b in range(2):
        delta = out.steps[0].delta[b]
        hT = h[b][1][-1]
        assert delta.norm().item() == pytest.approx(0.5 * hT.norm().item(), rel=1e-5)
        assert torch.nn.functional.cosine_similarity(delta, U[3], dim=0).item() == pytest.approx(1.0, abs=1e-5)
    assert len(out.steps) == 3 and all(s.delta.norm(dim=1).min() > 0 for s in out.steps)  # every step while active


def test_legacy_order_blocks_the_reversed_prompt(tl) -> None:  # type: ignore[no-untyped-def]
    """legacy matching fires only for the prompt with the body in order; the other row gets a zero delta."""
    ar, U = _reasoner(tl, mode="legacy")
    out = ar.generate(PROMPTS, max_new_tokens=2, interventions=_plants(U))
    assert [i.concluded for i in out.inferences] == [["Golden Gate Bridge"], []]
    assert all(s.delta[0].norm() > 0 and s.delta[1].abs().max() == 0 for s in out.steps)


def test_zero_strength_is_bitwise_identity(tl) -> None:  # type: ignore[no-untyped-def]
    """alpha = 0 leaves logits and generated tokens bitwise unchanged."""
    steer = ARSteer(site=SITE, direction=torch.randn(64), alpha=0.0, positions="last")
    assert torch.equal(tl.run(PROMPTS, [steer], reduce="last"), tl.run(PROMPTS, reduce="last"))
    ar, U = _reasoner(tl, alpha=0.0)
    plain = tl.generate(PROMPTS, max_new_tokens=3, interventions=_plants(U))
    out = ar.generate(PROMPTS, max_new_tokens=3, interventions=_plants(U))
    assert out.texts == list(plain) and all(s.delta.abs().max() == 0 for s in out.steps)


def test_only_the_last_position_changes(tl) -> None:  # type: ignore[no-untyped-def]
    """ARSteer at 'last' changes only the last row at the site, by alpha*||h_T|| along the direction."""
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    steer = ARSteer(site=SITE, direction=v * 7.0, alpha=0.3, positions="last")
    a = tl.capture(PROMPTS[:1], SITE, reduce="all", progress=False)[SITE]
    b = tl.capture(PROMPTS[:1], SITE, reduce="all", progress=False, interventions=[steer])[SITE]
    assert torch.equal(a[:-1], b[:-1])
    d = b[-1] - a[-1]
    assert d.norm().item() == pytest.approx(0.3 * a[-1].norm().item(), rel=1e-5)
    assert torch.nn.functional.cosine_similarity(d, v, dim=0).item() == pytest.approx(1.0, abs=1e-5)


def test_sum_shift_of_orthogonal_rows_and_row_norm_invariance() -> None:
    """uniform sum_shift of K orthogonal unit rows is ∝ their sum; rescaling decoder rows leaves the direction unchanged."""
    q, _ = torch.linalg.qr(torch.randn(16, 4, generator=torch.Generator().manual_seed(2)))
    rows = q.T
    s = concept_direction(rows, weighting="uniform")
    torch.testing.assert_close(s / s.norm(), rows.sum(0) / rows.sum(0).norm())
    scaled = rows * torch.tensor([[3.0], [0.5], [10.0], [1.0]])
    torch.testing.assert_close(concept_direction(scaled), concept_direction(rows))


def test_backend_parity_of_masks_and_deltas(tl) -> None:  # type: ignore[no-untyped-def]
    """Detection masks and applied deltas agree between TransformerLens and nnsight (within 1e-4)."""
    nn = ck.load_model("tiny-llama", backend="nnsight")
    outs = []
    for model in (tl, nn):
        ar, U = _reasoner(model)
        outs.append(ar.generate(PROMPTS, max_new_tokens=2, interventions=_plants(U)))
    a, b = outs
    for x, y in zip(a.detections, b.detections):
        assert torch.equal(x.props, y.props)
        torch.testing.assert_close(x.scores, y.scores, atol=1e-4, rtol=0)
    for x, y in zip(a.steps, b.steps):
        torch.testing.assert_close(x.delta, y.delta, atol=1e-4, rtol=0)
    assert a.texts == b.texts


def test_output_scope_reasons_over_generated_tokens(tl) -> None:  # type: ignore[no-untyped-def]
    """scope=output: prompt propositions are ignored; propositions on a generated token fire the rule and steer from the next forward on."""
    ar, U = _reasoner(tl, scope="output", allow_multi=True, top_output=3)
    everywhere = ck.Add(site=SITE, vector=SCALE * (U[0] + U[1] + U[2]), positions="all")
    out = ar.generate(PROMPTS[:1], max_new_tokens=4, interventions=[everywhere])
    assert out.steps[0].concluded == [[]] and out.steps[0].delta.abs().max() == 0
    assert out.steps[1].detected == [["Bridge", "San Francisco", "United States"]]
    assert out.steps[1].concluded == [["Golden Gate Bridge"]] and out.steps[1].delta.abs().max() == 0
    assert all(s.delta.norm() > 0 for s in out.steps[2:])


def test_sae_dictionary_built_from_words_on_a_tiny_model(tl) -> None:  # type: ignore[no-untyped-def]
    """build_dictionary with an SAE: word labels, top-k latents by mean difference, calibrated strict thresholds; tree kind too."""
    from conceptkit_activation_reasoning.build import build_dictionary

    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 32, generator=g) / 8
    sae = ck.SAE(W_enc=W, b_enc=torch.zeros(32), W_dec=W.T.contiguous(), b_dec=torch.zeros(64), site=SITE)
    texts = ["a red cat", "the red dog", "blue sky", "a blue cup", "red and blue", "plain text"]
    d, enc, data = build_dictionary(tl, SITE, texts, ["red", "blue"], sae=sae, k=4)
    assert enc is sae and d.indices.shape == (2, 4) and d.kind == "top_k" and d.source == "sae"
    assert data["labels"][..., 0].sum() == 3 and data["labels"][..., 1].sum() == 3  # last token of each word match
    a = det.scores(data["latents"], d)
    for c in range(2):
        want = best_threshold(a[..., c][data["mask"]], data["labels"][..., c][data["mask"]])[0]
        assert d.thresholds[c].item() == pytest.approx(want)
    tree, _, data = build_dictionary(tl, SITE, texts, ["red", "blue"], sae=sae, kind="tree", depth=2, seed=1)
    p = det.scores(data["latents"], tree)
    assert tree.kind == "tree" and ((p >= 0) & (p <= 1)).all()


def test_recomputing_backend_steps_like_the_cached_one() -> None:
    """On a model without a KV cache (tiny-tl-native) every step still gets alpha*||h|| along the concluded head's direction."""
    model = ck.load_model("tiny-tl-native", backend="transformer_lens")
    d_model = model.d_model
    q, _ = torch.linalg.qr(torch.randn(d_model, 4, generator=torch.Generator().manual_seed(0)))
    U = q.T.contiguous()
    d = vector_dictionary(NAMES, U, site=SITE)
    d.thresholds = torch.full((4,), SCALE / 2)
    ar = ActivationReasoner(model, d, RULES, settings=ARSettings(top_output=3, allow_multi=True))
    plant = ck.Add(site=SITE, vector=SCALE * (U[0] + U[1] + U[2]), positions=[1])
    out = ar.generate(PROMPTS[:1], max_new_tokens=3, interventions=[plant])
    assert out.inferences[0].concluded == ["Golden Gate Bridge"] and len(out.steps) == 3
    for s in out.steps:
        assert torch.nn.functional.cosine_similarity(s.delta[0], U[3], dim=0).item() == pytest.approx(1.0, abs=1e-5)
