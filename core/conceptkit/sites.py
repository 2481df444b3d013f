"""Canonical hook-point names (TransformerLens style) and parsing.

conceptkit addresses every activation with the names the field already uses
(``blocks.12.hook_resid_post``); SAELens metadata uses them too. Backends map them to their own
hook points or module paths. Raw module paths (``model.layers.3.mlp.down_proj:input``) are
accepted wherever a site is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conceptkit.errors import UnknownNameError

#: Per-block sites, in execution order. ``{l}`` is the block index.
BLOCK_SITES: tuple[str, ...] = (
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_out",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_scale",
    "ln2.hook_out",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
#: Sites outside the blocks.
GLOBAL_SITES_BEFORE: tuple[str, ...] = ("hook_embed", "hook_pos_embed")
GLOBAL_SITES_AFTER: tuple[str, ...] = ("ln_final.hook_scale", "ln_final.hook_out", "hook_unembed")

# Shapes: every site is ``[B, T, ...]`` (one row per token) except ``attn.hook_pattern``,
# ``[B, H, Tq, Tk]`` (TransformerLens' layout), whose token axis is the query axis. The norms'
# ``hook_scale`` is TransformerLens' divisor ``sqrt(mean(x_c^2) + eps)`` ``[B, T, 1]``, so
# ``ln.hook_out == x_c / hook_scale * gain (+ bias)`` with ``x_c`` the input, centred for LayerNorm.
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Site:
    """A parsed canonical site: ``layer`` is ``None`` for global sites."""

    name: str
    layer: int | None
    kind: str  # the per-block suffix, e.g. "hook_resid_post", or the global name

    def __str__(self) -> str:
        return self.name


def parse(name: str) -> Site:
    """Split ``blocks.{l}.suffix`` into layer and suffix (global names have ``layer=None``)."""
    match = _BLOCK_RE.match(name)
    if match:
        return Site(name, int(match.group(1)), match.group(2))
    return Site(name, None, name)


def is_pattern_site(name: str) -> bool:
    """Whether ``name`` is an attention pattern ``[B, H, Tq, Tk]`` (token axis 2, not 1)."""
    return name.endswith("attn.hook_pattern")


def block_site(layer: int, kind: str) -> str:
    """``block_site(3, "hook_resid_post") == "blocks.3.hook_resid_post"``."""
    return f"blocks.{layer}.{kind}"


def canonical_sites(n_layers: int, block_kinds: tuple[str, ...], global_kinds: tuple[str, ...]) -> list[str]:
    """All canonical names for a model with ``n_layers`` blocks, in execution order."""
    before = [g for g in GLOBAL_SITES_BEFORE if g in global_kinds]
    after = [g for g in GLOBAL_SITES_AFTER if g in global_kinds]
    blocks = [block_site(layer, kind) for layer in range(n_layers) for kind in BLOCK_SITES if kind in block_kinds]
    return before + blocks + after


def unknown_site(name: str, known: list[str]) -> UnknownNameError:
    """The error for a site the model lacks, suggesting the closest canonical names."""
    return UnknownNameError("site", name, known)
