"""Architecture families: where each canonical site and weight lives in a HuggingFace module tree.

One table per family (Llama, GPT-2, BERT, and TransformerLens' native models) maps canonical
sites to ``(module path, input|output, view)`` and weight roles to parameters with their layout.
The nnsight/HF backend hooks these modules; both backends read and edit weights through them.
See ``shared/methods/hook_points.md`` for the sources of every entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from conceptkit.errors import InputError


@dataclass(frozen=True)
class Tap:
    """Where a canonical site is read: a module's input or output, plus a view of it."""

    path: str  # module path with ``{l}`` for the block index
    io: Literal["input", "output"] = "output"
    view: str = "identity"  # identity | heads | heads_kv | fused_q | fused_k | fused_v | scale | pattern


@dataclass(frozen=True)
class Family:
    name: str
    blocks: str  # path of the block list, e.g. "model.layers"
    taps: dict[str, Tap]
    linears: dict[str, str]  # weight role -> module path (``{l}`` for per-block)
    conv1d: bool = False  # GPT-2 stores [in, out]
    fused_qkv: bool = False
    post_ln: bool = False


_LLAMA = Family(
    name="llama",
    blocks="model.layers",
    taps={
        "hook_embed": Tap("model.embed_tokens"),
        "hook_resid_pre": Tap("model.layers.{l}", "input"),
        "ln1.hook_scale": Tap("model.layers.{l}.input_layernorm", view="scale"),
        "ln1.hook_out": Tap("model.layers.{l}.input_layernorm"),
        "attn.hook_q": Tap("model.layers.{l}.self_attn.q_proj", view="heads"),
        "attn.hook_k": Tap("model.layers.{l}.self_attn.k_proj", view="heads_kv"),
        "attn.hook_v": Tap("model.layers.{l}.self_attn.v_proj", view="heads_kv"),
        "attn.hook_pattern": Tap("model.layers.{l}.self_attn", view="pattern"),
        "attn.hook_z": Tap("model.layers.{l}.self_attn.o_proj", "input", view="heads"),
        "hook_attn_out": Tap("model.layers.{l}.self_attn"),
        "hook_resid_mid": Tap("model.layers.{l}.post_attention_layernorm", "input"),
        "ln2.hook_scale": Tap("model.layers.{l}.post_attention_layernorm", view="scale"),
        "ln2.hook_out": Tap("model.layers.{l}.post_attention_layernorm"),
        "mlp.hook_pre": Tap("model.layers.{l}.mlp.gate_proj"),
        "mlp.hook_pre_linear": Tap("model.layers.{l}.mlp.up_proj"),
        "mlp.hook_post": Tap("model.layers.{l}.mlp.down_proj", "input"),
        "hook_mlp_out": Tap("model.layers.{l}.mlp"),
        "hook_resid_post": Tap("model.layers.{l}"),
        "ln_final.hook_scale": Tap("model.norm", view="scale"),
        "ln_final.hook_out": Tap("model.norm"),
        "hook_unembed": Tap("lm_head"),
    },
    linears={
        "q": "model.layers.{l}.self_attn.q_proj",
        "k": "model.layers.{l}.self_attn.k_proj",
        "v": "model.layers.{l}.self_attn.v_proj",
        "o": "model.layers.{l}.self_attn.o_proj",
        "gate": "model.layers.{l}.mlp.gate_proj",
        "in": "model.layers.{l}.mlp.up_proj",
        "out": "model.layers.{l}.mlp.down_proj",
        "ln1": "model.layers.{l}.input_layernorm",
        "ln2": "model.layers.{l}.post_attention_layernorm",
        "ln_final": "model.norm",
        "unembed": "lm_head",
        "embed": "model.embed_tokens",
    },
)

