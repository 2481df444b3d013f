"""Sites beyond the residual stream: virtual sites, attention patterns, the norms' scales."""

from __future__ import annotations

import pytest
import torch

from conceptkit import interventions as iv
from conceptkit.activations import cat_ragged
from conceptkit import objectives as ob
from conceptkit.errors import InputError
from conceptkit.testing import assert_no_hook_leak

TEXTS = ["hello world, a longer one here", "hi", "medium sized text", "z"]
BACKENDS = ["transformer_lens", "nnsight"]
BASE = "blocks.0.hook_resid_post"
DOUBLE = BASE + ".hook_double"


class Doubled:
    """A toy provider: ``<base>.hook_double`` is ``2 * x``; a replacement ``y`` writes back ``y / 2``."""

    base_site = BASE

    def __init__(self) -> None:
        self.calls = 0

    def names(self) -> list[str]:
        return [DOUBLE, BASE + ".hook_neg"]

    def run(self, x, taps):  # type: ignore[no-untyped-def]
        self.calls += 1
        out = None
        if DOUBLE in taps:
            new = taps[DOUBLE](2 * x)
            out = None if new is None else new / 2
        if BASE + ".hook_neg" in taps:
            cur = x if out is None else out
            new = taps[BASE + ".hook_neg"](-cur)
            out = out if new is None else -new
        return out


@pytest.fixture
def virtual(models):
    """A model with the toy provider added for the test, removed afterwards."""

    def make(backend: str):
        model = models("tiny-llama", backend)
        handle = model.add_virtual_sites(Doubled())
        request_handles.append(handle)
        return model

    request_handles: list = []
    yield make
    for h in request_handles:
        h.remove()


@pytest.mark.parametrize("backend", BACKENDS)
def test_virtual_names_are_sites_until_removed(models, backend):
    """Virtual names follow their base site in sites(); adding costs no hook; removing drops them."""
    model = models("tiny-llama", backend)
    before = model.hook_registry()
    handle = model.add_virtual_sites(Doubled())
    sites = model.sites()
    assert sites[sites.index(BASE) + 1] == DOUBLE
    assert model.hook_registry() == before  # no tap attached: nothing runs
    handle.remove()
    assert DOUBLE not in model.sites()
    with pytest.raises(KeyError):
        model.capture(["a"], [DOUBLE])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", ["last", "mean", "all", [0, -1]])
def test_virtual_site_captures_with_every_reduce(virtual, backend, reduce, tmp_path):
    """Capture at a virtual site equals the provider's function of the base capture, streamed or not."""
    model = virtual(backend)
    with assert_no_hook_leak(model):
        acts = model.capture(TEXTS, [BASE, DOUBLE], reduce=reduce, batch_size=3, padding_side="left")
        streamed = model.capture(TEXTS, [DOUBLE], reduce=reduce, batch_size=2, stream_to=tmp_path / "s", shard_mb=0.001)
    assert torch.equal(acts[DOUBLE], 2 * acts[BASE])
    assert torch.allclose(streamed[DOUBLE], acts[DOUBLE], atol=1e-5)  # other batching: float noise only


@pytest.mark.parametrize("backend", BACKENDS)
def test_virtual_site_interventions_and_gradients(virtual, backend):
    """An Add at the virtual site acts like Add(v/2) at the base; grads are the base's halved."""
    model = virtual(backend)
    torch.manual_seed(0)
    v = torch.randn(64)
    with assert_no_hook_leak(model):
        at_virtual = model.run(TEXTS, [iv.Add(site=DOUBLE, vector=v, positions="last")])
        at_base = model.run(TEXTS, [iv.Add(site=BASE, vector=v / 2, positions="last")])
        assert torch.allclose(at_virtual, at_base, atol=1e-5)
        objective = ob.LogitDiff(positive="a", negative="b")
        g_virtual, a_virtual = model.grad(TEXTS, DOUBLE, objective, return_activations=True)
        g_base, a_base = model.grad(TEXTS, BASE, objective, return_activations=True)
    assert torch.allclose(g_virtual, g_base / 2, atol=1e-5)
    assert torch.allclose(a_virtual, 2 * a_base)
    # Two names of one provider run in its order: Scale(3) at the double (6x) writes back 3x, negated.
    both = model.capture(TEXTS, [DOUBLE, BASE + ".hook_neg"], interventions=[iv.Scale(site=DOUBLE, factor=3.0)])
    assert torch.allclose(both[BASE + ".hook_neg"], -both[DOUBLE] / 2, atol=1e-5)


