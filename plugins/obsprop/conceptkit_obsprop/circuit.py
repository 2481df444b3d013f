"""A model's weights as the functions ObsProp needs: norms, OV circuits, MLPs, the unembedding.

Everything is read through ``model.weights`` (TL layout, HF parameters underneath, so the same
numbers on every backend), the norm kind and epsilon (``weights.norm_kind`` / ``norm_eps``)
and the MLP nonlinearity (``weights.mlp_activation``, the block's own activation module) included.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import torch

from conceptkit.api import InputError
from conceptkit_obsprop import pullback as pb


class PostLNError(InputError):
    """ObsProp's algebra assumes pre-LN blocks (``resid_mid = resid_pre + attn_out``)."""


class Circuit:
    """Weight-level view of a pre-LN decoder, in a chosen dtype (float64 for exact tests)."""

    def __init__(self, model: Any, dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.dtype = dtype
        w = model.weights
        self.w = w
        if getattr(w.family, "post_ln", False) or getattr(model, "post_ln", False):
            raise PostLNError(
                f"model {model.name!r} is post-LN ({w.family.name}): its residual stream does not satisfy "
                "resid_mid = resid_pre + attn_out, so observable propagation does not apply; use a pre-LN decoder"
            )
        if "unembed" not in w.family.linears:
            raise InputError(f"model {model.name!r} has no unembedding: ObsProp needs logits")
        self.n_layers = int(model.n_layers)
        self.d = int(model.d_model)
        self.n_heads, self.n_kv = int(w.n_heads), int(w.n_kv_heads)
        self.group = self.n_heads // self.n_kv
        self.gated = "gate" in w.family.linears
        self.norm_kind = w.norm_kind
        self.eps = float(w.norm_eps)
        self._act = w.mlp_activation(0)  # one nonlinearity for every block of the decoders ObsProp supports
        self._cache: dict[tuple, torch.Tensor] = {}

    # -- cached weights ------------------------------------------------------------------------
    def _get(self, key: tuple, fn: Any) -> torch.Tensor:
        # A view of the parameter when the dtype matches (no copy of W_U's 28M entries); a
        # Circuit lives for one computation, so it reads the weights as they are at first use.
        if key not in self._cache:
            self._cache[key] = fn().detach().to(self.dtype)
        return self._cache[key]

    @property
    def W_U(self) -> torch.Tensor:
        return self._get(("W_U",), lambda: self.w.W_U)

    def gamma(self, which: str, layer: int | None = None) -> torch.Tensor:
        return self._get(("gamma", which, layer), lambda: self.w.ln_scale(which, layer))

    def beta(self, which: str, layer: int | None = None) -> torch.Tensor | None:
        key = ("beta", which, layer)
        if key not in self._cache:
            bias = getattr(self.w.module(which, layer), "bias", None) if self.norm_kind == "layernorm" else None
            self._cache[key] = None if bias is None else bias.detach().to(self.dtype).clone()  # type: ignore[assignment]
        return self._cache[key]

    def W_V(self, layer: int) -> torch.Tensor:
        return self._get(("W_V", layer), lambda: self.w.W_V(layer))

    def W_O(self, layer: int) -> torch.Tensor:
        return self._get(("W_O", layer), lambda: self.w.W_O(layer))

    def W_in(self, layer: int) -> torch.Tensor:
        return self._get(("W_in", layer), lambda: self.w.W_in(layer))

    def W_gate(self, layer: int) -> torch.Tensor:
        return self._get(("W_gate", layer), lambda: self.w.W_gate(layer))

    def W_out(self, layer: int) -> torch.Tensor:
        return self._get(("W_out", layer), lambda: self.w.W_out(layer))

    def _bias(self, role: str, layer: int) -> torch.Tensor | None:
        key = ("bias", role, layer)
        if key not in self._cache:
            b = getattr(self.w.module(role, layer), "bias", None)
            self._cache[key] = None if b is None else b.detach().to(self.dtype).clone()  # type: ignore[assignment]
        return self._cache[key]

    @cached_property
    def has_unembed_bias(self) -> bool:
        return getattr(self.w.module("unembed"), "bias", None) is not None

    # -- functions ---------------------------------------------------------------------------------
    def norm_role(self, sublayer: str) -> str:
        """The norm that feeds a node: ``ln1`` for attention, ``ln2`` for MLPs (the reference
        swaps them; spec §5 step 5)."""
        return {"attn": "ln1", "mlp": "ln2", "final": "ln_final"}[sublayer]

    def norm(self, which: str, layer: int | None, x: torch.Tensor) -> torch.Tensor:
        return pb.norm_forward(x.to(self.dtype), self.gamma(which, layer), self.beta(which, layer), self.norm_kind, self.eps)

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP on its (normalised) input ``x [..., d]``, from the weights."""
        x = x.to(self.dtype)
        up = x @ self.W_in(layer)
        b_in = self._bias("in", layer)
        if b_in is not None:
            up = up + b_in
        if self.gated:
            gate = x @ self.W_gate(layer)
            b_g = self._bias("gate", layer)
            if b_g is not None:
                gate = gate + b_g
            hidden = self._act(gate) * up
        else:
            hidden = self._act(up)
        out = hidden @ self.W_out(layer)
        b_out = self._bias("out", layer)
        return out + b_out if b_out is not None else out

    def pull_norm(self, which: str, layer: int | None, y: torch.Tensor, x: torch.Tensor | None, mode: str) -> torch.Tensor:
        """Pull ``y`` back through a norm: ``approx`` (scale from ``x``), ``exact`` gradient, or ``none``."""
        if mode == "none":
            return y
        if mode == "approx":
            return pb.norm_approx_pullback(y, self.gamma(which, layer), self.norm_kind, None if x is None else x.to(self.dtype))
        if mode == "exact":
            if x is None:
                raise InputError("the exact norm gradient needs the norm's input: give a prompt_pair")
            return pb.norm_exact_pullback(y, x.to(self.dtype), self.gamma(which, layer), self.beta(which, layer), self.norm_kind, self.eps)
        raise InputError(f"unknown norm mode {mode!r}; use approx, exact or none")

    def head_features(self, layer: int, y: torch.Tensor) -> torch.Tensor:
        """``[H, d]``: every head's OV pull-back of ``y`` at ``layer``."""
        return pb.ov_pullback_all(self.W_V(layer), self.W_O(layer), y.to(self.dtype))

    def sqrt_d(self) -> float:
        return math.sqrt(self.d)
