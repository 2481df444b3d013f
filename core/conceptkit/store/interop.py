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


_SITE_LAYER_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
#: the tensor a single-vector record steers with, by preference (TCAV stores "cav" + "cav_runs")
_VECTOR_NAMES = ("vector", "cav", "direction")


def _record_layers(record: Record, tensors: dict[str, torch.Tensor]) -> dict[int, tuple[torch.Tensor, str]]:
    """``{layer: (direction, label)}`` of one record: a per-layer set (1-D tensors named by
    layer), or one vector at a ``blocks.<l>.hook_resid_post`` site (a CAV, a steering vector)."""
    site = _SITE_LAYER_RE.match(record.site or "")
    ones = {n: t for n, t in tensors.items() if t.dim() == 1}
    if not ones:
        return {}
    if site and not all(_LAYER_RE.match(n) for n in ones):
        preferred = [n for n in _VECTOR_NAMES if n in ones] or sorted(ones)
        if len(preferred) != 1 and not any(n in ones for n in _VECTOR_NAMES):
            raise StoreError(f"record {record.short_id}: several 1-D tensors ({', '.join(sorted(ones))}) and none named 'vector' or 'cav'; which one is the direction?")
        name = preferred[0]
        return {int(site.group(1)): (ones[name], f"{record.short_id}:{name}")}
    out: dict[int, tuple[torch.Tensor, str]] = {}
    for name, t in ones.items():
        layer = _layer_of(name)
        if layer in out:
            raise StoreError(f"record {record.short_id}: tensors {out[layer][1].split(':', 1)[1]!r} and {name!r} both name layer {layer}; a control vector has one direction per layer")
        out[layer] = (t, f"{record.short_id}:{name}")
    return out


def layer_directions(store: LocalStore, record_ids: str | list[str]) -> tuple[dict[int, torch.Tensor], list[Record]]:
    """One direction per layer from records: a per-layer vector set, or several single-vector
    records (TCAV CAVs, steering vectors) each at a ``blocks.<l>.hook_resid_post`` site.

    Two records for the same layer, or directions of different widths, are errors naming both."""
    ids = [record_ids] if isinstance(record_ids, str) else list(record_ids)
    if not ids:
        raise StoreError("no records given")
    layers: dict[int, tuple[torch.Tensor, str]] = {}
    records = []
    for rid in ids:
        record, tensors = store.load(rid)
        records.append(record)
        for layer, (t, label) in _record_layers(record, tensors).items():
            if layer in layers:
                raise StoreError(f"{layers[layer][1]} and {label} both give layer {layer}; a control vector has one direction per layer")
            layers[layer] = (t, label)
    if not layers:
        raise StoreError(f"record(s) {', '.join(r.short_id for r in records)} have no 1-D per-layer vectors to export")
    widths = {int(t.shape[0]) for t, _ in layers.values()}
    if len(widths) > 1:
        detail = ", ".join(f"{layers[l][1]!r}: {int(layers[l][0].shape[0])}" for l in sorted(layers))
        raise StoreError(f"per-layer vectors have different widths ({detail}); a control vector needs one width")
    return {layer: t for layer, (t, _) in sorted(layers.items())}, records


def layer_set(store: LocalStore, record_ids: list[str], concept: str | None = None) -> Any:
    """A ``vector_set`` draft (tensors ``blocks.<l>.hook_resid_post``) built from records, with
    the records as parents: store it to get one per-layer record (e.g. TCAV's CAVs per layer)."""
    from conceptkit.store.record import RecordDraft

    directions, records = layer_directions(store, record_ids)
    return RecordDraft(
        tensors={f"blocks.{layer}.hook_resid_post": t for layer, t in directions.items()},
        concept=concept or records[0].concept,
        kind="vector_set",
        description=f"per-layer set from {len(records)} record(s)",
        model=records[0].model,
        parents=[r.id for r in records],
    )


def export_control_vector(store: LocalStore, record_id: str | list[str], path: str | Path, model_hint: str | None = None) -> Path:
    """Write a GGUF control vector from one per-layer vector set or several single-vector records
    (see :func:`layer_directions`), with gguf's own writer in repeng's layout."""
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError("gguf", "pip install gguf") from None
    directions, records = layer_directions(store, record_id)
    layers = directions
    record = records[0]
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