def test_virtual_site_names_must_be_new(models):
    """A provider may not reuse a real site, a raw address or another provider's names."""
    model = models("tiny-llama", "nnsight")

    class Clash(Doubled):
        def names(self) -> list[str]:
            return ["blocks.1.hook_resid_post"]

    with pytest.raises(InputError, match="'blocks.1.hook_resid_post' is already a site"):
        model.add_virtual_sites(Clash())
    handle = model.add_virtual_sites(Doubled())
    try:
        with pytest.raises(InputError, match="already a site"):
            model.add_virtual_sites(Doubled())
    finally:
        handle.remove()
    with pytest.raises(InputError, match="not a virtual-site provider"):
        model.add_virtual_sites(object())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_pattern_rows_are_causal_distributions(models, name, backend):
    """Each real query row sums to 1 over real keys, is causal, and does not depend on padding."""
    model = models(name, backend)
    site = "blocks.1.attn.hook_pattern"
    assert site in model.sites()
    left = model.capture(TEXTS, [site], reduce="all", padding_side="left")
    right = model.capture(TEXTS, [site], reduce="all", padding_side="right", batch_size=3)
    assert torch.allclose(left[site], right[site], atol=1e-5)
    p, index = right[site], right.token_index  # [n_tokens, H, Tk], (example, position)
    assert torch.allclose(p.sum(-1), torch.ones(p.shape[:2]), atol=1e-5)
    keys = torch.arange(p.shape[-1])
    future = keys[None, :] > index[:, 1:2]  # keys after the query position (and padding)
    assert p.masked_select(future[:, None, :].expand_as(p)).abs().max() == 0
    alone = cat_ragged([model.capture([t], [site], reduce="last")[site] for t in TEXTS])
    batched = model.capture(TEXTS, [site], reduce="last", padding_side="left")[site]
    assert batched.shape == alone.shape and torch.allclose(batched, alone, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_norm_scale_and_weights_reproduce_norm_outputs(models, name, backend):
    """ln.hook_out == x_c / hook_scale * gain + bias, hook_scale == sqrt(mean(x_c²) + eps), logits == ln_final·W_U + b_U."""
    model = models(name, backend)
    w = model.weights
    assert w.norm_kind == ("rmsnorm" if name == "tiny-llama" else "layernorm")
    last = f"blocks.{model.n_layers - 1}.hook_resid_post"
    norms = [("ln1", 0, "blocks.0.hook_resid_pre"), ("ln2", 1, "blocks.1.hook_resid_mid"), ("ln_final", None, last)]
    sites = [s for which, layer, x in norms for s in (x, _norm_site(which, layer, "hook_scale"), _norm_site(which, layer, "hook_out"))]
    acts = model.capture(TEXTS, sites, reduce="all")
    for which, layer, x_site in norms:
        x = acts[x_site]
        xc = x - x.mean(-1, keepdim=True) if w.norm_kind == "layernorm" else x
        scale, out = acts[_norm_site(which, layer, "hook_scale")], acts[_norm_site(which, layer, "hook_out")]
        assert scale.shape == (x.shape[0], 1)
        assert torch.allclose(scale, (xc.pow(2).mean(-1, keepdim=True) + w.norm_eps).sqrt(), rtol=1e-5)
        assert torch.allclose(out, xc / scale * w.ln_scale(which, layer) + w.ln_bias(which, layer), atol=1e-5), which
    logits = model.run(TEXTS, reduce="all")
    assert torch.allclose(logits, acts[_norm_site("ln_final", None, "hook_out")] @ w.W_U + w.b_U, atol=1e-4)


def _norm_site(which: str, layer: int | None, hook: str) -> str:
    return f"{which}.{hook}" if layer is None else f"blocks.{layer}.{which}.{hook}"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_pattern_and_scale_interventions_and_grads_agree_across_backends(models, name):
    """Replacing a pattern or a norm scale, and gradients there, give the same numbers on TL and nnsight."""
    tl, nn = models(name, "transformer_lens"), models(name, "nnsight")
    ivs = [iv.Scale(site="blocks.0.attn.hook_pattern", factor=0.5, positions="last"), iv.Scale(site="blocks.1.ln2.hook_scale", factor=2.0)]
    with assert_no_hook_leak(tl), assert_no_hook_leak(nn):
        a, b = tl.run(TEXTS, ivs, padding_side="left"), nn.run(TEXTS, ivs, padding_side="left")
        assert not torch.allclose(a, tl.run(TEXTS, padding_side="left"), atol=1e-3)
        assert torch.allclose(a, b, atol=1e-4)
        objective = ob.TokenLogit(token=5)
        for site in ("blocks.1.attn.hook_pattern", "blocks.0.ln1.hook_scale", "ln_final.hook_scale"):
            ga, gb = tl.grad(TEXTS, site, objective), nn.grad(TEXTS, site, objective)
            assert ga.abs().max() > 0 and torch.allclose(ga, gb, atol=1e-4), site


@pytest.mark.parametrize(("name", "backend"), [(n, b) for n in ("tiny-llama", "tiny-gpt2") for b in BACKENDS]
                         + [("tiny-tl-native", "transformer_lens")])  # a native model exists on TL only
def test_mlp_activation_reproduces_the_mlp_hidden_state(models, name, backend):
    """weights.mlp_activation is the block's own nonlinearity: mlp.hook_post == act(hook_pre)
    (times hook_pre_linear for gated MLPs), on every family and backend."""
    model = models(name, backend)
    act = model.weights.mlp_activation(1)
    gated = "gate" in model.weights.family.linears
    sites = ["blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post"] + (["blocks.1.mlp.hook_pre_linear"] if gated else [])
    acts = model.capture(TEXTS, sites, reduce="all")
    hidden = act(acts["blocks.1.mlp.hook_pre"])
    if gated:
        hidden = hidden * acts["blocks.1.mlp.hook_pre_linear"]
    assert torch.allclose(hidden, acts["blocks.1.mlp.hook_post"], atol=1e-5)


def test_native_model_weights_have_biases(models):
    """TransformerLens native models: LayerNorm with a bias, an unembedding bias, TL's epsilon."""
    w = models("tiny-tl-native", "transformer_lens").weights
    assert w.norm_kind == "layernorm" and w.norm_eps == 1e-5
    assert w.b_U.shape == (100,) and w.ln_bias("ln1", 0).shape == (64,)


def test_generation_policy_reads_virtual_sites(virtual):
    """A generation policy may read virtual sites at every step, like real ones."""
    from conceptkit.generation import GenerationPolicy  # TODO(public-surface)

    model = virtual("transformer_lens")

    class Reader(GenerationPolicy):
        reads = [BASE, DOUBLE]

        def start(self, prompt_ids, attention_mask):  # type: ignore[no-untyped-def]
            self.pairs = []

        def step(self, state):  # type: ignore[no-untyped-def]
            self.pairs.append((state.reads[BASE], state.reads[DOUBLE]))
            return []

    policy = Reader()
    with assert_no_hook_leak(model):
        model.generate(["hello", "hi there"], max_new_tokens=3, policy=policy)
    assert len(policy.pairs) == 3 and all(torch.equal(d, 2 * b) for b, d in policy.pairs)


def test_pattern_without_eager_attention_is_a_clear_error(models):
    """On an HF model running SDPA, reading attn.hook_pattern says eager attention is needed."""
    model = models("tiny-llama", "transformers")
    before = model.hook_registry()
    model.hf.set_attn_implementation("sdpa")
    try:
        with pytest.raises(InputError, match="blocks.0.attn.hook_pattern needs eager attention; this model runs 'sdpa'"):
            model.capture(["hello"], ["blocks.0.attn.hook_pattern"])
    finally:
        model.hf.set_attn_implementation("eager")
    assert model.hook_registry() == before
    assert model.capture(["hello"], ["blocks.0.attn.hook_pattern"])["blocks.0.attn.hook_pattern"].shape[1] == 4
