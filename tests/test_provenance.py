"""Provenance from the core: Method.run fills plugin, distribution, version, config, model and inputs."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck


class Cfg(ck.MethodConfig):
    concept: str = "c"
    texts: list[str] = ["ab", "cd"]


class VecResult(ck.Result):
    def drafts(self) -> list[ck.RecordDraft]:
        # What a plugin writes: no method=, no model= (a stale name is overridden by the core).
        return [ck.RecordDraft(tensors={"vector": torch.ones(4)}, concept="c", method=ck.MethodInfo(name="stale"))]


class Vec(ck.Method):
    name = "prov-vec"
    Config = Cfg

    def compute(self, model, config, store):
        result = VecResult()
        result.add_input("extra", ["x", "y"], model)
        return result


class ProvPlugin:
    @ck.hookimpl
    def register_methods(self, register):
        register(Vec)


@pytest.fixture(scope="module")
def tiny():
    return ck.load_model("tiny-llama", backend="transformers")


def test_run_fills_provenance_of_every_draft(tiny, ck_store):
    """A stored draft gets the registered plugin, the method name, the validated config, the
    model ref and the fingerprints of the config's texts and of the inputs the method added."""
    with ck.registered_plugin(ProvPlugin(), "prov-plugin"):
        result = ck.method("prov-vec").run(tiny, {"texts": ["p", "q"]}, store=ck_store)
    record = ck_store.get(result.record_ids[0])
    assert record.method.name == "prov-vec"
    assert record.method.plugin == "prov-plugin"
    assert record.method.config == {"concept": "c", "texts": ["p", "q"]}
    assert record.model == tiny.ref.model_dump(mode="json")
    assert record.method.inputs == {
        "texts": ck.input_fingerprint(["p", "q"]),
        "extra": ck.input_fingerprint(["x", "y"], tiny),
    }


def test_unregistered_method_gets_its_distribution(tiny, ck_store):
    """A method class run without registration still names the distribution that defines it
    (none for a test module) and its own name."""
    result = Vec().run(tiny, {}, store=ck_store)
    info = ck_store.get(result.record_ids[0]).method
    assert (info.name, info.plugin) == ("prov-vec", None)


def test_shipped_plugins_get_their_version():
    """method_info of a shipped plugin's method names plugin, distribution and installed version."""
    import importlib.metadata as md

    info = ck.method_info("erasure", {"seed": 1})
    assert (info.name, info.plugin, info.distribution) == ("erasure", "erasure", "conceptkit-erasure")
    assert info.version == md.version("conceptkit-erasure")
    assert info.config == {"seed": 1}


def test_input_fingerprint_follows_tokens_and_weights(tiny):
    """The same texts through the same weights fingerprint alike on every backend; other token
    ids (a BOS convention) or other weights give another fingerprint."""
    texts = ["hello", "a b"]
    nn = ck.load_model("tiny-llama", backend="nnsight")
    assert ck.input_fingerprint(texts, tiny) == ck.input_fingerprint(texts, nn)
    assert ck.input_fingerprint(texts) != ck.input_fingerprint(texts, tiny)
    bos = tiny.tokenize(texts)
    ids = torch.cat([torch.ones(2, 1, dtype=torch.long), bos.input_ids], 1)
    with_bos = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert ck.input_fingerprint(with_bos, tiny) != ck.input_fingerprint(bos.input_ids, tiny)
    other = ck.load_model("tiny-llama", backend="transformers", seed=1)
    assert ck.input_fingerprint(texts, other) != ck.input_fingerprint(texts, tiny)
