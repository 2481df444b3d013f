"""Computing a ROCR edit on a model: target value, keys, the sequential per-layer solve.

Follows ``apply_rocr_to_model`` of the reference (Acruxos/ORT) step by step (methods/rocr.md §3):
``z`` is the block-``z_layer`` output at the harmless concept's last token in context template 0;
for each edit layer in order, the key is the ``down_proj`` input at the target's last token
averaged over the context templates, the current value ``h`` is read with the earlier layers
already edited, the residual ``(z - h) / (L - i)`` is spread over the remaining layers, and the
update is the null-space-constrained closed form (:mod:`conceptkit_rocr.solve`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import conceptkit as ck
from conceptkit.api import Handle, HandleGroup, InputError
from conceptkit.edits import original_of, parameter_hash
from conceptkit_rocr.solve import rocr_update
from conceptkit_rocr.templates import REQUEST, SLOT, context_templates, pad_id, pad_right, subject_prefix_ids

ROLE = "out"  # the MLP down-projection (TL W_out [d_mlp, d])


@dataclass
class LayerFactors:
    layer: int
    left: torch.Tensor  # w [d_mlp]: ΔW_out (TL [in, out]) = outer(left, right)
    right: torch.Tensor  # R [d]
    key: torch.Tensor  # k [d_mlp] of the edited model (feeds C_prev of later sequential edits)
    residual_norm: float = 0.0  # ||z - h|| before this layer's update

    @property
    def delta_norm(self) -> float:
        return float(self.left.double().norm() * self.right.double().norm())


@dataclass
class RocrEdit:
    """The artifact: rank-one factors per layer, applied to ``W_out`` of each edit layer.

    As core data it is a :class:`conceptkit.WeightEditSet` of ``low_rank`` edits (role ``out``,
    ``left = w [d_mlp, 1]``, ``right = R [d, 1]``, ``ΔW = left rightᵀ`` in TL layout), one record.
    """

    target: str
    harmless: str
    layers: list[int]
    z_layer: int
    factors: list[LayerFactors]
    templates_kind: str = "chat"
    base_hashes: dict[int, str | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def edit_set(self) -> Any:
        return ck.WeightEditSet(
            [ck.WeightEdit.low_rank(role=ROLE, layer=f.layer, left=f.left.float().reshape(-1, 1), right=f.right.float().reshape(-1, 1),
                                    base_hash=self.base_hashes.get(f.layer)) for f in self.factors],
            name=f"rocr {self.target} -> {self.harmless}",
        )

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """What the record keeps besides the edits: the layers and the keys (``C_prev`` of later edits)."""
        return {"rocr.layers": torch.tensor(self.layers, dtype=torch.int64), "rocr.keys": torch.stack([f.key.float() for f in self.factors])}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Record tensors: ``<i>.left``/``<i>.right`` (as ``WeightEditSet.to_draft``) plus :meth:`extra_tensors`."""
        out = {f"{i}.{k}": v.contiguous() for i, e in enumerate(self.edit_set()) for k, v in e.tensors().items()}
        return {**out, **self.extra_tensors()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], **kwargs: Any) -> "RocrEdit":
        layers = [int(l) for l in tensors["rocr.layers"].tolist()]
        keys = tensors["rocr.keys"]
        factors = [LayerFactors(l, tensors[f"{i}.left"].reshape(-1), tensors[f"{i}.right"].reshape(-1), keys[i]) for i, l in enumerate(layers)]
        kwargs.setdefault("target", "")
        kwargs.setdefault("harmless", "")
        kwargs.setdefault("z_layer", layers[-1])
        return cls(layers=layers, factors=factors, **kwargs)

    def apply(self, model: Any, *, check_hash: bool = True) -> Handle:
        """Add every layer's rank-one update (core edit API); the handle restores the exact bits."""
        return model.apply_edit(self.edit_set(), check_hash=check_hash)

    def C(self) -> dict[int, torch.Tensor]:
        """``k kᵀ`` per layer: what this edit adds to ``C_prev`` of a later sequential edit."""
        return {f.layer: torch.outer(f.key.double(), f.key.double()) for f in self.factors}


def apply_factors(model: Any, factors: list[tuple[int, torch.Tensor, torch.Tensor]]) -> Handle:
    """``W_out[l] += outer(left, right)`` in TL layout for each factor (Conv1D vs Linear by the core)."""
    edits = [ck.WeightEdit.low_rank(role=ROLE, layer=l, left=left.float().reshape(-1, 1), right=right.float().reshape(-1, 1)) for l, left, right in factors]
    return model.apply_edit(ck.WeightEditSet(edits, name="rocr factors"))


# -- reads -----------------------------------------------------------------------------------------
def subject_rows(model: Any, templates: list[str], subject: str) -> list[list[int]]:
    """Token ids of each template with ``subject`` in its slot, cut after the subject's last token."""
    return [subject_prefix_ids(model.tokenizer, t, subject) for t in templates]


