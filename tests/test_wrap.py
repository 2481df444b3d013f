"""Bring your own model: ck.wrap recognises real TransformerLens, nnsight and HF objects, finds
their tokenizer, reports convention differences, and matches load_model on the same checkpoint."""

from __future__ import annotations

import warnings

import pytest
import torch

import conceptkit as ck
from conceptkit.errors import InputError
from conceptkit.models import tiny_hf

TEXTS = ["hello there", "ab", "a longer text, with punctuation!"]
SITES = ["blocks.1.hook_resid_post", "blocks.0.mlp.hook_post", "model.layers.1.mlp:output", "model.layers.0.self_attn:output"]


def _fresh_llama():
    """A new tiny-llama HF object (from its saved checkpoint), eager attention like load_model."""
    model, folder = tiny_hf("llama")
    model.set_attn_implementation("eager")
    return model, folder


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def reference():
    return ck.load_model("tiny-llama", backend="transformers")


def _same(a, b, atol=0.0):
    for site in SITES:
        assert torch.allclose(a[site], b[site], atol=atol, rtol=0), site


def _wrap_quietly(obj, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ck.ConventionWarning)
        return ck.wrap(obj, **kwargs)


def _objects():
    """Every kind of object a user brings, built fresh: (label, factory, expected backend)."""
    from nnsight import LanguageModel, NNsight
    from nnsight.modeling.transformers import TransformersModel
    from transformer_lens.model_bridge import TransformerBridge

    def bridge():
        model, folder = _fresh_llama()
        return TransformerBridge.boot_transformers(str(folder), hf_model=model), {"tokenizer": _tokenizer(folder)}

    def language_model():
        model, folder = _fresh_llama()
        return LanguageModel(model, tokenizer=_tokenizer(folder)), {}

    def language_model_lazy():  # loaded from a path with meta weights: wrap keeps them; the hook executor loads them on first use
        _, folder = _fresh_llama()
        return LanguageModel(str(folder), tokenizer=_tokenizer(folder), attn_implementation="eager"), {}

    def transformers_model():
        model, folder = _fresh_llama()
        return TransformersModel(model, tokenizer=_tokenizer(folder)), {}

    def nnsight_base():  # no tokenizer on the object: found from the checkpoint
        return NNsight(_fresh_llama()[0]), {}

    def hf():  # no tokenizer given: found from the checkpoint
        return _fresh_llama()[0], {}

    return [
        ("TransformerBridge", bridge, "transformer_lens"),
        ("LanguageModel", language_model, "nnsight"),
        ("LanguageModel(path)", language_model_lazy, "nnsight"),
        ("TransformersModel", transformers_model, "nnsight"),
        ("NNsight", nnsight_base, "nnsight"),
        ("PreTrainedModel", hf, "transformers"),
    ]


KINDS = ["TransformerBridge", "LanguageModel", "LanguageModel(path)", "TransformersModel", "NNsight", "PreTrainedModel"]


@pytest.mark.parametrize("index", range(len(KINDS)), ids=KINDS)
def test_wrap_recognises_every_kind_and_matches_load_model(reference, index):
    """Each real object is recognised by its backend, wraps without a convention warning when
    given the checkpoint's tokenizer (or none to find), and gives load_model's tensors exactly,
    on canonical sites and raw module paths alike."""
    label, make, backend = _objects()[index]
    obj, kwargs = make()
    model = _wrap_quietly(obj, **kwargs)
    assert model.backend_name == backend, label
    _same(model.capture(TEXTS, SITES, reduce="all"), reference.capture(TEXTS, SITES, reduce="all"))


def test_nnsight_envoy_of_the_base_model_wraps():
    """An nnsight envoy (here `lm.model`, the decoder without its head) wraps as an encoder-style model."""
    from nnsight import LanguageModel

    model, folder = _fresh_llama()
    lm = LanguageModel(model, tokenizer=_tokenizer(folder))
    wrapped = ck.wrap(lm.model, tokenizer=_tokenizer(folder))
    assert wrapped.backend_name == "nnsight" and wrapped.n_layers == 2


