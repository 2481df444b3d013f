"""Preserved-key statistics: the uncentered second moment of the MLP down-projection inputs.

``K0 K0ᵀ / N`` over every real token of the preserved texts at ``blocks.{l}.mlp.hook_post``
(the ``down_proj`` input), streamed chunk by chunk into a float64 accumulator, then the
null-space projector per layer. Projectors are cached in memory and, when a store is given,
stored as records of kind ``rocr_projector`` keyed by (model weights, layer, text fingerprint,
thresholds), so a later edit (or process) skips the statistics.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from conceptkit_rocr.solve import Projector, nullspace_projector

KIND = "rocr_projector"
_MEMORY: dict[tuple, "LayerStats"] = {}


@dataclass
class LayerStats:
    layer: int
    projector: Projector
    n_tokens: int
    texts_fingerprint: str
    seconds: float = 0.0  # time to compute (0 when loaded from a cache)
    record_id: str | None = None
    source: str = "computed"  # computed | memory | store


def key_site(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def second_moments(
    model: Any, texts: list[str], layers: list[int], *, batch_size: int = 16, chunk: int = 64, ray: bool | str | None = None
) -> tuple[dict[int, torch.Tensor], int]:
    """``{layer: Σ k kᵀ / N}`` (float64) over all real tokens of ``texts``, and ``N``.

    Locally: one streamed pass that reads every layer at once (float32 products per chunk as the
    reference's ``mom2_dtype``, float64 running sum). Over Ray (``ray`` as in
    :func:`conceptkit.scale.dataset_moments`: ``True``/``"local"``, a cluster address, or ``None``
    inside a ``use_ray`` block): the core's dataset-scale moments, one pass per layer, whose
    ``second_moment`` is the same estimator (equal to the local one within float32 rounding).
    """
    from contextlib import nullcontext

    from conceptkit.api import dataset_moments, ray_requested, use_ray

    sites = {layer: key_site(layer) for layer in layers}
    if ray_requested(ray):
        out, count = {}, 0
        # One pool for every layer: an explicit ``ray=`` outside a use_ray block opens one block
        # here (else each layer's call would start and stop its own workers, loading the model again).
        own = ray is not None and not ray_requested(None)
        with use_ray(None if ray in (True, "local") else ray) if own else nullcontext():
            for layer, site in sites.items():
                m = dataset_moments(model, texts, site, "all", ray=None if own else ray, batch_size=batch_size)
                out[layer], count = m.second_moment, m.n
        return out, count
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for start in range(0, len(texts), chunk):
        acts = model.capture(texts[start : start + chunk], list(sites.values()), reduce="all", batch_size=batch_size)
        for layer, site in sites.items():
            K = acts[site].float()  # float32 products per chunk (the reference's mom2_dtype), float64 running sum
            sums[layer] = sums.get(layer, 0) + (K.T @ K).double()
        count += int(acts[sites[layers[0]]].shape[0])
    return {layer: s / max(count, 1) for layer, s in sums.items()}, count


def _key(model: Any, layer: int, fp: str, threshold: float | None, relative: float | None) -> tuple:
    ref = model.ref
    return (ref.name, ref.weights_hash, layer, fp, threshold, relative)


def _from_store(store: Any, key: tuple) -> LayerStats | None:
    name, whash, layer, fp, threshold, relative = key
    for rec in store.find(kind=KIND, site=key_site(layer)):
        m = rec.metrics
        if rec.examples_fingerprint != fp or (rec.model or {}).get("weights_hash") != whash:
            continue
        if m.get("nullspace_threshold") != threshold or m.get("nullspace_relative") != relative:
            continue
        t = store.tensors(rec)
        proj = Projector(P=t["P"].double(), tau=float(m["tau"]), null_dim=int(m["null_dim"]), key_rank=int(m["key_rank"]), eigenvalues=t["eigenvalues"].double())
        return LayerStats(layer, proj, int(m["n_tokens"]), fp, 0.0, rec.id, "store")
    return None


def _draft(model: Any, st: LayerStats, threshold: float | None, relative: float | None) -> Any:
    from conceptkit.api import RecordDraft, method_info

    return RecordDraft(
        tensors={"P": st.projector.P.float(), "eigenvalues": st.projector.eigenvalues.float()},
        concept="rocr preserved keys",
        description="ROCR null-space projector of the preserved keys' uncentered second moment (P, eigenvalues ascending)",
        kind=KIND,
        examples_fingerprint=st.texts_fingerprint,
        method=method_info("rocr", {"nullspace_threshold": threshold, "nullspace_relative": relative}),
        model=model.ref.model_dump(mode="json"),
        site=key_site(st.layer),
        reduction="all",
        metrics={"n_tokens": st.n_tokens, "tau": st.projector.tau, "null_dim": st.projector.null_dim, "key_rank": st.projector.key_rank,
                 "nullspace_threshold": threshold, "nullspace_relative": relative, "seconds": st.seconds},
        tags=["rocr", "projector"],
    )


def layer_stats(
    model: Any,
    layers: list[int],
    texts: list[str],
    texts_fingerprint: str,
    *,
    threshold: float | None = 2e-2,
    relative: float | None = None,
    store: Any = None,
    batch_size: int = 16,
    ray: bool | str | None = None,
) -> dict[int, LayerStats]:
    """Projectors for ``layers``: from memory, else the store, else computed (and stored)."""
    out: dict[int, LayerStats] = {}
    missing: list[int] = []
    for layer in layers:
        key = _key(model, layer, texts_fingerprint, threshold, relative)
        if key in _MEMORY:
            st = _MEMORY[key]
            out[layer] = LayerStats(**{**st.__dict__, "source": "memory", "seconds": 0.0})
            continue
        st = _from_store(store, key) if store is not None else None
        if st is not None:
            _MEMORY[key] = st
            out[layer] = st
        else:
            missing.append(layer)
    if missing:
        t0 = time.perf_counter()
        moments, n = second_moments(model, texts, missing, batch_size=batch_size, ray=ray)
        for layer in missing:
            proj = nullspace_projector(moments[layer], threshold, relative)
            st = LayerStats(layer, proj, n, texts_fingerprint, time.perf_counter() - t0)
            width = moments[layer].shape[0]
            if proj.key_rank < width:
                warnings.warn(
                    f"ROCR statistics at layer {layer}: the preserved keys have rank {proj.key_rank} < MLP width {width} "
                    f"({n} tokens); only the directions seen are protected (add stats_texts)",
                    stacklevel=2,
                )
            if store is not None:
                st.record_id = store.put(_draft(model, st, threshold, relative)).id
            _MEMORY[_key(model, layer, texts_fingerprint, threshold, relative)] = st
            out[layer] = st
    return out


def clear_cache() -> None:
    """Forget the in-memory projectors (benchmarks and tests)."""
    _MEMORY.clear()
