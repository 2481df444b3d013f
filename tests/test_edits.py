"""Weight edits: composable in any order (bit for bit), refused on other weights, stored and re-applied."""

from __future__ import annotations

import itertools

import pytest
import torch

import conceptkit as ck
from conceptkit.edits import WeightEdit, WeightEditSet, parameter_hash
from conceptkit.errors import InputError

PARAM = "model.layers.1.mlp.down_proj.weight"  # role "out" at layer 1 of tiny-llama, [64, 128] (HF [out, in])


@pytest.fixture(scope="module")
def llama():
    return ck.load_model("tiny-llama", backend="transformers")


def _three(seed: int = 0) -> list[WeightEdit]:
    g = torch.Generator().manual_seed(seed)
    return [
        WeightEdit.low_rank(torch.randn(128, 2, generator=g), torch.randn(64, 2, generator=g), role="out", layer=1),
        WeightEdit.dense(torch.randn(128, 64, generator=g) * 1e-2, role="out", layer=1),
        WeightEdit.dense(torch.randn(64, 128, generator=g) * 1e-3, param=PARAM),  # same parameter, HF layout
    ]


def _fresh(original: torch.Tensor, active: list[WeightEdit]) -> torch.Tensor:
    """original + the active deltas applied freshly in order (stored [out, in] layout)."""
    w = original.clone()
    for e in active:
        d = e.compute_delta(w.T if e.role else w)
        w = w + (d.T if e.role else d)
    return w


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_any_removal_order_leaves_original_plus_active_edits(llama, order):
    """After each removal (every order of 3), the parameter equals, bit for bit, the original
    plus the still-active deltas applied freshly in apply order; removing all restores it."""
    param = llama.hf.get_parameter(PARAM)
    original = param.detach().clone()
    edits = _three()
    handles = [llama.apply_edit(e) for e in edits]
    assert torch.equal(param, _fresh(original, edits))
    active = list(range(3))
    for i in order:
        handles[i].remove()
        active.remove(i)
        assert torch.equal(param, _fresh(original, [edits[j] for j in active]))
    assert torch.equal(param, original)
    assert not hasattr(param, "_conceptkit_ledger")


def test_removing_the_first_edit_keeps_the_second(llama):
    """Apply A, apply B, remove A: B is still applied (not silently erased); remove B: original."""
    param = llama.hf.get_parameter(PARAM)
    original = param.detach().clone()
    a, b, _ = _three(1)
    ha = llama.weights.apply(a)
    hb = llama.weights.rank_one_update("out", 1, torch.ones(128), torch.ones(64), scale=0.5)
    ha.remove()
    assert torch.equal(param, original + 0.5 * torch.ones(64, 128))
    hb.remove()
    assert torch.equal(param, original)


def test_low_rank_layout_is_in_out_on_linear_and_conv1d():
    """ΔW = left @ right.T in TL [in, out] layout lands transposed on nn.Linear and as is on
    GPT-2's Conv1D, and the projected-out and rank-one helpers compose with edits."""
    g = torch.Generator().manual_seed(2)
    left, right = torch.randn(256, 1, generator=g), torch.randn(64, 1, generator=g)
    gpt2 = ck.load_model("tiny-gpt2", backend="transformers")
    w = gpt2.hf.get_parameter("transformer.h.0.mlp.c_proj.weight")  # Conv1D [in=256, out=64]
    before = w.detach().clone()
    with gpt2.apply_edit(WeightEdit.low_rank(left, right, role="out", layer=0)):
        assert torch.equal(w, before + left @ right.T)
        with gpt2.weights.project_out("out", 0, right[:, 0]):
            assert gpt2.weights.W_out(0).matmul(right[:, 0] / right.norm()).abs().max() < 1e-4
        assert torch.equal(w, before + left @ right.T)
    assert torch.equal(w, before)


def test_other_weights_are_refused_and_nothing_changes(llama):
    """An edit whose base hash is not this model's parameter is refused with a clear error;
    a set with one refused edit undoes the ones it applied."""
    other = ck.load_model("tiny-llama", backend="transformers", seed=1)
    edits = WeightEditSet(_three(), name="three").with_base(other)
    param = llama.hf.get_parameter(PARAM)
    before = param.detach().clone()
    with pytest.raises(InputError, match=r"was computed on weights sha256:\w+, but this model's are sha256:\w+"):
        llama.apply_edit(edits.edits[0])
    good = WeightEdit.dense(torch.ones(64, 64) * 1e-3, role="o", layer=0).with_base(llama)
    with pytest.raises(InputError, match="refused"):
        llama.apply_edit(WeightEditSet([good, edits.edits[1]]))
    assert torch.equal(param, before)
    assert torch.equal(llama.weights.parameter("o", 0), llama.weights.parameter("o", 0).detach().clone())
    with llama.apply_edit(edits.edits[0], check_hash=False):
        assert not torch.equal(param, before)
    assert torch.equal(param, before)


def test_hash_of_an_edited_parameter_still_matches(llama):
    """An edit computed on the unedited weights applies while another edit is active."""
    a, b, _ = _three(3)
    b = b.with_base(llama)
    with llama.apply_edit(a), llama.apply_edit(b):
        pass
    assert b.base_hash == parameter_hash(llama.hf.get_parameter(PARAM))


@pytest.mark.parametrize("backend", ["transformers", "transformer_lens", "nnsight"])
def test_model_ref_names_the_edited_weights(backend):
    """model.ref (provenance, cache keys, the Ray workers' weights check) follows edits: read before
    an edit, it changes while the edit is active and returns to the original once it is removed."""
    model = ck.load_model("tiny-llama", backend=backend)
    before = model.ref.weights_hash
    with model.apply_edit(_three(4)[0]):
        edited = model.ref.weights_hash
        assert edited != before and model.ref.weights_hash == edited  # cached while nothing changes
    assert model.ref.weights_hash == before


