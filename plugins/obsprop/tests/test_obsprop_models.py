"""ObsProp on tiny random models through the real backends: identities, layouts, parity, errors, store."""

from __future__ import annotations

import warnings

import pytest
import torch

import conceptkit as ck
from conceptkit_obsprop import pullback as pb
from conceptkit_obsprop.circuit import Circuit, PostLNError
from conceptkit_obsprop.config import Node, Observable
from conceptkit_obsprop.features import final_feature, path_feature
from conceptkit_obsprop.observables import MultiTokenWarning, observable_vector
from conceptkit_obsprop.patching import Patcher
from conceptkit_obsprop.scoring import chunks, score_at, score_tokens
from conceptkit_obsprop.trace import _pattern_by_one_hot_values, trace

_MODELS: dict[tuple[str, str], ck.Model] = {}
POS, NEG = "the cat saw a", "the dog saw a"  # equal length under the character tokenizer


def model(name: str, backend: str) -> ck.Model:
    if (name, backend) not in _MODELS:
        _MODELS[(name, backend)] = ck.load_model(name, backend=backend)
    return _MODELS[(name, backend)]


def _n(m: ck.Model, pos: str = "a", neg: str = "b") -> torch.Tensor:
    return observable_vector(Observable(positive_tokens=[pos], negative_tokens=[neg]), m.tokenizer, m.weights.W_U.shape[1])


CONFIG = {
    "observables": [{"name": "a-b", "positive_tokens": ["a"], "negative_tokens": ["b"]},
                    {"name": "c-d", "positive_tokens": ["c"], "negative_tokens": ["d"]}],
    "prompt_pair": [POS, NEG],
    "ln_mode": "tangent",
    "node_norm": "approx",
    "paths": [[{"layer": 1, "sublayer": "attn", "head": 2, "token": -1}, {"layer": 0, "sublayer": "mlp", "token": -1}],
              [{"layer": 1, "sublayer": "attn", "head": -1, "token": -2}]],
    "path_search": {"max_length": 2, "num_paths": 4},
}


def test_pure_ov_identity_through_the_model_with_the_pattern_frozen():
    """§6.1 on tiny-llama (TL, GQA): perturbing ln1's output at source s by eps*v, pattern frozen, moves
    y·(head h's output at dst) by eps*A[dst,s]*v·(W_V[h//g] W_O[h] y)."""
    m = model("tiny-llama", "transformer_lens")
    c = Circuit(m)
    batch = m.tokenize([POS])
    layer, h, s, dst, eps = 1, 3, 4, 9, 1e-2
    g = torch.Generator().manual_seed(0)
    v, y = torch.randn(c.d, generator=g), torch.randn(c.d, generator=g)
    seen: dict[str, torch.Tensor] = {}

    def run(perturb: bool) -> torch.Tensor:
        def keep_pattern(p: torch.Tensor) -> torch.Tensor:
            if "A" not in seen:
                seen["A"] = p.detach().clone()
            return seen["A"]

        def shift(x: torch.Tensor) -> torch.Tensor | None:
            if not perturb:
                return None
            x = x.clone()
            x[0, s] += eps * v
            return x

        def read(z: torch.Tensor) -> None:
            seen["z"] = z.detach().clone()

        handles = [m.add_hook(f"blocks.{layer}.attn.hook_pattern", keep_pattern), m.add_hook(f"blocks.{layer}.ln1.hook_out", shift),
                   m.add_hook(f"blocks.{layer}.attn.hook_z", read)]
        try:
            m.run(batch)
        finally:
            for hd in handles:
                hd.remove()
        return seen["z"][0, dst, h] @ c.W_O(layer)[h]

    change = (run(True) - run(False)) @ y
    predicted = eps * seen["A"][0, h, dst, s] * (v @ pb.ov_pullback(c.W_V(layer), c.W_O(layer), y, h))
    assert torch.allclose(change, predicted, rtol=1e-3, atol=1e-7), (change, predicted)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_mlp_and_norm_pullbacks_match_autograd_through_the_hf_modules(name):
    """§6.2: the MLP tangent and the exact norm pull-back equal autograd through the model's own modules."""
    m = model(name, "nnsight")
    c = Circuit(m, dtype=torch.float32)
    hf = m.hf  # the test reaches into the HF module tree on purpose: an independent reference
    block = hf.model.layers[1] if name == "tiny-llama" else hf.transformer.h[1]
    mlp_mod = block.mlp
    ln2 = block.post_attention_layernorm if name == "tiny-llama" else block.ln_2
    pos, neg = trace(m, POS, with_pattern=False), trace(m, NEG, with_pattern=False)
    y = torch.randn(c.d, generator=torch.Generator().manual_seed(1))
    x_pos, x_neg = c.norm("ln2", 1, pos.resid_mid[1, -1]), c.norm("ln2", 1, neg.resid_mid[1, -1])
    assert torch.allclose(x_pos, ln2(pos.resid_mid[1, -1]), atol=1e-5)
    y_new, x_star, _ = pb.mlp_tangent_pullback(lambda v: c.mlp(1, v), y, x_pos, x_neg)
    xg = x_star.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(y @ mlp_mod(xg), xg)
    assert torch.allclose(y_new, ref, atol=1e-5, rtol=1e-4)
    x = pos.resid_mid[1, 3]
    got = c.pull_norm("ln2", 1, y, x, "exact")
    xg = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(y @ ln2(xg), xg)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)


