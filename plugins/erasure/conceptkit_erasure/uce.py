"""UCE (Gandikota et al., 2024): closed-form editing of cross-attention key/value projections.

For each projection ``W_old`` (``[d_out, d_text]``) the edit solves

    min_W  Σ_e s_e ||W c_e - v*_e||² + Σ_p s_p ||W c_p - W_old c_p||² + λ ||W - W_old||²_F

whose unique minimiser is ``W = (λ W_old + Σ s_e v*_e c_eᵀ + Σ s_p W_old c_p c_pᵀ)
(λ I + Σ s_e c_e c_eᵀ + Σ s_p c_p c_pᵀ)⁻¹``. For erasure ``v*_e = W_old c_guide(e)``: the
erased concept's keys and values become the guide's. Solved in float64, cast back; the result is
a set of dense :class:`conceptkit.WeightEdit` deltas (one per projection, with the hash of the
weights they were computed on), applied, stored and re-applied like every other weight edit.
"""

from __future__ import annotations

from typing import Any

import torch

import conceptkit as ck
from conceptkit.api import Handle, InputError, WeightEdit, WeightEditSet


def uce_solve(
    W_old: torch.Tensor,
    edit_keys: torch.Tensor,
    edit_targets: torch.Tensor,
    preserve_keys: torch.Tensor | None = None,
    *,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
    lamb: float = 0.5,
) -> torch.Tensor:
    """The UCE minimiser for one projection (``edit_targets`` are ``v*`` rows, ``[n_e, d_out]``)."""
    W = W_old.double()
    d_out, d_in = W.shape
    C = edit_keys.double().reshape(-1, d_in)
    V = edit_targets.double().reshape(-1, d_out)
    if C.shape[0] != V.shape[0]:
        raise InputError(f"{C.shape[0]} edit keys but {V.shape[0]} targets")
    if lamb < 0:
        raise InputError(f"lamb must be >= 0, got {lamb}")
    mat1 = lamb * W + erase_scale * V.T @ C
    mat2 = lamb * torch.eye(d_in, dtype=W.dtype) + erase_scale * C.T @ C
    if preserve_keys is not None and preserve_keys.numel():
        Pk = preserve_keys.double().reshape(-1, d_in)
        mat1 = mat1 + preserve_scale * (W @ Pk.T) @ Pk
        mat2 = mat2 + preserve_scale * Pk.T @ Pk
    # W_new = mat1 mat2⁻¹, via a solve with the symmetric mat2 (lstsq copes with rank loss at λ=0)
    solution = torch.linalg.lstsq(mat2, mat1.T).solution
    return solution.T.to(W_old.dtype)


def concept_embedding(model: Any, prompt: str) -> torch.Tensor:
    """The text embedding UCE uses for a concept: the final hidden state at the last word token."""
    pipe = getattr(model, "pipeline", None)
    if pipe is None or getattr(pipe, "tokenizer", None) is None:
        raise InputError("concept embeddings from prompts need a pipeline with a tokenizer; pass embeddings directly")
    max_length = min(int(pipe.tokenizer.model_max_length), 77)  # CLIP's context
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.text_encoder(input_ids=ids.input_ids, attention_mask=ids.attention_mask)[0]
    position = int(ids.attention_mask.sum()) - 2
    return hidden[0, max(position, 0)]


def uce_edits(
    model: Any,
    edit: torch.Tensor,
    guide: torch.Tensor,
    preserve: torch.Tensor | None = None,
    *,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
    lamb: float = 0.5,
    modules: tuple[str, ...] = ("to_k", "to_v"),
) -> WeightEditSet:
    """The UCE edit of every cross-attention projection of a diffusers model, not yet applied.

    ``edit``/``guide`` are ``[n, d_text]`` embeddings (row i of ``edit`` is mapped to row i of
    ``guide``); ``preserve`` ``[m, d_text]``. Each edit is the dense delta ``W_new - W_old`` of
    one projection weight (``param="unet.<...>.to_k.weight"``) with the hash of ``W_old``.
    """
    edit, guide = torch.as_tensor(edit), torch.as_tensor(guide)
    if edit.shape != guide.shape:
        raise InputError(f"edit embeddings {tuple(edit.shape)} and guide embeddings {tuple(guide.shape)} must have the same shape")
    for name, t in (("edit", edit), ("guide", guide), ("preserve", preserve)):
        if t is not None and not torch.isfinite(t).all():
            raise InputError(f"{name} embeddings contain NaN or Inf")
    projections = {s: m for s, m in model.cross_attention_projections().items() if s.endswith(modules)}
    if not projections:
        raise InputError(f"no cross-attention projections ending in {modules} in this model")
    edits = []
    for site, module in projections.items():
        W_old = module.weight.detach()
        if W_old.shape[1] != edit.shape[-1]:
            raise InputError(f"{site} reads text embeddings of width {W_old.shape[1]}, the edit embeddings have width {edit.shape[-1]}")
        targets = guide.to(W_old.dtype) @ W_old.T
        W_new = uce_solve(W_old, edit, targets, preserve, erase_scale=erase_scale, preserve_scale=preserve_scale, lamb=lamb)
        edits.append(WeightEdit.dense(W_new - W_old, param=f"{site}.weight", base_hash=ck.edits.parameter_hash(W_old)))
    return WeightEditSet(edits, name="uce")


def uce_edit(model: Any, edit: torch.Tensor, guide: torch.Tensor, preserve: torch.Tensor | None = None, **settings: Any) -> tuple[Handle, WeightEditSet]:
    """Compute and apply the UCE edit (:func:`uce_edits`); returns the undo handle and the edits."""
    edits = uce_edits(model, edit, guide, preserve, **settings)
    return model.apply_edit(edits), edits


def uce_draft(edits: WeightEditSet, concept: str, model: Any, config: dict[str, Any] | None = None) -> Any:
    """A store draft of the edits (kind ``weight_edit``), under the registered method ``erasure``.

    Re-apply it on any backend with ``ck.edits.load(store, record_id).apply(model)`` or
    ``conceptkit edit apply RECORD``.
    """
    draft = edits.to_draft(concept, description="UCE cross-attention edit: dense deltas of to_k/to_v weights",
                           model=model, tags=["uce", "erasure"])
    return draft.model_copy(update={"method": ck.method_info("erasure", {"uce": config or {}})})