def test_stored_edit_reapplies_by_id_on_every_backend(llama, ck_store):
    """A set stored as a `weight_edit` record and loaded by id gives the same bits on the
    transformers, nnsight and TransformerLens models of the same checkpoint."""
    edits = WeightEditSet(_three(4), name="trio").with_base(llama)
    with llama.apply_edit(edits):
        expected = llama.hf.get_parameter(PARAM).detach().clone()
    record = ck_store.put(edits.to_draft("trio", model=llama, tags=["test"]))
    assert record.kind == "weight_edit" and record.model["name"] == "tiny-llama"
    loaded = ck.edits.load(ck_store, record.id[:12])
    assert [e.kind for e in loaded] == ["low_rank", "dense", "dense"]
    for backend in ("nnsight", "transformer_lens"):
        model = ck.load_model("tiny-llama", backend=backend)
        param = model.weights.parameter("out", 1)
        original = param.detach().clone()
        with model.apply_edit(loaded):
            assert torch.equal(param, expected)
        assert torch.equal(param, original)


def test_edits_round_trip_through_json():
    """An edit's JSON (tensors as lists) parses back to an equal edit of the same kind."""
    for edit in _three(5):
        back = ck.edits.parse(__import__("json").loads(edit.model_dump_json()))
        assert type(back) is type(edit) and back.spec() == edit.spec()
        assert all(torch.equal(back.tensors()[k], v) for k, v in edit.tensors().items())


def test_a_registered_kind_is_stored_and_applied(llama, ck_store):
    """A kind a plugin registers through `register_components` (here: scale a weight) goes
    through the ledger, the store and load; without the plugin the record names the kind."""
    from typing import Literal

    class ScaleEdit(WeightEdit):
        kind: Literal["test_scale"] = "test_scale"
        factor: float = 2.0

        def compute_delta(self, base):
            return (self.factor - 1.0) * base

    class ScalePlugin:
        @ck.hookimpl
        def register_components(self, register):
            register("weight_edit", ScaleEdit)

    param = llama.hf.get_parameter(PARAM)
    before = param.detach().clone()
    record = ck_store.put(ScaleEdit(role="out", layer=1, factor=3.0).to_draft("triple"))
    with ck.registered_plugin(ScalePlugin(), "scale-plugin"):
        assert ck.components.plugin_of("weight_edit", "test_scale") == "scale-plugin"
        with ck.edits.load(ck_store, record.id).apply(llama):
            assert torch.equal(param, before + 2.0 * before)
    assert torch.equal(param, before)
    with pytest.raises(ck.UnknownNameError, match="test_scale"):
        ck.edits.load(ck_store, record.id)


def test_diffusers_edit_by_parameter_path(ck_store):
    """On a diffusers model an edit addresses `unet.<...>.weight`; undo restores the bits."""
    unet = ck.load_model("tiny-unet", backend="diffusers")
    site = unet.cross_attention_sites()[0]
    w = unet.cross_attention_projections()[site].weight
    before = w.detach().clone()
    edit = WeightEdit.dense(torch.full_like(w, 0.5), param=f"{site}.weight").with_base(unet)
    with unet.apply_edit(edit):
        assert torch.equal(w, before + 0.5)
        with unet.edit_projection(site, lambda x: x * 0):
            assert torch.equal(w, torch.zeros_like(w))
        assert torch.equal(w, before + 0.5)
    assert torch.equal(w, before)


def test_edit_command_shows_applies_and_removes(ck_store, capsys):
    """`conceptkit edit show|apply|rm RECORD` serve a weight-edit record; rm refuses other kinds."""
    from conceptkit.cli import main

    model = ck.load_model("tiny-llama", backend="transformers")
    record = ck_store.put(WeightEditSet(_three(6), name="cli").with_base(model).to_draft("cli edit", model=model))
    root = str(ck_store.root)
    main(["edit", "show", record.id[:10], "--store", root])
    assert "low_rank" in capsys.readouterr().out
    main(["edit", "apply", record.id[:10], "--backend", "transformers", "--store", root, "--text", "ab cd", "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert "bits/byte without" in out and "with:" in out
    main(["edit", "rm", record.id[:10], "--store", root])
    assert len(ck_store) == 0
    vector = ck_store.put(ck.RecordDraft(tensors={"vector": torch.ones(3)}, concept="v"))
    with pytest.raises(SystemExit):
        main(["edit", "rm", vector.id, "--store", root])
    assert "no edit kind" not in capsys.readouterr().out and len(ck_store) == 1


def _doc_block(name: str, heading: str) -> str:
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / name).read_text()
    return text.split(heading, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_plugin_author_guide_weight_edit_example_runs(capsys):
    """The weight-edit example in docs/plugin-authors.md runs as written (its asserts included)."""
    exec(compile(_doc_block("plugin-authors.md", "## 10. Weight edits"), "plugin-authors.md", "exec", dont_inherit=True), {})
    assert capsys.readouterr().out.strip() == "weight_edit True"


def test_the_plugin_hooks_weight_edit_kind_example_runs(capsys):
    """The weight-edit kind example in docs/plugin-hooks.md runs as written: a plugin kind applied and undone."""
    exec(compile(_doc_block("plugin-hooks.md", "### Weight-edit kinds"), "plugin-hooks.md", "exec", dont_inherit=True), {})
    assert capsys.readouterr().out.strip() == "True True"
