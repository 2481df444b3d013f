"""Interop formats against bad input (issue 10 item 12): GGUF control-vector export and SAELens
import. (Overflowing norms are in test_store_faults.py.)"""

from __future__ import annotations

import json

import pytest
import torch

import conceptkit as ck
from conceptkit.errors import StoreError
from conceptkit.store import RecordDraft
from conceptkit.store.interop import export_control_vector, read_saelens, write_saelens
from tests.adversarial.tally import expect_error

AREA = "interop"


@pytest.fixture
def store(tmp_path):
    return ck.open_store(tmp_path / "s")


def test_gguf_export_refuses_duplicate_layers_and_mixed_widths(store, tmp_path):
    """`"3"` and `"blocks.3.hook_resid_post"` both naming layer 3, or widths 8 and 16, are refused by name."""
    pytest.importorskip("gguf")
    dup = store.put(RecordDraft(tensors={"3": torch.ones(8), "blocks.3.hook_resid_post": torch.randn(8)}, concept="dup", kind="vector_set"))
    expect_error(AREA, "GGUF: two tensors for layer 3", lambda: export_control_vector(store, dup.id, tmp_path / "d.gguf"), "both name layer 3", StoreError)
    mixed = store.put(RecordDraft(tensors={"layer.1": torch.ones(8), "layer.2": torch.ones(16)}, concept="mixed", kind="vector_set"))
    expect_error(AREA, "GGUF: widths 8 and 16", lambda: export_control_vector(store, mixed.id, tmp_path / "m.gguf"), "different widths", StoreError)
    assert not (tmp_path / "d.gguf").exists() and not (tmp_path / "m.gguf").exists()


def _sae(d_in: int = 6, d_sae: int = 10) -> dict[str, torch.Tensor]:
    return {"W_enc": torch.randn(d_in, d_sae), "b_enc": torch.randn(d_sae), "W_dec": torch.randn(d_sae, d_in), "b_dec": torch.randn(d_in)}


@pytest.mark.parametrize(
    ("label", "change", "needle"),
    [
        ("b_enc of the wrong length", {"b_enc": torch.randn(7)}, r"b_enc has shape \(7,\), expected \(10,\)"),
        ("b_dec of the wrong length", {"b_dec": torch.randn(3)}, r"b_dec has shape \(3,\), expected \(6,\)"),
        ("W_dec transposed", {"W_dec": torch.randn(6, 10)}, r"W_dec has shape"),
        ("1-D W_enc", {"W_enc": torch.randn(60)}, r"W_enc has shape \(60,\)"),
    ],
)
def test_saelens_import_checks_every_shape(tmp_path, label, change, needle):
    """Every SAELens tensor's shape is checked against W_enc's."""
    folder = tmp_path / "sae"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file({**_sae(), **change}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"d_in": 6, "d_sae": 10}))
    expect_error(AREA, f"SAELens: {label}", lambda: read_saelens(folder), needle, StoreError)


def test_saelens_bad_files_are_clear_errors(tmp_path):
    """A cfg.json that is not JSON or not an object, and a truncated weights file, are named."""
    folder = tmp_path / "sae"
    write_saelens(folder, _sae(), {})
    good_cfg = (folder / "cfg.json").read_text()
    (folder / "cfg.json").write_text("{nope")
    expect_error(AREA, "SAELens: cfg.json not JSON", lambda: read_saelens(folder), "not valid JSON", StoreError)
    (folder / "cfg.json").write_text("[1]")
    expect_error(AREA, "SAELens: cfg.json a list", lambda: read_saelens(folder), "JSON object", StoreError)
    (folder / "cfg.json").write_text(good_cfg)
    data = (folder / "sae_weights.safetensors").read_bytes()
    (folder / "sae_weights.safetensors").write_bytes(data[:30])
    expect_error(AREA, "SAELens: truncated weights", lambda: read_saelens(folder), "truncated|not a valid safetensors", StoreError)