def test_planted_head_is_ranked_first_and_its_feature_is_the_planted_direction():
    """§6.4 through the method: plant OV(1, 0) = u ⊗ W_U n (others shrunk); head 1.0 ranks first, cos(y, u) ~ 1."""
    m = model("tiny-llama", "nnsight")
    w = m.weights
    n = _n(m)
    target = (w.W_U @ n).detach()
    u = torch.randn(w.W_U.shape[0], generator=torch.Generator().manual_seed(2))
    d_h = w.W_V(1).shape[-1]

    def plant_v(weight: torch.Tensor) -> torch.Tensor:  # HF v_proj [H_kv*d_h, d]: kv head 0 reads u into dim 0
        weight[:d_h] = 0
        weight[0] = u
        return weight

    def plant_o(weight: torch.Tensor) -> torch.Tensor:  # HF o_proj [d, H*d_h]: head 0 writes dim 0 along W_U n
        weight *= 0.01
        weight[:, :d_h] = 0
        weight[:, 0] = target / target.norm()
        return weight

    with w.edit("v", 1, plant_v), w.edit("o", 1, plant_o):
        result = ck.method("obsprop").run(m, {"observables": [{"positive_tokens": ["a"], "negative_tokens": ["b"]}],
                                              "ln_mode": "none", "top_k": 3})
        top = result.top_heads[result.observables[0]][0]
        assert (top["layer"], top["head"]) == (1, 0)
        feature = result.vector(result.observables[0], "attn1.0@-1")
        assert pb.cosine(feature.double(), u.double()) > 0.9999


def test_path_patching_head_scores_equal_a_real_patched_forward():
    """Patching every head's OV input at the last layer (pattern frozen) moves y·resid_mid[last] by minus
    the summed head scores; per-source length-1 scores add up to each head's score."""
    m = model("tiny-llama", "transformer_lens")
    c = Circuit(m)
    pos, neg = trace(m, POS), trace(m, NEG)
    n = _n(m)
    y = final_feature(c, n, "approx", pos)
    patcher = Patcher(c, pos, neg, y)
    L = c.n_layers - 1
    neg_ln1 = m.capture([NEG], [f"blocks.{L}.ln1.hook_out"], reduce="all")[f"blocks.{L}.ln1.hook_out"]
    clean = m.capture([POS], [f"blocks.{L}.hook_resid_mid"], reduce="all")[f"blocks.{L}.hook_resid_mid"][-1]
    frozen: dict[str, torch.Tensor] = {}
    got: dict[str, torch.Tensor] = {}

    def keep(p: torch.Tensor) -> torch.Tensor:
        return frozen.setdefault("A", p.detach().clone())

    hooks = [m.add_hook(f"blocks.{L}.attn.hook_pattern", keep)]
    try:
        m.run([POS])  # records the clean pattern
        hooks.append(m.add_hook(f"blocks.{L}.ln1.hook_out", lambda x: neg_ln1.unsqueeze(0).to(x.dtype)))
        hooks.append(m.add_hook(f"blocks.{L}.hook_resid_mid", lambda x: got.__setitem__("mid", x.detach()[0, -1].clone())))
        m.run([POS])
    finally:
        for hd in hooks:
            hd.remove()
    scores = patcher.head_scores()
    assert torch.allclose(scores[L].sum(), -(got["mid"] - clean) @ y, atol=1e-5, rtol=1e-4)
    found, _ = patcher.extend([])
    per_head = torch.zeros(c.n_heads)
    for p in found:
        if p.comps[0].sublayer == "attn" and p.comps[0].layer == L:
            per_head[p.comps[0].head] += p.contrib
    assert torch.allclose(per_head, scores[L].float(), atol=1e-5)