_GPT2 = Family(
    name="gpt2",
    blocks="transformer.h",
    taps={
        "hook_embed": Tap("transformer.wte"),
        "hook_pos_embed": Tap("transformer.wpe"),
        "hook_resid_pre": Tap("transformer.h.{l}", "input"),
        "ln1.hook_scale": Tap("transformer.h.{l}.ln_1", view="scale"),
        "ln1.hook_out": Tap("transformer.h.{l}.ln_1"),
        "attn.hook_q": Tap("transformer.h.{l}.attn.c_attn", view="fused_q"),
        "attn.hook_k": Tap("transformer.h.{l}.attn.c_attn", view="fused_k"),
        "attn.hook_v": Tap("transformer.h.{l}.attn.c_attn", view="fused_v"),
        "attn.hook_pattern": Tap("transformer.h.{l}.attn", view="pattern"),
        "attn.hook_z": Tap("transformer.h.{l}.attn.c_proj", "input", view="heads"),
        "hook_attn_out": Tap("transformer.h.{l}.attn"),
        "hook_resid_mid": Tap("transformer.h.{l}.ln_2", "input"),
        "ln2.hook_scale": Tap("transformer.h.{l}.ln_2", view="scale"),
        "ln2.hook_out": Tap("transformer.h.{l}.ln_2"),
        "mlp.hook_pre": Tap("transformer.h.{l}.mlp.c_fc"),
        "mlp.hook_post": Tap("transformer.h.{l}.mlp.c_proj", "input"),
        "hook_mlp_out": Tap("transformer.h.{l}.mlp"),
        "hook_resid_post": Tap("transformer.h.{l}"),
        "ln_final.hook_scale": Tap("transformer.ln_f", view="scale"),
        "ln_final.hook_out": Tap("transformer.ln_f"),
        "hook_unembed": Tap("lm_head"),
    },
    linears={
        "qkv": "transformer.h.{l}.attn.c_attn",
        "o": "transformer.h.{l}.attn.c_proj",
        "in": "transformer.h.{l}.mlp.c_fc",
        "out": "transformer.h.{l}.mlp.c_proj",
        "ln1": "transformer.h.{l}.ln_1",
        "ln2": "transformer.h.{l}.ln_2",
        "ln_final": "transformer.ln_f",
        "unembed": "lm_head",
        "embed": "transformer.wte",
    },
    conv1d=True,
    fused_qkv=True,
)

# BERT is post-LN: only sites whose meaning matches the pre-LN names are listed (hook_points.md §4).
_BERT = Family(
    name="bert",
    blocks="encoder.layer",
    taps={
        "hook_embed": Tap("embeddings.word_embeddings"),
        "hook_pos_embed": Tap("embeddings.position_embeddings"),
        "hook_resid_pre": Tap("encoder.layer.{l}", "input"),
        "attn.hook_q": Tap("encoder.layer.{l}.attention.self.query", view="heads"),
        "attn.hook_k": Tap("encoder.layer.{l}.attention.self.key", view="heads"),
        "attn.hook_v": Tap("encoder.layer.{l}.attention.self.value", view="heads"),
        "attn.hook_z": Tap("encoder.layer.{l}.attention.output.dense", "input", view="heads"),
        "hook_attn_out": Tap("encoder.layer.{l}.attention.output.dense"),
        "mlp.hook_pre": Tap("encoder.layer.{l}.intermediate.dense"),
        "mlp.hook_post": Tap("encoder.layer.{l}.output.dense", "input"),
        "hook_mlp_out": Tap("encoder.layer.{l}.output.dense"),
        "hook_resid_post": Tap("encoder.layer.{l}"),
    },
    linears={
        "q": "encoder.layer.{l}.attention.self.query",
        "k": "encoder.layer.{l}.attention.self.key",
        "v": "encoder.layer.{l}.attention.self.value",
        "o": "encoder.layer.{l}.attention.output.dense",
        "in": "encoder.layer.{l}.intermediate.dense",
        "out": "encoder.layer.{l}.output.dense",
        "ln1": "encoder.layer.{l}.attention.output.LayerNorm",
        "ln2": "encoder.layer.{l}.output.LayerNorm",
        "embed": "embeddings.word_embeddings",
    },
    post_ln=True,
)

