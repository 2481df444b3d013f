"""Store UX: readable `store ls` at 80 columns, concept globs, honest import counts, GGUF from CAV records."""

from __future__ import annotations

import pydantic
import pytest
import torch
from click.testing import CliRunner

import conceptkit as ck
from conceptkit.cli import cli
from conceptkit.store.interop import layer_set, read_control_vector

MODEL = {"name": "tiny-llama", "backend": "transformer_lens", "architecture": "LlamaForCausalLM"}


def _cav(store, concept: str, layer: int, seed: int):
    """A record shaped like TCAV's: kind cav, tensors cav [d] and cav_runs [runs, d], at a layer's resid_post."""
    g = torch.Generator().manual_seed(seed)
    return store.put(ck.RecordDraft(
        tensors={"cav": torch.randn(16, generator=g), "cav_runs": torch.randn(3, 16, generator=g)},
        concept=concept, kind="cav", site=f"blocks.{layer}.hook_resid_post", model=MODEL, tags=["tcav"]))


def _invoke(*args: str, columns: int = 80):
    out = CliRunner().invoke(cli, list(args), env={"COLUMNS": str(columns)})
    assert out.exit_code == 0, out.output
    return out.output


def test_store_ls_at_80_columns_keeps_ids_and_sites(tmp_path):
    """At 80 columns every short id and site is printed whole (no ellipsis), concept names wrap if they must."""
    store = ck.open_store(tmp_path)
    records = [_cav(store, "a rather long concept name about sentiment polarity", layer, layer) for layer in (3, 17)]
    text = _invoke("store", "ls", "--store", str(tmp_path))
    assert max(len(line) for line in text.splitlines()) <= 80
    for r in records:
        assert r.short_id in text and r.site in text
    assert "…" not in text.replace("...", "")
    wide = _invoke("store", "ls", "--store", str(tmp_path), columns=160)
    assert "created" in wide and "tcav" in wide


def test_store_ls_concept_substring_glob_and_exact(tmp_path):
    """--concept matches a substring, a glob ('pos*'), or with --exact the whole name; Store.find takes globs."""
    store = ck.open_store(tmp_path)
    pos, neg = _cav(store, "positive sentiment", 1, 0), _cav(store, "negative sentiment", 1, 1)
    base = ["store", "ls", "--store", str(tmp_path), "--json", "--concept"]
    ids = lambda *extra: {r["id"] for r in __import__("json").loads(_invoke(*base, *extra))}  # noqa: E731
    assert ids("sentiment") == {pos.id, neg.id}
    assert ids("pos*") == {pos.id}
    assert ids("sentiment", "--exact") == set()
    assert ids("negative sentiment", "--exact") == {neg.id}
    assert [r.id for r in store.find(concept="*tive sent*")] == [r.id for r in store.find()]
    assert store.find(concept="positive") == []  # the Python API stays exact without wildcards


def test_import_same_bundle_twice_says_how_many_are_new(tmp_path):
    """Importing a bundle twice reports all new the first time and none new the second."""
    source = ck.open_store(tmp_path / "a")
    for layer in (0, 1):
        _cav(source, "c", layer, layer)
    _invoke("store", "export", "--store", str(tmp_path / "a"), str(tmp_path / "b.tar"))
    first = _invoke("store", "import", "--store", str(tmp_path / "c"), str(tmp_path / "b.tar"))
    second = _invoke("store", "import", "--store", str(tmp_path / "c"), str(tmp_path / "b.tar"))
    assert "imported 2 record(s): 2 new, 0 already in the store" in first
    assert "imported 2 record(s): 0 new, 2 already in the store" in second


def test_export_gguf_from_tcav_records_and_layer_set(tmp_path):
    """export-gguf takes several CAV records (one direction per layer, from each record's site); layer_set builds one per-layer record."""
    store = ck.open_store(tmp_path / "s")
    a, b = _cav(store, "c", 2, 0), _cav(store, "c", 5, 1)
    _invoke("store", "export-gguf", "--store", str(tmp_path / "s"), a.id, b.id, str(tmp_path / "c.gguf"))
    meta, directions = read_control_vector(tmp_path / "c.gguf")
    assert meta == {"controlvector.model_hint": "llama", "controlvector.layer_count": 2}
    assert torch.equal(directions[2], store.tensors(a.id)["cav"]) and torch.equal(directions[5], store.tensors(b.id)["cav"])
    merged = store.put(layer_set(store, [a.id, b.id], concept="c per layer"))
    assert merged.kind == "vector_set" and set(merged.tensors) == {"blocks.2.hook_resid_post", "blocks.5.hook_resid_post"}
    assert merged.parents == [a.id, b.id]
    _invoke("store", "export-gguf", "--store", str(tmp_path / "s"), merged.id, str(tmp_path / "m.gguf"))
    assert torch.equal(read_control_vector(tmp_path / "m.gguf")[1][5], directions[5])
    clash = _cav(store, "d", 2, 7)
    with pytest.raises(ck.StoreError, match="both give layer 2"):
        layer_set(store, [a.id, clash.id])


def test_misspelt_positions_is_a_conceptkit_error():
    """Add(positions="lats") raises a ConceptkitError naming the value, not a raw pydantic ValidationError."""
    with pytest.raises(ck.ConceptkitError, match="lats") as info:
        ck.Add(site="blocks.0.hook_resid_post", vector=torch.ones(4), positions="lats")
    assert not isinstance(info.value, pydantic.ValidationError)


def test_gguf_export_is_byte_identical_to_repengs_writer_calls(tmp_path):
    """The control-vector file equals what repeng's export_gguf writes with gguf's GGUFWriter for the same directions."""
    gguf = pytest.importorskip("gguf")
    store = ck.open_store(tmp_path / "s")
    a, b = _cav(store, "c", 1, 0), _cav(store, "c", 3, 1)
    _invoke("store", "export-gguf", "--store", str(tmp_path / "s"), a.id, b.id, str(tmp_path / "ours.gguf"))
    directions = {1: store.tensors(a.id)["cav"], 3: store.tensors(b.id)["cav"]}
    writer = gguf.GGUFWriter(str(tmp_path / "repeng.gguf"), "controlvector")  # repeng.ControlVector.export_gguf
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", len(directions))
    for layer, direction in directions.items():
        writer.add_tensor(f"direction.{layer}", direction.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "repeng.gguf").read_bytes()