def test_transformer_lens_and_nnsight_give_the_same_results():
    """Identical features, rankings, couplings and path-patching scores (≤ 1e-5) through both backends."""
    a = ck.method("obsprop").run(model("tiny-llama", "transformer_lens"), CONFIG)
    b = ck.method("obsprop").run(model("tiny-llama", "nnsight"), CONFIG)
    assert a.vectors.keys() == b.vectors.keys() and len(a.vectors) == 4
    for key in a.vectors:
        assert torch.allclose(torch.tensor(a.vectors[key]), torch.tensor(b.vectors[key]), atol=1e-5), key
    for o in a.observables:
        assert torch.allclose(torch.tensor(a.head_norms[o]), torch.tensor(b.head_norms[o]), atol=1e-5)
        assert torch.allclose(torch.tensor(a.head_norms_ln[o]), torch.tensor(b.head_norms_ln[o]), atol=1e-5)
        assert torch.allclose(torch.tensor(a.patching[o]["head_scores"]), torch.tensor(b.patching[o]["head_scores"]), atol=1e-5)
        ca = [q["contrib"] for level in a.patching[o]["paths"] for q in level]
        cb = [q["contrib"] for level in b.patching[o]["paths"] for q in level]
        assert torch.allclose(torch.tensor(ca), torch.tensor(cb), atol=1e-5)
    for path in a.coupling:
        assert torch.allclose(torch.tensor(a.coupling[path]["coupling"]), torch.tensor(b.coupling[path]["coupling"]), atol=1e-5)


def test_attention_pattern_read_through_one_hot_values_equals_hook_pattern():
    """The backend-neutral pattern read (values replaced by one-hot rows) equals the bridge's hook_pattern."""
    m = model("tiny-llama", "transformer_lens")
    batch = m.tokenize([POS])
    got: dict[str, torch.Tensor] = {}
    with m.add_hook("blocks.0.attn.hook_pattern", lambda p: got.__setitem__("A", p.detach()[0].clone())):
        m.run(batch)
    assert torch.allclose(_pattern_by_one_hot_values(m, batch, 0), got["A"], atol=1e-6)


def test_post_ln_models_are_refused():
    """A post-LN model (BERT) is refused by name before any compute."""
    with pytest.raises(PostLNError, match="post-LN"):
        ck.method("obsprop").run(model("tiny-bert", "nnsight"), {"observables": [{"positive_tokens": ["a"]}]})


def test_fake_mlp_on_a_non_gated_model_is_w_in_w_out_y_and_is_refused_when_gated():
    """mlp_mode='fake' on GPT-2 gives c_fc.weight @ c_proj.weight @ W_U n (Conv1D layout); on Llama it is refused."""
    m = model("tiny-gpt2", "nnsight")
    c = Circuit(m)
    n = _n(m)
    feat = path_feature(c, final_feature(c, n, "none"), [Node(layer=1, sublayer="mlp", token=-1)], mlp_mode="fake", normalize=False)
    blk = m.hf.transformer.h[1].mlp
    expected = blk.c_fc.weight @ (blk.c_proj.weight @ (m.hf.lm_head.weight.T @ n))
    assert torch.allclose(feat.y, expected.detach(), atol=1e-5, rtol=1e-4)
    with pytest.raises(ck.ConceptkitError, match="gated"):
        ck.method("obsprop").run(model("tiny-llama", "nnsight"), {
            "observables": [{"positive_tokens": ["a"]}], "mlp_mode": "fake", "paths": [[{"layer": 1, "sublayer": "mlp"}]]})


