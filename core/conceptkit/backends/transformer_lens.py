"""The TransformerLens backend: 4.x ``TransformerBridge`` and 3.x ``HookedTransformer``.

Canonical sites are TransformerLens' own names, so hooks go on the bridge's ``HookPoint`` with
``add_hook`` (which applies the bridge's shape conversions) and are removed through the handle
that added them, keeping ``hook_point.fwd_hooks`` exact. For post-LN BERT the bridge's names
mean other tensors (hook_points.md §4); those sites are remapped or not listed.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch

from conceptkit.backends.base import Model, ModelRef, SiteFn
from conceptkit.backends.families import detect
from conceptkit.backends.hf import weights_hash
from conceptkit.backends.weights import Weights, weights_of
from conceptkit.capabilities import Capability
from conceptkit.data import Batch, PaddingSide
from conceptkit.errors import InputError
from conceptkit.handles import Handle
from conceptkit._dist import dist_version
from conceptkit.sites import BLOCK_SITES, GLOBAL_SITES_AFTER, GLOBAL_SITES_BEFORE, canonical_sites

# Canonical kind -> bridge hook for post-LN BERT, where the bridge's pre-LN names differ.
_BERT_SITES = {
    "hook_resid_pre": "hook_resid_pre",
    "attn.hook_q": "attn.hook_q",
    "attn.hook_k": "attn.hook_k",
    "attn.hook_v": "attn.hook_v",
    "attn.hook_z": "attn.hook_z",
    "hook_attn_out": "attn.o.hook_out",
    "mlp.hook_pre": "mlp.in.hook_out",
    "mlp.hook_post": "mlp.out.hook_in",
    "hook_mlp_out": "mlp.out.hook_out",
    "hook_resid_post": "hook_resid_post",
}
_GLOBAL_BERT = {"hook_embed": "embed.hook_out", "hook_pos_embed": "pos_embed.hook_out"}


class TransformerLensModel(Model):
    backend_name: ClassVar[str] = "transformer_lens"
    capabilities = frozenset({Capability.GRADIENTS, Capability.WEIGHT_EDIT, Capability.GENERATION, Capability.PYTHON_HOOKS})

    def __init__(self, tl_model: Any, tokenizer: Any = None, name: str | None = None, padding_side: PaddingSide | None = None) -> None:
        self.tl = tl_model
        tok = tokenizer if tokenizer is not None else getattr(tl_model, "tokenizer", None)
        cfg = tl_model.cfg
        super().__init__(tok, name or getattr(cfg, "model_name", None) or "transformer_lens-model", padding_side)
        self.hf = getattr(tl_model, "original_model", None)
        self._family = None
        self._prefix = ""
        if self.hf is not None:
            try:
                self._family, self._prefix = detect(self.hf)
            except InputError:
                self._family = None
        self.post_ln = bool(self._family is not None and self._family.post_ln)
        self._hook_dict = tl_model.hook_dict
        self._map = self._site_map()
        self._ref: ModelRef | None = None
        self._warm_up()

    def _site_map(self) -> dict[str, str]:
        """Canonical site -> bridge hook name, for the sites that fire with that meaning."""
        mapping: dict[str, str] = {}
        n = self.n_layers
        if self.post_ln:
            for layer in range(n):
                for kind, hook in _BERT_SITES.items():
                    if f"blocks.{layer}.{hook}" in self._hook_dict:
                        mapping[f"blocks.{layer}.{kind}"] = f"blocks.{layer}.{hook}"
            for kind, hook in _GLOBAL_BERT.items():
                if hook in self._hook_dict:
                    mapping[kind] = hook
        else:
            gated = self._family is not None and "gate" in self._family.linears
            kinds = [k for k in BLOCK_SITES if k != "mlp.hook_pre_linear" or gated]
            for name in canonical_sites(n, tuple(kinds), GLOBAL_SITES_BEFORE + GLOBAL_SITES_AFTER):
                hook = name
                if name.endswith("mlp.hook_pre_linear"):
                    hook = name.replace("mlp.hook_pre_linear", "mlp.in.hook_out")
                if hook in self._hook_dict:
                    mapping[name] = hook
            if getattr(self.tl.cfg, "positional_embedding_type", "standard") == "rotary":
                mapping.pop("hook_pos_embed", None)
        order = {s: i for i, s in enumerate(canonical_sites(n, BLOCK_SITES, GLOBAL_SITES_BEFORE + GLOBAL_SITES_AFTER))}
        return dict(sorted(mapping.items(), key=lambda kv: order.get(kv[0], 0)))

    @property
    def n_layers(self) -> int:
        return int(self.tl.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.tl.cfg.d_model)

    @property
    def vocab_size(self) -> int | None:
        value = getattr(self.tl.cfg, "d_vocab", None)
        return int(value) if value and value > 0 else None

    @property
    def max_context(self) -> int | None:
        value = getattr(self.tl.cfg, "n_ctx", None)
        return int(value) if value and value > 0 else None

    @property
    def is_encoder(self) -> bool:
        return self.post_ln

    def native_sites(self) -> list[str]:
        return list(self._map)

    def raw_sites(self) -> list[str]:
        """The bridge's hook names, then the HF module paths of the model it wraps."""
        if self.hf is None:
            return list(self._hook_dict)
        # HF names: the bridge nests each original module under "_original_component"
        names = (n.replace("._original_component", "").removesuffix("_original_component").rstrip(".") for n, _ in self.hf.named_modules())
        hf_paths = [n for n in dict.fromkeys(names) if n and "hook_" not in n.rsplit(".", 1)[-1]]
        return list(self._hook_dict) + hf_paths

    def _hf_module(self, site: str) -> torch.nn.Module | None:
        """The module of the wrapped HF model that a raw path names (``model.layers.3.mlp``,
        with ``:input`` / ``:output``), as on the HF and nnsight backends; None if it names none."""
        path, _, io = site.partition(":")
        if self.hf is None or not path or io not in ("", "input", "output") or site in self._hook_dict:
            return None
        try:
            return self.hf.get_submodule(path)
        except AttributeError:
            return None

    def _is_raw_site(self, site: str) -> bool:
        return site in self._hook_dict or self._hf_module(site) is not None

    def _attach(self, site: str, fn: SiteFn) -> Handle:
        if site not in self._map and site not in self._hook_dict:
            from conceptkit.backends import module_hooks

            return module_hooks.attach(self._hf_module(site), site.partition(":")[2] or "output", fn)  # type: ignore[arg-type]
        hook_point = self._hook_dict[self._map.get(site, site)]

        def tl_hook(act: torch.Tensor, hook: Any) -> torch.Tensor | None:
            return fn(act)

        lens_handle = hook_point.add_hook(tl_hook, dir="fwd")

        def remove() -> None:
            lens_handle.hook.remove()
            if lens_handle in hook_point.fwd_hooks:
                hook_point.fwd_hooks.remove(lens_handle)

        return Handle(remove, f"hook on {site}")

    def _forward(self, batch: Batch) -> torch.Tensor:
        if self.post_ln:
            # The bridge's BERT MLM head is randomly initialised (hook_points.md §4): return the
            # last layer output, never those logits.
            out: dict[str, torch.Tensor] = {}

            def keep(act: torch.Tensor) -> None:
                out["h"] = act

            with self._attach(f"blocks.{self.n_layers - 1}.hook_resid_post", keep):
                self.tl(batch.input_ids, attention_mask=batch.attention_mask, return_type=None, **self._positions(batch))
            return out["h"]
        return self.tl(batch.input_ids, attention_mask=batch.attention_mask, return_type="logits", **self._positions(batch))

    def _forward_cached(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, past: Any
    ) -> tuple[torch.Tensor, Any]:
        """The new columns through the bridge's ``return_type="logits_and_cache"`` (HF's cache).

        TransformerLens 4.3's attention bridges look for the cache in ``past_key_values`` or
        ``layer_past``, but transformers 5 passes it to attention layers as ``cache``, so the
        bridge would leave it empty (every step then attends to itself alone). For the length of
        the call, pre-hooks copy ``cache`` to ``past_key_values``. Native and post-LN bridges have
        no HF cache: generation recomputes the sequence there.
        """
        if self.post_ln or self._family is None or self._family.name == "tl_native":
            raise NotImplementedError("this TransformerLens model has no HF KV cache")

        def alias(module: Any, args: tuple, kwargs: dict) -> Any:
            if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
                return args, {**kwargs, "past_key_values": kwargs["cache"]}
            return None

        if not hasattr(self, "_kv_modules"):
            self._kv_modules = [m for m in self.tl.modules() if hasattr(m, "_update_kv_cache")]
        handles = [m.register_forward_pre_hook(alias, with_kwargs=True) for m in self._kv_modules]
        try:
            extra = {"past_key_values": past} if past is not None else {}
            with warnings.catch_warnings():  # the bridge passes HF the cache by its old name
                warnings.filterwarnings("ignore", message=".*past_key_values.* is deprecated", category=FutureWarning)
                logits, cache = self.tl(
                    input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                    return_type="logits_and_cache", **extra,
                )
        finally:
            for h in handles:
                h.remove()
        return logits, cache

    def _positions(self, batch: Batch) -> dict[str, torch.Tensor]:
        # HF-backed bridges forward extra kwargs to the HF model; native models take none.
        return {} if self._family is None or self._family.name == "tl_native" else {"position_ids": batch.position_ids}

    @property
    def weights(self) -> Weights:
        if self.hf is None or self._family is None:
            raise InputError("weight access needs the bridge's underlying model (llama, gpt2, bert or native)")
        cfg = getattr(self.hf, "config", None) or self.tl.cfg
        if self._family.name == "tl_native":
            cfg = self.tl.cfg
        return weights_of(self.hf, self._family, self._prefix, cfg)

    @property
    def ref(self) -> ModelRef:
        from conceptkit.edits import generation

        if self._ref is None or getattr(self, "_ref_generation", None) != generation():  # edited since: rehash
            self._ref_generation = generation()
            module = self.hf if self.hf is not None else self.tl
            compat = bool(getattr(self.tl, "compatibility_mode", False))
            self._ref = ModelRef(
                name=self.name,
                weights_hash=weights_hash(module),
                backend=self.backend_name,
                backend_version=dist_version("transformer-lens"),
                dtype=str(self.tl.cfg.dtype).removeprefix("torch."),
                architecture=type(self.hf).__name__ if self.hf is not None else type(self.tl).__name__,
                processing="compatibility_mode" if compat else "none",
            )
        return self._ref

    def hook_registry(self) -> list[tuple[str, str, int]]:
        """TransformerLens' per-HookPoint handles plus every raw torch hook (for leak checks)."""
        from conceptkit.backends.module_hooks import hook_registry

        tl_hooks = [
            (name, direction, id(handle))
            for name, hp in self._hook_dict.items()
            for direction, handles in (("tl_fwd", hp.fwd_hooks), ("tl_bwd", hp.bwd_hooks))
            for handle in handles
        ]
        return sorted(set(tl_hooks)) + hook_registry(self.tl)

    def _warm_up(self) -> None:
        """One tiny forward: the bridge wires its own permanent hooks lazily on the first run,
        which would otherwise look like a change of the hook registry to leak checks."""
        ids = torch.zeros((1, 1), dtype=torch.long)
        with torch.inference_mode():
            self._forward(Batch(ids, torch.ones_like(ids), "right"))


