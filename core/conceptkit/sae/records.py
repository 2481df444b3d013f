"""SAEs as store records (kind ``sae``) and similarity over their decoder directions.

A record holds the SAELens tensors (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``threshold``)
and, in ``method.config["sae"]``, the rest of the SAE (architecture, ``k``, normalisation,
``apply_b_dec_to_input``); training settings, corpus fingerprint and evaluation figures go in
``method.config`` and ``metrics``. Bundles carry such records like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from conceptkit.errors import InputError, StoreError
from conceptkit.sae.base import SAE


def to_draft(
    sae: SAE,
    concept: str | None = None,
    *,
    description: str = "",
    method: str = "sae",
    config: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    examples_fingerprint: str | None = None,
    tags: list[str] | None = None,
) -> Any:
    """A :class:`~conceptkit.store.record.RecordDraft` for ``sae`` (store it with ``store.put``)."""
    from conceptkit.store.record import MethodInfo, RecordDraft

    cfg = {"sae": sae.config(), **(config or {})}
    if sae.metadata:
        cfg.setdefault("metadata", sae.metadata)
    model = model or ({"name": sae.model_name} if sae.model_name else None)
    return RecordDraft(
        tensors={n: t.detach() for n, t in sae.tensors().items()},
        concept=concept or f"SAE {sae.architecture} {sae.d_sae} at {sae.site}",
        description=description or f"{sae.architecture} SAE, d_in={sae.d_in}, d_sae={sae.d_sae}" + (f", k={sae.k}" if sae.k else ""),
        kind="sae",
        examples_fingerprint=examples_fingerprint,
        method=MethodInfo(name=method, plugin="conceptkit", config=_json_safe(cfg)),
        model=model,
        site=sae.site,
        metrics=metrics or {},
        tags=tags or [],
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def from_record(store: Any, record_id: str) -> SAE:
    """Load an SAE record back into an :class:`SAE` (with ``record_id`` set)."""
    record, tensors = store.load(record_id)
    if record.kind != "sae":
        raise StoreError(f"record {record.short_id} is a {record.kind!r} record, not an SAE (kind 'sae')")
    cfg = dict(record.method.config.get("sae") or {})
    if "architecture" not in cfg:
        # records written by store.interop.import_saelens before SAEs were a type: plain ReLU
        cfg = {"architecture": cfg.get("architecture", "standard")}
    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in tensors]
    if missing:
        raise StoreError(f"SAE record {record.short_id} lacks tensor {missing[0]!r}")
    return SAE(
        tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"],
        architecture=cfg.get("architecture", "standard"),
        threshold=tensors.get("threshold"),
        k=cfg.get("k"),
        site=record.site or cfg.get("site"),
        model_name=(record.model or {}).get("name") or cfg.get("model_name"),
        apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
        normalize_activations=cfg.get("normalize_activations", "none"),
        norm_scaling_factor=cfg.get("norm_scaling_factor"),
        metadata=record.method.config.get("metadata") or {},
        record_id=record.id,
    )


@dataclass
class LatentMatch:
    latent: int
    score: float


def similar_latents(sae: Any, query: Any, k: int = 10, store: Any = None, tensor: str | None = None) -> list[LatentMatch]:
    """The ``k`` latents whose decoder directions are closest (cosine) to ``query``.

    ``query`` is a vector ``[d_in]`` or a record id of a stored concept vector (a CAV, a
    steering vector); ``sae`` an :class:`SAE`, a record id or a folder.
    """
    from conceptkit.sae.registry import resolve_sae

    model_sae = resolve_sae(sae, store)
    if isinstance(query, str):
        if store is None:
            from conceptkit.store import open_store

            store = open_store()
        tensors = store.tensors(query)
        names = [n for n, t in tensors.items() if t.dim() == 1] if tensor is None else [tensor]
        if len(names) != 1 or names[0] not in tensors:
            raise StoreError(f"record {query[:12]} holds {sorted(tensors)}; name one 1-D tensor with tensor=")
        vec = tensors[names[0]]
    else:
        vec = torch.as_tensor(query)
    vec = vec.detach().float().reshape(-1)
    if vec.shape[0] != model_sae.d_in:
        raise InputError(f"query has width {vec.shape[0]} but the SAE's decoder directions have width {model_sae.d_in}")
    if not torch.isfinite(vec).all() or not (vec != 0).any():
        raise InputError("a similarity query must be a finite, non-zero vector")
    scores = model_sae.decoder_directions() @ (vec / vec.norm())
    top = scores.topk(min(k, scores.shape[0]))
    return [LatentMatch(int(i), float(s)) for s, i in zip(top.values, top.indices)]
