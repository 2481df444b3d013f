"""Interop with neighbouring tools' formats.

* GGUF control vectors, the layout llama.cpp and repeng read: ``controlvector.model_hint``,
  ``controlvector.layer_count`` and one ``direction.<layer>`` tensor per layer, where
  ``<layer>`` is the block index whose output (``blocks.<layer>.hook_resid_post``) it steers
  (repeng's convention; llama.cpp ignores layer 0).
* SAELens SAE folders: ``cfg.json`` plus ``sae_weights.safetensors`` with ``W_enc [d_in, d_sae]``,
  ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from conceptkit.errors import MissingDependencyError, StoreError
from conceptkit.store.local import LocalStore
from conceptkit.store.record import Record

_LAYER_RE = re.compile(r"^(?:blocks\.)?(\d+)(?:\.hook_resid_post)?$|^layer[._]?(\d+)$")


def _layer_of(name: str) -> int:
    match = _LAYER_RE.match(name)
    if not match:
        raise StoreError(f"tensor name {name!r} does not name a layer (use 'blocks.<l>.hook_resid_post' or 'layer.<l>')")
    return int(match.group(1) or match.group(2))


def export_control_vector(store: LocalStore, record_id: str, path: str | Path, model_hint: str | None = None) -> Path:
    """Write a per-layer vector set as a GGUF control vector."""
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError("gguf", "pip install gguf") from None
    record, tensors = store.load(record_id)
    layers: dict[int, torch.Tensor] = {}
    names: dict[int, str] = {}
    for name, t in tensors.items():
        if t.dim() != 1:
            continue
        layer = _layer_of(name)
        if layer in layers:
            raise StoreError(f"record {record.short_id}: tensors {names[layer]!r} and {name!r} both name layer {layer}; a control vector has one direction per layer")
        layers[layer], names[layer] = t, name
    if not layers:
        raise StoreError(f"record {record.short_id} has no 1-D per-layer vectors to export")
    widths = {int(t.shape[0]) for t in layers.values()}
    if len(widths) > 1:
        detail = ", ".join(f"{names[l]!r}: {int(layers[l].shape[0])}" for l in sorted(layers))
        raise StoreError(f"record {record.short_id}: per-layer vectors have different widths ({detail}); a control vector needs one width")
    hint = model_hint or (record.model or {}).get("architecture", "llama")
    hint = {"LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2"}.get(hint, hint)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", str(hint))
    writer.add_uint32("controlvector.layer_count", len(layers))
    for layer in sorted(layers):
        writer.add_tensor(f"direction.{layer}", layers[layer].float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_control_vector(path: str | Path) -> tuple[dict[str, Any], dict[int, torch.Tensor]]:
    """Read a GGUF control vector: metadata and ``{layer: direction}``."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key in ("controlvector.model_hint", "controlvector.layer_count"):
        field = reader.fields.get(key)
        if field is not None:
            value = field.parts[field.data[0]]
            meta[key] = bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else int(value[0])
    directions = {int(t.name.split(".")[1]): torch.from_numpy(t.data.copy()).float() for t in reader.tensors}
    return meta, directions


SAE_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


def read_saelens(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``), checking shapes."""
    folder = Path(folder)
    cfg_path, weights_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not cfg_path.exists() or not weights_path.exists():
        raise StoreError(f"{folder} is not a SAELens folder (needs cfg.json and sae_weights.safetensors)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{cfg_path}: not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(cfg, dict):
        raise StoreError(f"{cfg_path}: must hold a JSON object, not {type(cfg).__name__}")
    from conceptkit.store.local import load_safetensors

    tensors = load_safetensors(weights_path.read_bytes(), str(weights_path))
    missing = [k for k in SAE_TENSORS if k not in tensors]
    if missing:
        raise StoreError(f"{weights_path}: missing tensors {missing}")
    if tensors["W_enc"].dim() != 2:
        raise StoreError(f"{weights_path}: W_enc has shape {tuple(tensors['W_enc'].shape)}, expected [d_in, d_sae]")
    d_in, d_sae = (int(n) for n in tensors["W_enc"].shape)
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    for key, shape in expected.items():
        if key in tensors and tuple(tensors[key].shape) != shape:
            raise StoreError(f"{weights_path}: {key} has shape {tuple(tensors[key].shape)}, expected {shape}")
    for key, n in (("d_in", d_in), ("d_sae", d_sae)):
        if key in cfg:
            try:
                declared = int(cfg[key])
            except (TypeError, ValueError):
                raise StoreError(f"{cfg_path}: {key}={str(cfg[key])[:40]!r} is not a whole number") from None
            if declared != n:
                raise StoreError(f"{cfg_path}: {key}={cfg[key]} but the weights say {n}")
    return cfg, tensors


def write_saelens(folder: str | Path, tensors: dict[str, torch.Tensor], cfg: dict[str, Any]) -> Path:
    """Write an SAE in SAELens' on-disk format."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = tensors["W_enc"].shape
    full = {"d_in": int(d_in), "d_sae": int(d_sae), "architecture": "standard", "dtype": "float32", **cfg}
    save_file({k: tensors[k].contiguous() for k in SAE_TENSORS}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(full, indent=2))
    return folder


def import_saelens(store: LocalStore, folder: str | Path, concept: str | None = None, tags: list[str] | None = None) -> Record:
    """Store a SAELens SAE (any architecture ``conceptkit.sae`` reads) as a record of kind ``sae``."""
    from conceptkit.sae.formats import read_saelens as read_sae
    from conceptkit.sae.records import to_draft

    sae = read_sae(folder)
    draft = to_draft(sae, concept or f"SAE {Path(folder).name}", description=f"SAE dictionary imported from {Path(folder).name}",
                     method="saelens-import", config={"source": Path(folder).name}, tags=tags)
    return store.put(draft)