def test_missing_tokenizer_is_an_error_at_wrap_time():
    """An HF model with no tokenizer anywhere fails in wrap, naming what to pass."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_fresh_llama()[0].config)
    model.config._name_or_path = ""
    with pytest.raises(InputError, match="without a tokenizer.*pass tokenizer="):
        ck.wrap(model)


def test_bridge_bos_convention_is_reported_not_silent(reference):
    """A bridge's own tokenizer prepends BOS where the checkpoint's does not: wrapping warns
    and its activations differ; with the checkpoint's tokenizer they equal load_model's."""
    from transformer_lens.model_bridge import TransformerBridge

    model, folder = _fresh_llama()
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=model)
    with pytest.warns(ck.ConventionWarning, match=r"prepends a BOS token \(id 1\)"):
        own = ck.wrap(bridge)
    assert own.tokenize(["ab"]).input_ids[0, 0] == 1
    assert not torch.equal(own.capture(TEXTS, SITES[:1], reduce="last")[SITES[0]], reference.capture(TEXTS, SITES[:1], reduce="last")[SITES[0]])


def test_other_attention_and_missing_pad_token_are_reported():
    """An HF model on SDPA attention and a tokenizer without a pad token are reported at wrap time."""
    model, folder = tiny_hf("llama")
    model.set_attn_implementation("sdpa")
    tok = _tokenizer(folder)
    tok.pad_token = None
    with pytest.warns(ck.ConventionWarning) as record:
        wrapped = ck.wrap(model, tokenizer=tok)
    text = " ".join(str(w.message) for w in record)
    assert "'sdpa' attention" in text and "no pad token" in text
    assert wrapped.capture(["ab", "abc"], ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"].shape == (2, 64)


def test_raw_module_paths_work_on_every_backend(reference):
    """`model.layers.1.mlp:output`-style paths read and intervene identically on TransformerLens,
    nnsight and transformers models of the same checkpoint."""
    site = "model.layers.0.mlp:output"
    add = ck.Add(site=site, vector=torch.ones(64))
    base = reference.run(TEXTS, [add])
    for backend in ("transformer_lens", "nnsight"):
        model = ck.load_model("tiny-llama", backend=backend)
        assert site in model.raw_sites() or model.resolve_site(site) == site
        assert torch.equal(model.capture(TEXTS, [site], reduce="all")[site], reference.capture(TEXTS, [site], reduce="all")[site])
        assert torch.equal(model.run(TEXTS, [add]), base), backend
    tl = ck.load_model("tiny-llama", backend="transformer_lens")
    assert set(reference.raw_sites()) <= set(tl.raw_sites())  # every HF module path is listed on TL too
    with pytest.raises(ck.UnknownNameError):
        tl.capture(TEXTS, ["model.layers.9.mlp:output"])


def test_registered_third_party_backend_serves_named_models():
    """load_model(name, backend=X) works for a backend a plugin registered, for any HF-backed model."""
    from conceptkit.backends.hf import HFModel

    class MyModel(HFModel):
        backend_name = "mine"

    class MyBackend:
        def recognises(self, obj):
            return False

        def wrap(self, obj, tokenizer=None, **kwargs):
            return MyModel(obj, tokenizer, **kwargs)

    class Plugin:
        @ck.hookimpl
        def register_backends(self, register):
            register("mine", MyBackend())

    with ck.registered_plugin(Plugin(), "mine-plugin"):
        model = ck.load_model("tiny-gpt2", backend="mine")
        assert isinstance(model, MyModel) and model.name == "tiny-gpt2"
        with pytest.raises(InputError, match="not available for backend 'mine'"):
            ck.load_model("tiny-unet", backend="mine")
    with pytest.raises(ck.UnknownNameError, match="unknown backend 'mine'"):  # the plugin is gone
        ck.load_model("tiny-gpt2", backend="mine")


# -- SmolLM2: one comparison per backend -------------------------------------------------------------
SMOL_TEXTS = ["The capital of France is", "I loved this film."]
SMOL_SITES = ["blocks.12.hook_resid_post", "model.layers.5.mlp:output"]


def _smol_objects():
    from nnsight import LanguageModel
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conceptkit.models import smollm2_folder

    folder = str(smollm2_folder())

    def hf():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.set_attn_implementation("eager")
        return model

    return {
        "transformer_lens": lambda: TransformerBridge.boot_transformers(folder, hf_model=hf(), tokenizer=AutoTokenizer.from_pretrained(folder)),
        "nnsight": lambda: LanguageModel(hf(), tokenizer=AutoTokenizer.from_pretrained(folder)),
        "transformers": hf,
    }, folder


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight", "transformers"])
def test_smollm2_wrapped_equals_load_model(backend):
    """SmolLM2 built by hand and wrapped gives load_model's activations on the same backend
    (with the checkpoint's tokenizer: ck.wrap passes it through unchanged)."""
    from transformers import AutoTokenizer

    makers, folder = _smol_objects()
    wrapped = _wrap_quietly(makers[backend](), tokenizer=AutoTokenizer.from_pretrained(folder))
    got = wrapped.capture(SMOL_TEXTS, SMOL_SITES, reduce="all")
    del wrapped
    expected = ck.load_model("smollm2-135m", backend=backend).capture(SMOL_TEXTS, SMOL_SITES, reduce="all")
    for site in SMOL_SITES:
        assert torch.equal(got[site], expected[site]), site


@pytest.mark.slow
def test_smollm2_bridge_tokenizer_bos_is_reported():
    """A SmolLM2 bridge with its own tokenizer prepends <|im_start|> (BOS, id 1), which the
    checkpoint's tokenizer (load_model's) does not: wrap says so."""
    from transformer_lens.model_bridge import TransformerBridge

    from conceptkit.models import smollm2_folder

    bridge = TransformerBridge.boot_transformers(str(smollm2_folder()))
    with pytest.warns(ck.ConventionWarning, match=r"prepends a BOS token \(id 1\)"):
        model = ck.wrap(bridge)
    assert model.tokenize(["The"]).input_ids[0, 0] == 1
