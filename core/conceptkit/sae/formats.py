"""SAE folders on disk: SAELens (read and write) and EleutherAI sparsify (read).

* **SAELens** (``sae-lens`` 6.x): ``cfg.json`` plus ``sae_weights.safetensors`` holding
  ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec`` and, for ``jumprelu``,
  ``threshold`` (training checkpoints may hold ``log_threshold``). ``cfg.json`` names the
  ``architecture`` (``standard``, ``jumprelu``, ``topk``; older configs say
  ``activation_fn_str``), ``k`` for TopK, ``apply_b_dec_to_input``, ``normalize_activations``
  and the hook in ``metadata.hook_name`` (6.x), ``meta`` or top-level ``hook_name`` (5.x).
  ``sae-lens`` itself cannot be installed beside TransformerLens 4, so this is read directly.
* **sparsify** (``eai-sparsify``): one folder per hookpoint with ``cfg.json`` (the
  ``SparseCoderConfig`` fields plus ``d_in``) and ``sae.safetensors`` holding the
  ``nn.Linear`` encoder ``encoder.weight [d_sae, d_in]``, ``encoder.bias [d_sae]``, and
  ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``. Encoding is ``topk(relu((x - b_dec) @ W.T + b))``,
  which is a SAELens TopK SAE with ``W_enc = encoder.weight.T`` (ReLU and top-k commute).
  A multi-layer release is a parent folder of such folders named by hookpoint (``layers.12``);
  pass ``hookpoint=``.

Every refusal names the file and the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from conceptkit.errors import InputError
from conceptkit.sae.base import ARCHITECTURES, NORM_MODES, SAE

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"


class SAEFormatError(InputError):
    """An SAE folder or file that cannot be read: names the file and the field."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SAEFormatError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SAEFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise SAEFormatError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SAEFormatError(f"{path}: not a readable safetensors file ({exc})") from None