_P = "._original_component"
# TransformerLens native models (``TransformerBridge.boot_native``): HF-layout Linear modules.
_NATIVE = Family(
    name="tl_native",
    blocks="layers",
    taps={},
    linears={
        "q": f"layers.{{l}}{_P}.attn{_P}.q{_P}",
        "k": f"layers.{{l}}{_P}.attn{_P}.k{_P}",
        "v": f"layers.{{l}}{_P}.attn{_P}.v{_P}",
        "o": f"layers.{{l}}{_P}.attn{_P}.o{_P}",
        "in": f"layers.{{l}}{_P}.mlp{_P}.fc_in{_P}",
        "out": f"layers.{{l}}{_P}.mlp{_P}.fc_out{_P}",
        "ln1": f"layers.{{l}}{_P}.ln1{_P}",
        "ln2": f"layers.{{l}}{_P}.ln2{_P}",
        "ln_final": f"ln_out{_P}",
        "unembed": f"head{_P}",
    },
)

FAMILIES = {f.name: f for f in (_LLAMA, _GPT2, _BERT, _NATIVE)}
_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gpt2": "gpt2",
    "bert": "bert",
}


def detect(hf_model: Any) -> tuple[Family, str]:
    """The family of an HF module tree and the prefix to reach the family's root from it."""
    if type(hf_model).__name__ == "NativeModel":
        return _NATIVE, ""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    name = _MODEL_TYPES.get(model_type or "")
    if name is None:
        raise InputError(
            f"architecture {model_type or type(hf_model).__name__!r} has no site map yet; "
            f"supported: {sorted(set(_MODEL_TYPES))}. Raw module paths still work."
        )
    family = FAMILIES[name]
    # Base models without the LM head wrapper (LlamaModel, GPT2Model) or BERT inside a head model.
    if name == "llama" and not hasattr(hf_model, "model") and hasattr(hf_model, "layers"):
        return family, "-model."
    if name == "gpt2" and not hasattr(hf_model, "transformer") and hasattr(hf_model, "h"):
        return family, "-transformer."
    if name == "bert" and hasattr(hf_model, "bert"):
        return family, "bert."
    return family, ""


def apply_prefix(path: str, prefix: str) -> str | None:
    """Adjust a family path for a base model (``-model.`` strips) or a wrapper (adds)."""
    if not prefix:
        return path
    if prefix.startswith("-"):
        strip = prefix[1:]
        return path[len(strip) :] if path.startswith(strip) else None
    return prefix + path


def view_in(t: torch.Tensor, view: str, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Module tensor -> canonical site tensor."""
    if view == "identity":
        return t
    if view in ("heads", "heads_kv"):
        h = n_heads if view == "heads" else n_kv_heads
        return t.reshape(*t.shape[:-1], h, t.shape[-1] // h)
    d = t.shape[-1] // 3
    part = {"fused_q": 0, "fused_k": 1, "fused_v": 2}[view]
    chunk = t[..., part * d : (part + 1) * d]
    return chunk.reshape(*chunk.shape[:-1], n_heads, d // n_heads)


def view_out(original: torch.Tensor, new: torch.Tensor, view: str) -> torch.Tensor:
    """Canonical site tensor -> module tensor (inverse of :func:`view_in`)."""
    if view == "identity":
        return new
    flat = new.reshape(*new.shape[:-2], -1)
    if view in ("heads", "heads_kv"):
        return flat
    d = original.shape[-1] // 3
    part = {"fused_q": 0, "fused_k": 1, "fused_v": 2}[view]
    pieces = [original[..., i * d : (i + 1) * d] for i in range(3)]
    pieces[part] = flat
    return torch.cat(pieces, -1)


def norm_kind(module: torch.nn.Module) -> Literal["layernorm", "rmsnorm"]:
    """Whether a normalisation module centres its input (LayerNorm) or not (RMSNorm)."""
    module = _unwrap(module)
    if isinstance(module, torch.nn.LayerNorm):
        return "layernorm"
    name = type(module).__name__.lower()
    if "rms" in name:
        return "rmsnorm"
    if "layernorm" in name:
        return "layernorm"
    raise InputError(f"{type(module).__name__} is not a normalisation module conceptkit knows (LayerNorm, RMSNorm)")


def norm_eps(module: torch.nn.Module) -> float:
    """The epsilon a normalisation module adds to the variance."""
    module = _unwrap(module)
    for attr in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise InputError(f"{type(module).__name__} has no epsilon attribute (eps or variance_epsilon)")


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The HF module inside a TransformerLens bridge component (``original_component``)."""
    inner = getattr(module, "original_component", None)
    return inner if isinstance(inner, torch.nn.Module) else module