class TransformerLensBackend:
    """Recognises TransformerLens 4 ``TransformerBridge`` objects, and TransformerLens 3
    ``HookedTransformer`` (any ``HookedRootModule``) where that version is installed."""

    def recognises(self, obj: Any) -> bool:
        import sys

        if "transformer_lens" not in sys.modules:
            return False
        try:  # TransformerLens 4
            from transformer_lens.model_bridge import TransformerBridge

            if isinstance(obj, TransformerBridge):
                return True
        except ImportError:
            pass
        try:  # TransformerLens 3 (4 has no HookedRootModule, and its import raises)
            from transformer_lens.hook_points import HookedRootModule
        except ImportError:
            return False
        return isinstance(obj, HookedRootModule)

    def wrap(self, obj: Any, tokenizer: Any = None, **kwargs: Any) -> Model:
        """Wrap a bridge / HookedTransformer. Its own tokenizer is used unless one is given; where
        it tokenises differently from the checkpoint's own tokenizer (the bridge prepends BOS),
        a ConventionWarning says so, since ``load_model`` uses the checkpoint's."""
        from conceptkit.backends.conventions import check_conventions, find_tokenizer

        hf_model = getattr(obj, "original_model", None)
        what = f"TransformerLens {type(obj).__name__}"
        tok = find_tokenizer(tokenizer, getattr(obj, "tokenizer", None), hf_model, what)
        if hf_model is not None:
            check_conventions(tok, hf_model, what)
        return TransformerLensModel(obj, tok, **kwargs)
