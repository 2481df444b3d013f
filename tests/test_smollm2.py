"""Claims on the real embedded SmolLM2-135M-Instruct, through both backends."""

from __future__ import annotations

import pytest
import torch

from conceptkit import interventions as iv
from conceptkit import objectives as ob

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "I really enjoyed this film because", "Water boils at", "Hi"]


@pytest.fixture(scope="module")
def pair():
    from tests.conftest import load_cached

    return load_cached("smollm2-135m", "transformer_lens"), load_cached("smollm2-135m", "nnsight")


def test_paris_is_the_top_token_on_both_backends(pair):
    """'The capital of France is' -> ' Paris' through TransformerLens and nnsight."""
    for model in pair:
        logits = model.run(["The capital of France is"])
        assert model.tokenizer.decode(logits.argmax(-1)) == " Paris", model


def test_every_canonical_site_agrees_across_backends(pair):
    """All canonical sites (30 layers; attention patterns and norm scales included) give the same
    activations on both backends (<= 1e-4, plus float32 ulps on the massive first-token values)."""
    tl, nn = pair
    # 17 per block (14 + attn.hook_pattern, ln1/ln2.hook_scale) and 4 global (ln_final.hook_scale)
    assert tl.sites() == nn.sites() and len(tl.sites()) == 30 * 17 + 4
    for side in ("left", "right"):
        a = tl.capture(PROMPTS, tl.sites(), reduce="all", padding_side=side)
        b = nn.capture(PROMPTS, nn.sites(), reduce="all", padding_side=side)
        bad = [s for s in tl.sites() if not close(a[s], b[s])]
        assert not bad, (side, bad[:5], max((a[s] - b[s]).abs().max().item() for s in bad))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """<= 1e-4 absolute, plus a few float32 ulps on SmolLM2's massive first-token activations
    (~24,000 in the residual stream, where one ulp is 0.002: hook_points.md §6.6)."""
    return torch.allclose(a, b, atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("backend_index", [0, 1])
def test_batched_equals_one_by_one_on_the_real_model(pair, backend_index):
    """Capture, run with interventions and grad: batched (left/right padding) == one by one."""
    model = pair[backend_index]
    site = "blocks.15.hook_resid_post"
    torch.manual_seed(0)
    steer = [iv.Add(site="blocks.10.hook_resid_post", vector=torch.randn(576), coeff=4.0, positions="all")]
    objective = ob.LogitDiff(positive=" Paris", negative=" London")
    alone_acts = torch.cat([model.capture([p], [site], reduce="mean")[site] for p in PROMPTS])
    last_acts = torch.cat([model.capture([p], [site], reduce="last")[site] for p in PROMPTS])
    alone_run = torch.cat([model.run([p], steer) for p in PROMPTS])
    alone_grad = torch.cat([model.grad([p], site, objective) for p in PROMPTS])
    for side in ("left", "right"):
        assert close(model.capture(PROMPTS, [site], reduce="mean", padding_side=side)[site], alone_acts)
        assert close(model.capture(PROMPTS, [site], reduce="last", padding_side=side)[site], last_acts)
        assert close(model.run(PROMPTS, steer, padding_side=side), alone_run)
        assert close(model.grad(PROMPTS, site, objective, padding_side=side), alone_grad)


def test_steering_changes_generation_and_zero_steering_does_not(pair):
    """Greedy chat-free generation answers Paris; a zero vector changes nothing."""
    tl, _ = pair
    text = tl.generate(["The capital of France is"], max_new_tokens=3)[0]
    assert text.startswith(" Paris")
    zero = [iv.Add(site="blocks.12.hook_resid_post", vector=torch.zeros(576))]
    assert tl.generate(["The capital of France is"], zero, max_new_tokens=3)[0] == text