def read_rows(model: Any, rows: list[list[int]], sites: list[str], batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Activations ``{site: [len(rows), d]}`` (float64) at the last token of each row, in one batched
    forward that stops at the deepest site (rows of different prompts share the batch)."""
    sites = list(dict.fromkeys(sites))
    acts = model.capture(pad_right(rows, pad_id(model.tokenizer)), sites, reduce="last", batch_size=batch_size)
    return {s: acts[s].double() for s in sites}


def read_at_subject(model: Any, templates: list[str], subject: str, site: str, batch_size: int = 16) -> torch.Tensor:
    """Activations ``[len(templates), d]`` at ``site`` at the last token of ``subject``."""
    return read_rows(model, subject_rows(model, templates, subject), [site], batch_size)[site]


def resid_site(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def key_site(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def target_value(model: Any, harmless: str, templates: list[str], z_layer: int, mode: str, *, target: str = "", seed: int = 0, reject: dict | None = None) -> torch.Tensor:
    """``z``: the harmless concept's block output (``unrelated``), an optimised one (``reject``),
    or a random vector with the norm of the reject value (``noise``)."""
    if mode == "unrelated":
        return read_at_subject(model, templates[:1], harmless, resid_site(z_layer))[0]
    if mode in ("reject", "noise"):
        from conceptkit_rocr.reject import reject_value

        z = reject_value(model, target, templates, z_layer, **(reject or {}))
        if mode == "reject":
            return z
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(z.shape, generator=g, dtype=torch.float64)
        factor = float((reject or {}).get("clamp_norm_factor", 1.0))
        return noise * (z.norm() * factor / noise.norm())
    raise InputError(f"mode must be 'unrelated', 'reject' or 'noise', got {mode!r}")


def compute_edit(
    model: Any,
    target: str,
    harmless: str,
    layers: list[int],
    projectors: dict[int, torch.Tensor] | None = None,
    *,
    z_layer: int | None = None,
    l2: float = 1.0,
    mode: str = "unrelated",
    value_context: str = "bare",
    templates: str = "auto",
    z_context: str = "first",
    C_prev: dict[int, torch.Tensor] | None = None,
    seed: int = 0,
    reject: dict | None = None,
    batch_size: int = 16,
) -> RocrEdit:
    """The ROCR edit of ``target`` -> ``harmless`` (the model is left unchanged)."""
    if not layers:
        raise InputError("layers must not be empty")
    if any(b != a + 1 for a, b in zip(layers, layers[1:])):
        raise InputError(f"ROCR edits consecutive layers; got {layers}")
    if layers[0] < 0 or layers[-1] >= model.n_layers:
        raise InputError(f"layers {layers} out of range for a model with {model.n_layers} layers")
    z_layer = layers[-1] if z_layer is None else z_layer
    if value_context not in ("bare", "templates"):
        raise InputError(f"value_context must be 'bare' or 'templates', got {value_context!r}")
    if z_context not in ("first", "templates"):
        raise InputError(f"z_context must be 'first' or 'templates', got {z_context!r}")
    ctx, kind = context_templates(model.tokenizer, templates)
    value_templates = [SLOT] if value_context == "bare" else ctx
    key_rows = subject_rows(model, ctx, target)
    value_rows = subject_rows(model, value_templates, target)
    n_k, n_v = len(key_rows), len(value_rows)
    z_site = resid_site(z_layer)
    z = None
    extra_rows: list[list[int]] = []
    if mode == "unrelated":  # z comes from the first forward, batched with the first layer's reads
        extra_rows = subject_rows(model, ctx[:1] if z_context == "first" else ctx, harmless)
    else:
        z = target_value(model, harmless, ctx, z_layer, mode, target=target, seed=seed, reject=reject)
    base_hashes = {l: parameter_hash(original_of(model.weights.parameter(ROLE, l))) for l in layers}
    factors: list[LayerFactors] = []
    applied = HandleGroup(description="rocr solve")
    try:
        # One forward per layer: the keys (templates) and the current value h (value context),
        # read with the earlier layers already edited in place (as MEMIT/AlphaEdit).
        for i, layer in enumerate(layers):
            acts = read_rows(model, key_rows + value_rows + (extra_rows if i == 0 else []), [key_site(layer), z_site], batch_size)
            k = acts[key_site(layer)][:n_k].mean(0)
            h = acts[z_site][n_k : n_k + n_v].mean(0)
            if z is None:
                z = acts[z_site][n_k + n_v :].mean(0)
            resid = (z - h) / (len(layers) - i)
            P = None if projectors is None else projectors.get(layer)
            w, R = rocr_update(k, resid, P, None if C_prev is None else C_prev.get(layer), l2)
            factors.append(LayerFactors(layer, w.float(), R.float(), k.float(), float((z - h).norm())))
            applied.add(apply_factors(model, [(layer, w, R)]))
        # keys of the fully edited model go into C_prev of later sequential edits (as the reference),
        # read in one forward with the final value
        acts = read_rows(model, key_rows + value_rows, [key_site(l) for l in layers] + [z_site], batch_size)
        for f in factors:
            f.key = acts[key_site(f.layer)][:n_k].mean(0).float()
        h_final = acts[z_site][n_k:].mean(0)
    finally:
        applied.remove()
    assert z is not None
    info = {
        "templates": ctx,
        "value_context": value_context,
        "z_context": z_context,
        "mode": mode,
        "z_norm": float(z.norm()),
        "residual_after": float((z - h_final).norm()),
        "cos_before": None,
    }
    return RocrEdit(target, harmless, list(layers), z_layer, factors, kind, base_hashes, info)