def test_multi_token_words_warn_and_use_the_first_token():
    """A word that is several tokens warns and stands for its first token (the reference convention)."""
    m = model("tiny-llama", "nnsight")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = observable_vector(Observable(positive_tokens=["ab"], negative_tokens=["c"]), m.tokenizer, 100)
    assert any(issubclass(x.category, MultiTokenWarning) for x in caught)
    assert n[m.tokenizer.encode("a", add_special_tokens=False)[0]] == 1.0


def test_results_are_stored_with_provenance_and_score_like_captures(ck_store, tmp_path):
    """Features become vector records (site, token, path, observable, modes, prompts); scores are y·x at the site."""
    m = model("tiny-llama", "nnsight")
    result = ck.method("obsprop").run(m, CONFIG, store=ck_store)
    assert len(result.record_ids) == 4
    record, tensors = ck_store.load(result.record_ids[0])
    assert record.kind == "vector" and record.site == "blocks.0.hook_resid_mid" and record.reduction == [-1]
    assert record.metrics["path"] == "attn1.2@-1 <= mlp0@-1" and record.metrics["ln_mode"] == "tangent"
    assert record.metrics["linearisation_prompts"] == [POS, NEG] and record.method.distribution == "conceptkit-obsprop"
    assert torch.allclose(tensors["feature"], result.vector(record.metrics["observable"], record.metrics["path"]))
    assert result.plot(tmp_path / "norms.png").exists()
    assert "top heads" in result.summary()

    texts = ["hello there", "a cat", "some more words here"]
    key = f"{record.metrics['observable']}|{record.metrics['path']}"
    from_result = result.score(m, texts, [key], chunk=2)
    site_acts = m.capture(texts, [record.site], reduce="all")[record.site]
    assert torch.allclose(from_result[:, 0], site_acts @ tensors["feature"], atol=1e-5)

    c = Circuit(m)
    feat = path_feature(c, final_feature(c, _n(m), "approx"), [Node(layer=1, sublayer="attn", head=0)])
    scores = score_tokens(m, [feat], chunks(texts, 2), batch_size=2)
    acts = m.capture(texts, [feat.site], reduce="all")[feat.site]
    assert torch.allclose(scores[:, 0], acts @ feat.y, atol=1e-5)
    at = score_at(m, [feat], texts, -1)
    last = m.capture(texts, [feat.site], reduce="last")[feat.site]
    assert torch.allclose(at[:, 0], last @ feat.y, atol=1e-5)


def test_exact_final_norm_pullback_is_the_gradient_of_the_core_logit_functional():
    """Pulling W_U n back through the final norm exactly equals model.grad of the core's LogitFunctional
    (the observable as an objective) at the final residual, on both backends."""
    from conceptkit_obsprop.observables import as_objective

    for backend in ("nnsight", "transformer_lens"):
        m = model("tiny-llama", backend)
        c = Circuit(m)
        n = _n(m)
        x = trace(m, POS, with_pattern=False).final_in[-1]
        g = m.grad([POS], f"blocks.{c.n_layers - 1}.hook_resid_post", as_objective(n))[0]
        assert torch.allclose(c.pull_norm("ln_final", None, c.W_U @ n, x, "exact"), g, atol=1e-5, rtol=1e-4), backend


def test_example_config_validates():
    """docs/examples/obsprop.yaml validates against the method's Config schema."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[3] / "docs" / "examples" / "obsprop.yaml"
    ck.api.validate_config(ck.method("obsprop").Config, yaml.safe_load(path.read_text()), "obsprop")
