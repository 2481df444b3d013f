"""ObsProp on SmolLM2-135M-Instruct (slow): GQA pairing on real weights, the norm approximation, the prompts."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit_obsprop import pullback as pb
from conceptkit_obsprop.circuit import Circuit
from conceptkit_obsprop.config import Observable
from conceptkit_obsprop.observables import observable_vector
from conceptkit_obsprop.prompts import prompts
from conceptkit_obsprop.trace import trace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return ck.load_model("smollm2-135m", backend="nnsight")


def test_gqa_pairing_matches_hf_slices(smollm2):
    """§6.6: the pull-back through query head h equals v_proj[kv(h)]ᵀ o_proj[:, h]ᵀ y with kv(h) = h // 3, for every head of three layers."""
    c = Circuit(smollm2)
    assert (c.n_heads, c.n_kv, c.group) == (9, 3, 3)
    n = observable_vector(Observable(positive_tokens=[" she"], negative_tokens=[" he"]), smollm2.tokenizer, c.W_U.shape[1])
    y = smollm2.hf.lm_head.weight.T @ n
    d_h = 64
    for layer in (0, 15, 29):
        attn = smollm2.hf.model.layers[layer].self_attn
        feats = c.head_features(layer, c.W_U @ n)
        for h in range(9):
            kv = h // 3
            W_val = attn.v_proj.weight[kv * d_h:(kv + 1) * d_h, :]  # [d_h, d]
            W_out = attn.o_proj.weight[:, h * d_h:(h + 1) * d_h]  # [d, d_h]
            expected = (W_val.T @ (W_out.T @ y)).detach()
            assert torch.allclose(feats[h], expected, atol=1e-5, rtol=1e-4), (layer, h)
            assert torch.allclose(pb.ov_pullback(c.W_V(layer), c.W_O(layer), c.W_U @ n, h), expected, atol=1e-5, rtol=1e-4)


def test_final_norm_approximation_is_close_to_the_exact_gradient(smollm2):
    """§6.2 (norm) on a real model: cos(sqrt(d)/|x| gamma ⊙ y, exact gradient of y·RMSNorm(x)) > 0.99 at the
    final residual of the shipped subject prompts (first template, 5 names of each gender)."""
    c = Circuit(smollm2)
    n = observable_vector(Observable(positive_tokens=[" she"], negative_tokens=[" he"]), smollm2.tokenizer, c.W_U.shape[1])
    y = c.W_U @ n
    ps = prompts(smollm2.tokenizer, "subject", "female", 0)[:5] + prompts(smollm2.tokenizer, "subject", "male", 0)[:5]
    cosines = []
    for p in ps:
        x = trace(smollm2, p.text, with_pattern=False).final_in[-1]
        cosines.append(pb.cosine(c.pull_norm("ln_final", None, y, x, "approx"), c.pull_norm("ln_final", None, y, x, "exact")))
    print("cosines", [round(v, 6) for v in cosines])
    assert min(cosines) > 0.99