def _need(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    if name not in tensors:
        raise SAEFormatError(f"{path}: missing tensor {name!r} (has {sorted(tensors)})")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise SAEFormatError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def _cfg_int(cfg: dict[str, Any], key: str, path: Path) -> int | None:
    if key not in cfg or cfg[key] is None:
        return None
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise SAEFormatError(f"{path}: field {key!r} must be an integer, got {value!r}")
    return int(value)


# -- SAELens ------------------------------------------------------------------------------------------
def _saelens_architecture(cfg: dict[str, Any], path: Path) -> tuple[str, int | None]:
    arch = cfg.get("architecture")
    k = _cfg_int(cfg, "k", path)
    if arch is None:  # SAELens <= 5 configs
        fn = cfg.get("activation_fn_str", "relu")
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if fn == "topk":
            arch, k = "topk", k if k is not None else _cfg_int(kwargs, "k", path)
        elif fn == "relu":
            arch = "standard"
        else:
            raise SAEFormatError(f"{path}: field 'activation_fn_str' is {fn!r}; supported: 'relu', 'topk'")
    if arch == "batchtopk":
        raise SAEFormatError(
            f"{path}: field 'architecture' is 'batchtopk', a training checkpoint; SAELens saves BatchTopK SAEs "
            "for inference as 'jumprelu' with a threshold (save_inference_model)"
        )
    if arch not in ARCHITECTURES:
        raise SAEFormatError(f"{path}: field 'architecture' is {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    if arch == "topk" and k is None:
        raise SAEFormatError(f"{path}: field 'k' is missing (a topk SAE needs it)")
    return arch, (k if arch == "topk" else None)


def read_saelens(folder: str | Path, **overrides: Any) -> SAE:
    """Read a SAELens folder into an :class:`SAE`; ``overrides`` set e.g. ``site=``."""
    folder = Path(folder)
    cfg_path, w_path = folder / SAELENS_CFG, folder / SAELENS_WEIGHTS
    cfg = _read_json(cfg_path)
    tensors = _read_tensors(w_path)
    arch, k = _saelens_architecture(cfg, cfg_path)
    if "W_enc" not in tensors:
        raise SAEFormatError(f"{w_path}: missing tensor 'W_enc' (has {sorted(tensors)})")
    if tensors["W_enc"].dim() != 2:
        raise SAEFormatError(f"{w_path}: tensor 'W_enc' has shape {tuple(tensors['W_enc'].shape)}, expected [d_in, d_sae]")
    d_in, d_sae = (int(n) for n in tensors["W_enc"].shape)
    for key, n in (("d_in", d_in), ("d_sae", d_sae)):
        declared = _cfg_int(cfg, key, cfg_path)
        if declared is not None and declared != n:
            raise SAEFormatError(f"{cfg_path}: field {key!r} is {declared} but {w_path.name} has {n}")
    W_enc = tensors["W_enc"]
    b_enc = _need(tensors, "b_enc", (d_sae,), w_path)
    W_dec = _need(tensors, "W_dec", (d_sae, d_in), w_path)
    b_dec = _need(tensors, "b_dec", (d_in,), w_path)
    threshold = None
    if arch == "jumprelu":
        if "threshold" in tensors:
            threshold = _need(tensors, "threshold", (d_sae,), w_path)
        elif "log_threshold" in tensors:
            threshold = _need(tensors, "log_threshold", (d_sae,), w_path).exp()
        else:
            raise SAEFormatError(f"{w_path}: missing tensor 'threshold' (a jumprelu SAE needs it)")
    known = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold", "log_threshold"}
    for name, t in tensors.items():
        if name in known:
            continue
        if name == "scaling_factor" and torch.all(t == 1):  # SAELens 3-5 finetuning scale, unused
            continue
        raise SAEFormatError(f"{w_path}: unexpected tensor {name!r} (this reader understands {sorted(known)})")
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in NORM_MODES:
        raise SAEFormatError(f"{cfg_path}: field 'normalize_activations' is {norm!r}; supported: {', '.join(NORM_MODES)}")
    reshape = cfg.get("reshape_activations", "none") or "none"
    if reshape not in ("none", "hook_z"):
        raise SAEFormatError(f"{cfg_path}: field 'reshape_activations' is {reshape!r}; supported: 'none', 'hook_z'")
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    if not isinstance(meta, dict):
        raise SAEFormatError(f"{cfg_path}: field 'metadata' must be an object")
    ours = cfg.get("conceptkit") or {}
    kwargs: dict[str, Any] = dict(
        architecture=arch,
        threshold=threshold,
        k=k,
        site=meta.get("hook_name") or cfg.get("hook_name"),
        model_name=meta.get("model_name") or cfg.get("model_name"),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=norm,
        norm_scaling_factor=cfg.get("norm_scaling_factor"),
        metadata=dict(ours.get("metadata") or {}, **({"reshape_activations": reshape} if reshape != "none" else {})),
    )
    kwargs.update(overrides)
    return SAE(W_enc, b_enc, W_dec, b_dec, **kwargs)  # the tensors' own dtype wins over cfg "dtype"


def saelens_config(sae: SAE, **extra: Any) -> dict[str, Any]:
    """The ``cfg.json`` SAELens 6 writes for this SAE (plus a ``conceptkit`` section it ignores)."""
    cfg: dict[str, Any] = {
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": sae.normalize_activations,
        "reshape_activations": sae.metadata.get("reshape_activations", "none"),
        "metadata": {"model_name": sae.model_name, "hook_name": sae.site},
    }
    if sae.k is not None:
        cfg["k"] = sae.k
    if sae.norm_scaling_factor is not None:
        cfg["norm_scaling_factor"] = sae.norm_scaling_factor
    meta = {k: v for k, v in sae.metadata.items() if k != "reshape_activations"}
    if meta or extra:
        cfg["conceptkit"] = {"metadata": meta, **extra}
    return cfg


def write_saelens(sae: SAE, folder: str | Path, **extra: Any) -> Path:
    """Write ``sae`` as a SAELens folder; reading it back gives the same tensors and config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({n: t.detach().cpu().contiguous() for n, t in sae.tensors().items()}, str(folder / SAELENS_WEIGHTS))
    (folder / SAELENS_CFG).write_text(json.dumps(saelens_config(sae, **extra), indent=2))
    return folder


# -- sparsify ------------------------------------------------------------------------------------------
_HOOKPOINT_SITES = [
    (re.compile(r"^(?:model\.|transformer\.)?(?:layers|h)\.(\d+)$"), "blocks.{}.hook_resid_post"),
    (re.compile(r"^(?:model\.|transformer\.)?(?:layers|h)\.(\d+)\.(?:mlp)$"), "blocks.{}.hook_mlp_out"),
    (re.compile(r"^(?:model\.|transformer\.)?(?:layers|h)\.(\d+)\.(?:self_attn|attn)$"), "blocks.{}.hook_attn_out"),
]


def sparsify_site(hookpoint: str) -> str | None:
    """Canonical site of a sparsify hookpoint (an HF module name): ``layers.12`` -> ``blocks.12.hook_resid_post``."""
    for pattern, template in _HOOKPOINT_SITES:
        m = pattern.match(hookpoint)
        if m:
            return template.format(m.group(1))
    return None


def read_sparsify(folder: str | Path, hookpoint: str | None = None, **overrides: Any) -> SAE:
    """Read an EleutherAI sparsify folder (one hookpoint, or ``hookpoint=`` of a release folder)."""
    folder = Path(folder)
    if hookpoint is not None:
        folder = folder / hookpoint
    cfg_path, w_path = folder / SAELENS_CFG, folder / SPARSIFY_WEIGHTS
    if not cfg_path.exists() and not w_path.exists():
        subs = sorted(p.name for p in folder.parent.iterdir() if (p / SPARSIFY_WEIGHTS).exists()) if folder.parent.exists() else []
        raise SAEFormatError(f"{folder}: no sparsify SAE here" + (f"; hookpoints: {', '.join(subs)}" if subs else ""))
    cfg = _read_json(cfg_path)
    tensors = _read_tensors(w_path)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SAEFormatError(f"{cfg_path}: field 'activation' is {activation!r}; supported: 'topk'")
    for flag in ("transcode", "skip_connection"):
        if cfg.get(flag):
            raise SAEFormatError(f"{cfg_path}: field {flag!r} is true; only plain autoencoders are SAEs (not transcoders/skip connections)")
    d_in = _cfg_int(cfg, "d_in", cfg_path)
    if d_in is None:
        raise SAEFormatError(f"{cfg_path}: field 'd_in' is missing")
    k = _cfg_int(cfg, "k", cfg_path)
    if k is None:
        raise SAEFormatError(f"{cfg_path}: field 'k' is missing")
    if "encoder.weight" not in tensors:
        raise SAEFormatError(f"{w_path}: missing tensor 'encoder.weight' (has {sorted(tensors)})")
    d_sae = int(tensors["encoder.weight"].shape[0])
    declared = _cfg_int(cfg, "num_latents", cfg_path) or 0
    expansion = _cfg_int(cfg, "expansion_factor", cfg_path)
    if declared and declared != d_sae:
        raise SAEFormatError(f"{cfg_path}: field 'num_latents' is {declared} but {w_path.name} has {d_sae}")
    if not declared and expansion and expansion * d_in != d_sae:
        raise SAEFormatError(f"{cfg_path}: field 'expansion_factor' is {expansion} (x d_in={d_in}) but {w_path.name} has {d_sae} latents")
    W = _need(tensors, "encoder.weight", (d_sae, d_in), w_path)
    b_enc = _need(tensors, "encoder.bias", (d_sae,), w_path)
    W_dec = _need(tensors, "W_dec", (d_sae, d_in), w_path)
    b_dec = _need(tensors, "b_dec", (d_in,), w_path)
    extra = sorted(set(tensors) - {"encoder.weight", "encoder.bias", "W_dec", "b_dec"})
    if extra:
        raise SAEFormatError(f"{w_path}: unexpected tensor {extra[0]!r} (W_skip/transcoder weights are not supported)")
    name = folder.name
    kwargs: dict[str, Any] = dict(
        architecture="topk", k=k, site=sparsify_site(name), apply_b_dec_to_input=True,
        metadata={"format": "sparsify", "sparsify_hookpoint": name,
                  "sparsify_cfg": {key: v for key, v in cfg.items() if isinstance(v, (int, float, str, bool))}},
    )
    kwargs.update(overrides)
    return SAE(W.T.contiguous(), b_enc, W_dec, b_dec, **kwargs)


def write_sparsify(sae: SAE, folder: str | Path) -> Path:
    """Write a TopK SAE in sparsify's layout (``cfg.json`` + ``sae.safetensors``)."""
    if sae.architecture != "topk" or not sae.apply_b_dec_to_input or sae.normalize_activations != "none":
        raise InputError(f"sparsify folders hold plain TopK SAEs with b_dec applied to the input; {sae!r} is not one")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"encoder.weight": sae.W_enc.T.contiguous(), "encoder.bias": sae.b_enc.contiguous(),
               "W_dec": sae.W_dec.contiguous(), "b_dec": sae.b_dec.contiguous()}
    save_file(tensors, str(folder / SPARSIFY_WEIGHTS))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": sae.d_sae,
           "k": sae.k, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": sae.d_in}
    (folder / SAELENS_CFG).write_text(json.dumps(cfg))
    return folder


# -- either ------------------------------------------------------------------------------------------------
def read_folder(folder: str | Path, hookpoint: str | None = None, **overrides: Any) -> SAE:
    """Read an SAE folder, SAELens or sparsify, told apart by the weights file's name."""
    folder = Path(folder)
    if hookpoint is not None:
        return read_sparsify(folder, hookpoint, **overrides)
    if not folder.is_dir():
        raise SAEFormatError(f"{folder}: not a folder")
    if (folder / SAELENS_WEIGHTS).exists():
        return read_saelens(folder, **overrides)
    if (folder / SPARSIFY_WEIGHTS).exists():
        return read_sparsify(folder, **overrides)
    subs = sorted(p.name for p in folder.iterdir() if (p / SPARSIFY_WEIGHTS).exists() or (p / SAELENS_WEIGHTS).exists())
    if subs:
        raise SAEFormatError(f"{folder}: holds several SAEs ({', '.join(subs[:8])}); pass hookpoint= or the sub-folder")
    raise SAEFormatError(f"{folder}: neither {SAELENS_WEIGHTS} (SAELens) nor {SPARSIFY_WEIGHTS} (sparsify) found")
