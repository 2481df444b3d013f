"""Weight access by role, in TransformerLens layout, with reversible in-place edits.

Reads come from the HF parameters (never from stacked getters, whose reshape scrambles heads
for HF ``[out, in]`` matrices: hook_points.md §5.1). Every edit goes through the parameter's
edit ledger (:mod:`conceptkit.edits`) and returns a :class:`~conceptkit.handles.Handle` that
removes exactly that edit; removing all restores the exact bits.

Layouts (TL): ``W_V(l)`` ``[H_kv, d, d_h]``, ``W_O(l)`` ``[H, d_h, d]``, ``W_in(l)``
``[d, d_mlp]``, ``W_out(l)`` ``[d_mlp, d]``, ``W_U`` ``[d, V]``, ``W_E`` ``[V, d]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from conceptkit.backends.families import Family, apply_prefix
from conceptkit.errors import InputError
from conceptkit.handles import Handle


def replace_parameter(
    param: torch.nn.Parameter, fn: Callable[[torch.Tensor], torch.Tensor], what: str
) -> Handle:
    """Set ``param`` to ``fn(param)`` in place, through the parameter's edit ledger
    (:func:`conceptkit.edits.edit_op`): the handle removes exactly this change, in any order
    with other edits, and removing all restores the exact bits.

    The new value must keep the shape and be finite, else nothing changes.
    """
    from conceptkit.edits import edit_op

    return edit_op(param, fn, what)


class Weights:
    """Per-role weight views of one HF-style module tree."""

    def __init__(self, root: torch.nn.Module, family: Family, prefix: str, n_heads: int, n_kv_heads: int) -> None:
        self._root, self.family, self._prefix = root, family, prefix
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads

    @property
    def root(self) -> torch.nn.Module:
        """The module tree these weights belong to (raw parameter paths are relative to it)."""
        return self._root

    def apply(self, edit: Any, *, check_hash: bool = True) -> Handle:
        """Apply a :class:`conceptkit.WeightEdit` (or a set); the handle undoes exactly it."""
        from conceptkit.edits import apply_edit

        return apply_edit(self, edit, check_hash=check_hash)

    # -- low level ---------------------------------------------------------------------------
    def module(self, role: str, layer: int | None = None) -> torch.nn.Module:
        if role not in self.family.linears:
            raise InputError(f"weight role {role!r} does not exist for {self.family.name}; known: {sorted(self.family.linears)}")
        path = apply_prefix(self.family.linears[role].replace("{l}", str(layer)), self._prefix)
        if path is None:
            raise InputError(f"weight role {role!r} is not part of this model (no such module)")
        try:
            return self._root.get_submodule(path)
        except AttributeError:
            raise InputError(f"weight role {role!r} at layer {layer} not found (module path {path!r})") from None

    def parameter(self, role: str, layer: int | None = None, kind: str = "weight") -> torch.nn.Parameter:
        """The underlying parameter (HF layout) of ``role``."""
        param = getattr(self.module(role, layer), kind, None)
        if param is None:
            raise InputError(f"{role!r} at layer {layer} has no {kind}")
        return param

    def in_out(self, role: str, w: torch.Tensor) -> torch.Tensor:
        """Switch a stored weight to ``[in, out]`` and back (an involution): nn.Linear stores
        ``[out, in]``, GPT-2's Conv1D already ``[in, out]`` (its embeddings are plain tables)."""
        return w if self.family.conv1d and role not in ("unembed", "embed") else w.T

    def _matrix(self, role: str, layer: int | None) -> torch.Tensor:
        """``[in, out]`` view of a linear map's weight."""
        return self.in_out(role, self.parameter(role, layer))

    # -- reads (TL layout) ------------------------------------------------------------------------
    def _qkv(self, which: str, layer: int) -> torch.Tensor:
        if self.family.fused_qkv:
            w = self.parameter("qkv", layer)  # [d, 3d]
            d = w.shape[0]
            part = "qkv".index(which)
            return w[:, part * d : (part + 1) * d]
        return self._matrix(which, layer)

    def _heads(self, m: torch.Tensor, heads: int) -> torch.Tensor:  # [d, H*d_h] -> [H, d, d_h]
        d = m.shape[0]
        return m.reshape(d, heads, -1).permute(1, 0, 2)

    def W_Q(self, layer: int) -> torch.Tensor:
        return self._heads(self._qkv("q", layer), self.n_heads)

    def W_K(self, layer: int) -> torch.Tensor:
        return self._heads(self._qkv("k", layer), self.n_kv_heads)

    def W_V(self, layer: int) -> torch.Tensor:
        return self._heads(self._qkv("v", layer), self.n_kv_heads)

    def b_V(self, layer: int) -> torch.Tensor:
        if self.family.fused_qkv:
            b = self.parameter("qkv", layer, "bias")
            d = b.shape[0] // 3
            b = b[2 * d :]
        else:
            b = getattr(self.module("v", layer), "bias", None)
            if b is None:
                return torch.zeros(self.n_kv_heads, self.W_V(layer).shape[-1])
        return b.reshape(self.n_kv_heads, -1)

    def W_O(self, layer: int) -> torch.Tensor:
        m = self._matrix("o", layer)  # [H*d_h, d]
        return m.reshape(self.n_heads, -1, m.shape[1])

    def b_O(self, layer: int) -> torch.Tensor:
        b = getattr(self.module("o", layer), "bias", None)
        return b if b is not None else torch.zeros(self._matrix("o", layer).shape[1])

    def W_in(self, layer: int) -> torch.Tensor:
        return self._matrix("in", layer)

    def W_gate(self, layer: int) -> torch.Tensor:
        return self._matrix("gate", layer)

    def W_out(self, layer: int) -> torch.Tensor:
        return self._matrix("out", layer)

    def b_out(self, layer: int) -> torch.Tensor:
        b = getattr(self.module("out", layer), "bias", None)
        return b if b is not None else torch.zeros(self._matrix("out", layer).shape[1])

    @property
    def W_U(self) -> torch.Tensor:
        return self.parameter("unembed").T

    @property
    def W_E(self) -> torch.Tensor:
        return self.parameter("embed")

    def ln_scale(self, which: str, layer: int | None = None) -> torch.Tensor:
        """Gain of ``ln1``/``ln2`` (per layer) or ``ln_final``."""
        return self.parameter(which, layer)

    @property
    def b_U(self) -> torch.Tensor:
        """Unembedding bias ``[V]`` (zeros when the model has none)."""
        b = getattr(self.module("unembed"), "bias", None)
        return b if b is not None else torch.zeros(self.parameter("unembed").shape[0])

    def ln_bias(self, which: str, layer: int | None = None) -> torch.Tensor:
        """Bias of ``ln1``/``ln2`` (per layer) or ``ln_final`` (zeros for RMSNorm)."""
        b = getattr(self.module(which, layer), "bias", None)
        return b if b is not None else torch.zeros_like(self.parameter(which, layer))

    def _a_norm(self) -> torch.nn.Module:
        return self.module("ln_final") if "ln_final" in self.family.linears else self.module("ln1", 0)

    @property
    def norm_kind(self) -> str:
        """``"layernorm"`` (centres, has a bias) or ``"rmsnorm"``: how every norm of the model works."""
        from conceptkit.backends.families import norm_kind

        return norm_kind(self._a_norm())

    @property
    def norm_eps(self) -> float:
        """The epsilon the norms add to the variance (``hook_scale = sqrt(mean(x_c^2) + eps)``)."""
        from conceptkit.backends.families import norm_eps

        return norm_eps(self._a_norm())

    def mlp_activation(self, layer: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
        """The MLP's elementwise nonlinearity at ``layer`` (SiLU for Llama, GELU-new for GPT-2),
        as the module itself runs it: weight-level methods (ObsProp's MLP tangent, ROCR's keys)
        need it and should not guess it from a config name.

        Read from the block's own activation module (``act_fn``, ``act``, ``activation_fn``,
        ``intermediate_act_fn``); else from the model config's ``hidden_act`` /
        ``activation_function`` through ``transformers.activations``."""
        names = ("act_fn", "act", "activation_fn", "intermediate_act_fn", "activation")
        for role in ("out", "in", "gate"):
            if role not in self.family.linears:
                continue
            path = apply_prefix(self.family.linears[role].replace("{l}", str(layer)), self._prefix) or ""
            for _ in range(3):  # the linear's parent, or a wrapper's parent (TransformerBridge components)
                path = path.rpartition(".")[0]
                if not path:
                    break
                try:
                    owner = self._root.get_submodule(path)
                except AttributeError:
                    break
                for name in names:
                    fn = getattr(owner, name, None)
                    if callable(fn) and not isinstance(fn, (torch.nn.Linear, type)):
                        return fn
        cfg = getattr(self._root, "config", None) or getattr(self._root, "cfg", None)
        name = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None) or getattr(cfg, "act_fn", None)
        if isinstance(name, str):
            from transformers.activations import ACT2FN

            if name in ACT2FN:
                return ACT2FN[name]
            raise InputError(f"MLP activation {name!r} of this model is unknown to transformers.activations")
        raise InputError(f"cannot tell the MLP activation of layer {layer}: no activation module on the block and none in the config")

    def ov(self, layer: int, head: int) -> torch.Tensor:
        """The OV circuit ``W_V[h // group] @ W_O[h]`` ``[d, d]`` (grouped KV heads repeat)."""
        group = self.n_heads // self.n_kv_heads
        return self.W_V(layer)[head // group] @ self.W_O(layer)[head]

    # -- edits ------------------------------------------------------------------------------------
    def edit(self, role: str, layer: int | None, fn: Callable[[torch.Tensor], torch.Tensor], kind: str = "weight") -> Handle:
        """Replace a parameter by ``fn(current)`` (HF layout); the handle restores the exact bits."""
        return replace_parameter(self.parameter(role, layer, kind), fn, f"{role!r} at layer {layer}")

    def rank_one_update(self, role: str, layer: int | None, u: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> Handle:
        """``W <- W + scale * u vᵀ`` with ``W`` in TL ``[in, out]`` layout (``u`` in, ``v`` out).

        For ``out`` (the MLP down-projection, ``[d_mlp, d]``) ``u`` is a key and ``v`` a value,
        the form rank-one editors (ROME, ROCR) use. A :class:`conceptkit.WeightEdit` of kind
        ``low_rank``, applied through the ledger.
        """
        from conceptkit.edits import WeightEdit

        u = u.detach().reshape(-1, 1)
        return self.apply(WeightEdit.low_rank(u if scale == 1.0 else scale * u, v.detach().reshape(-1, 1), role=role, layer=layer))

    def project_out(self, role: str, layer: int | None, direction: torch.Tensor, side: str = "out") -> Handle:
        """Remove ``direction`` from the output (``side="out"``) or input space of a linear map."""
        def fn(w: torch.Tensor) -> torch.Tensor:
            m = self.in_out(role, w)
            d = direction.to(w.dtype).reshape(-1)
            d = d / d.norm()
            if side == "out":
                m = m - torch.outer(m @ d, d)
            elif side == "in":
                m = m - torch.outer(d, d @ m)
            else:
                raise InputError(f"side must be 'in' or 'out', got {side!r}")
            return self.in_out(role, m)

        return self.edit(role, layer, fn)


def weights_of(root: torch.nn.Module, family: Family, prefix: str, cfg: Any) -> Weights:
    n_heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or getattr(cfg, "n_heads"))
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "n_key_value_heads", None) or n_heads)
    return Weights(root, family, prefix, n_heads, n_kv)
