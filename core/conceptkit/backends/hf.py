"""Backends over HuggingFace module trees: plain ``transformers`` models and nnsight wrappers.

The nnsight adapter addresses the same HF modules that nnsight's Envoy tree mirrors
(``model.layers[l].mlp.down_proj.input`` ...), through the family tables, and by default runs
them with local torch hooks (everything local: gradients, weight edits, generation).
``model.with_executor("trace", remote=...)`` runs plans as nnsight traces instead, locally or on
NDIF (:mod:`conceptkit.scale.nnsight_trace`).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import torch

from conceptkit.backends import module_hooks
from conceptkit.backends.base import Model, ModelRef, SiteFn
from conceptkit.backends.families import apply_prefix, detect, norm_eps, norm_kind, view_in, view_out
from conceptkit.backends.weights import Weights, weights_of
from conceptkit.capabilities import Capability
from conceptkit.data import Batch, PaddingSide
from conceptkit.errors import InputError
from conceptkit.handles import Handle, HandleGroup
from conceptkit._dist import dist_version
from conceptkit.sites import BLOCK_SITES, GLOBAL_SITES_AFTER, GLOBAL_SITES_BEFORE, canonical_sites, parse


def weights_hash(module: torch.nn.Module) -> str:
    """A hash of the weights that ignores module names (backends rename modules: the bridge
    wraps them), so the same weights give the same hash through every backend."""
    digests = []
    seen: set[int] = set()
    for p in module.parameters():
        if p.data_ptr() in seen:  # tied weights count once
            continue
        seen.add(p.data_ptr())
        data = p.detach().cpu().contiguous()
        digests.append(hashlib.sha256(str(tuple(data.shape)).encode() + data.view(torch.uint8).numpy().tobytes()).hexdigest())
    return "sha256:" + hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]


class HFModel(Model):
    """A ``transformers`` model (causal LM or encoder) hooked by module path."""

    backend_name: ClassVar[str] = "transformers"
    capabilities = frozenset({Capability.GRADIENTS, Capability.WEIGHT_EDIT, Capability.GENERATION, Capability.PYTHON_HOOKS})

    def __init__(self, hf_model: torch.nn.Module, tokenizer: Any, name: str | None = None, padding_side: PaddingSide | None = None) -> None:
        self.hf = hf_model
        self.family, self._prefix = detect(hf_model)
        cfg = hf_model.config
        super().__init__(tokenizer, name or getattr(cfg, "_name_or_path", "") or type(hf_model).__name__, padding_side)
        self._cfg = cfg
        self._weights = weights_of(hf_model, self.family, self._prefix, cfg)
        self._modules = dict(hf_model.named_modules())
        self._sites = self._available_sites()
        self._ref: ModelRef | None = None

    def _path(self, kind: str, layer: int | None) -> str | None:
        tap = self.family.taps.get(kind)
        if tap is None:
            return None
        path = tap.path.replace("{l}", str(layer)) if layer is not None else tap.path
        return apply_prefix(path, self._prefix)

    def _available_sites(self) -> list[str]:
        present_block = tuple(k for k in BLOCK_SITES if (p := self._path(k, 0)) is not None and p in self._modules)
        present_global = tuple(
            k for k in GLOBAL_SITES_BEFORE + GLOBAL_SITES_AFTER if (p := self._path(k, None)) is not None and p in self._modules
        )
        return canonical_sites(self.n_layers, present_block, present_global)

    @property
    def n_layers(self) -> int:
        return int(getattr(self._cfg, "num_hidden_layers", None) or getattr(self._cfg, "n_layer"))

    @property
    def d_model(self) -> int:
        return int(getattr(self._cfg, "hidden_size", None) or getattr(self._cfg, "n_embd"))

    @property
    def vocab_size(self) -> int | None:
        value = getattr(self._cfg, "vocab_size", None)
        return int(value) if value else None

    @property
    def max_context(self) -> int | None:
        value = getattr(self._cfg, "max_position_embeddings", None) or getattr(self._cfg, "n_positions", None)
        return int(value) if value else None

    @property
    def is_encoder(self) -> bool:
        return self.family.post_ln or not hasattr(self.hf, "lm_head")

    def native_sites(self) -> list[str]:
        return list(self._sites)

    def raw_sites(self) -> list[str]:
        return [n for n in self._modules if n]

    def _is_raw_site(self, site: str) -> bool:
        path, _, io = site.partition(":")
        return path in self._modules and path != "" and io in ("", "input", "output")

    def _attach(self, site: str, fn: SiteFn) -> Handle:
        if site in self._sites:
            parsed = parse(site)
            tap = self.family.taps[parsed.kind]
            path = self._path(parsed.kind, parsed.layer)
            w = self._weights
            if tap.view == "scale":
                module = self._modules[path]  # type: ignore[index]
                return module_hooks.attach_norm_scale(module, fn, norm_kind(module), norm_eps(module))
            if tap.view == "pattern":
                return self._attach_pattern(self._modules[path], parsed.layer, fn)  # type: ignore[index,arg-type]
            return module_hooks.attach(
                self._modules[path],  # type: ignore[index]
                tap.io,
                fn,
                lambda t: view_in(t, tap.view, w.n_heads, w.n_kv_heads),
                lambda orig, new: view_out(orig, new, tap.view),
            )
        path, _, io = site.partition(":")
        return module_hooks.attach(self._modules[path], io or "output", fn)

    def _attach_pattern(self, attn: torch.nn.Module, layer: int, fn: SiteFn) -> Handle:
        """``attn.hook_pattern`` from an eager attention module's returned weights ``[B,H,Tq,Tk]``.

        The weights are already used when the module returns, so a replacement ``P'`` is added
        as ``out + ((P' - P) V) W_O``: attention output is linear in the pattern, so this equals
        the module recomputed with ``P'`` (and carries the gradient with respect to ``P'``).
        """
        values: list[torch.Tensor] = []

        def keep_v(t: torch.Tensor) -> None:
            values[:] = [t]

        def hook(mod: torch.nn.Module, args: Any, output: Any) -> Any:
            if not (isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor)):
                raise InputError(
                    f"blocks.{layer}.attn.hook_pattern needs eager attention; this model runs "
                    f"{getattr(self._cfg, '_attn_implementation', 'another implementation')!r}"
                )
            pattern = output[1]
            new = fn(pattern)
            if new is None:
                return None
            v = values[0]  # [B, Tk, H_kv, d_head]
            v = v.repeat_interleave(pattern.shape[1] // v.shape[2], dim=2)
            delta = torch.einsum("bhqk,bkhd->bqhd", new - pattern, v)
            w_o = self._weights.W_O(layer).to(delta)
            return (output[0] + torch.einsum("bqhd,hde->bqe", delta, w_o), new, *output[2:])

        group = HandleGroup(description=f"pattern hook on layer {layer}")
        try:
            group.add(self._attach(f"blocks.{layer}.attn.hook_v", keep_v))
            group.add(Handle(attn.register_forward_hook(hook).remove, f"pattern hook on {type(attn).__name__}"))
        except BaseException:
            group.remove()
            raise
        return group

    def _forward(self, batch: Batch) -> torch.Tensor:
        out = self.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
        logits = getattr(out, "logits", None)
        return logits if logits is not None and not self.family.post_ln else out.last_hidden_state

    def _forward_cached(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, past: Any
    ) -> tuple[torch.Tensor, Any]:
        """The new columns through HF's own KV cache (``use_cache=True``; transformers 5 names
        the cache argument and output ``cache``, older versions ``past_key_values``)."""
        if self.is_encoder:
            raise NotImplementedError("an encoder has no KV cache")
        if not hasattr(self, "_cache_kwarg"):
            import inspect

            params = inspect.signature(self.hf.forward).parameters
            self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        kwargs = {self._cache_kwarg: past} if past is not None else {}
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **kwargs)
        cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        return out.logits, cache

    @property
    def weights(self) -> Weights:
        return self._weights

    #: distribution whose version goes into ``ref.backend_version``
    backend_distribution: ClassVar[str] = "transformers"

    @property
    def ref(self) -> ModelRef:
        from conceptkit.edits import generation

        if self._ref is None or getattr(self, "_ref_generation", None) != generation():  # edited since: rehash
            self._ref_generation = generation()
            param = next(self.hf.parameters())
            self._ref = ModelRef(
                name=self.name,
                revision=getattr(self._cfg, "_commit_hash", None),
                weights_hash=weights_hash(self.hf),
                backend=self.backend_name,
                backend_version=dist_version(self.backend_distribution),
                dtype=str(param.dtype).removeprefix("torch."),
                architecture=type(self.hf).__name__,
            )
        return self._ref

    def hook_registry(self) -> list[tuple[str, str, int]]:
        """All torch hooks on the model (for leak checks: compare before and after)."""
        return module_hooks.hook_registry(self.hf)


class NNsightModel(HFModel):
    """An nnsight ``NNsight`` / ``LanguageModel`` over an HF model."""

    backend_name: ClassVar[str] = "nnsight"

    def __init__(self, nn_model: Any, tokenizer: Any = None, name: str | None = None, padding_side: PaddingSide | None = None) -> None:
        self.nnsight_model = nn_model
        hf_model = nn_model._module
        tok = tokenizer if tokenizer is not None else getattr(nn_model, "tokenizer", None)
        super().__init__(hf_model, tok, name, padding_side)

    backend_distribution: ClassVar[str] = "nnsight"
    _trace_executor: Any = None  # set by with_executor("trace"); None: the hook executor

    def with_executor(self, kind: str = "trace", *, remote: bool | str = False) -> "NNsightModel":
        """A view of this model (same weights) whose plans run as nnsight traces (``"trace"``,
        ``remote`` False | "local" | True; conceptkit.scale.nnsight_trace) or hooks (``"hooks"``)."""
        import copy

        from conceptkit.errors import CapabilityError
        from conceptkit.scale.nnsight_trace import TraceExecutor

        if kind not in ("trace", "hooks"):
            raise CapabilityError(f"executor must be 'trace' or 'hooks', got {kind!r}")
        view = copy.copy(self)
        view._trace_executor = TraceExecutor(view, remote=remote) if kind == "trace" else None
        return view

    def execute(self, plan: Any) -> Any:
        if self._trace_executor is not None:
            return self._trace_executor.execute(plan)
        self._ensure_local()
        return super().execute(plan)

    @property
    def executes_plans(self) -> bool:
        """Generation runs plans (one trace per step) under the trace executor, hooks otherwise."""
        return self._trace_executor is not None

    @property
    def native_generation(self) -> Any:
        """Fixed-intervention generation through ``nn_model.generate`` (trace executor only)."""
        return self._trace_executor.generate_batch if self._trace_executor is not None else None

    # -- a lazily loaded nnsight model (meta weights until dispatched) ---------------------------
    def _ensure_local(self) -> None:
        """The hook executor needs real weights here: dispatch a lazily loaded nnsight model
        (nnsight's own rule for a local run) and re-point conceptkit at the loaded modules,
        so nothing ever runs on meta tensors. The trace executor does not call this: with
        ``remote=True`` no weights are loaded here."""
        nn = self.nnsight_model
        if getattr(nn, "dispatched", True) is False and callable(getattr(nn, "dispatch", None)):
            nn.dispatch()
        module = nn._module
        if module is not self.hf:
            if any(p.is_meta for p in module.parameters()):
                from conceptkit.errors import CapabilityError

                raise CapabilityError(
                    f"model {self.name!r} holds meta tensors (an nnsight model without loaded weights) and could not be "
                    "dispatched; the hook executor needs local weights: use model.with_executor('trace', remote=True)"
                )
            self.hf = module
            self._modules = dict(module.named_modules())
            self._weights = weights_of(module, self.family, self._prefix, self._cfg)
            self._ref = None

    @property
    def dispatched(self) -> bool:
        """Whether the weights are loaded here (False: an nnsight model built on meta, not yet run locally)."""
        return not any(p.is_meta for p in self.nnsight_model._module.parameters())

    def _attach(self, site: str, fn: SiteFn) -> Handle:
        self._ensure_local()
        return super()._attach(site, fn)

    def _forward(self, batch: Batch) -> torch.Tensor:
        self._ensure_local()
        return super()._forward(batch)

    def _forward_cached(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        self._ensure_local()
        return super()._forward_cached(input_ids, attention_mask, position_ids, past)

    @property
    def weights(self) -> Weights:
        self._ensure_local()
        return self._weights

    @property
    def ref(self) -> ModelRef:
        """As for HF models; a model whose weights are not loaded here (meta) is identified by
        its repo id and revision (what nnsight's remote model key names; read here without asking
        the Hub) instead of a hash of weights it lacks."""
        if self._ref is None and not self.dispatched:
            nn = self.nnsight_model
            key = f"{getattr(nn, 'repo_id', self.name)}@{getattr(nn, 'revision', None)}"
            return ModelRef(
                name=self.name,
                revision=getattr(self._cfg, "_commit_hash", None),
                weights_hash="nnsight-key:" + hashlib.sha256(str(key).encode()).hexdigest()[:16],
                backend=self.backend_name,
                backend_version=dist_version(self.backend_distribution),
                dtype=str(next(self.hf.parameters()).dtype).removeprefix("torch."),
                architecture=type(self.hf).__name__,
            )
        self._ensure_local()  # loaded (by a local trace, say) since wrapping: hash the loaded weights
        return super().ref


class TransformersBackend:
    """Recognises plain ``transformers`` PreTrainedModel objects."""

    def recognises(self, obj: Any) -> bool:
        try:
            from transformers import PreTrainedModel
        except ImportError:
            return False
        return isinstance(obj, PreTrainedModel)

    def wrap(self, obj: Any, tokenizer: Any = None, **kwargs: Any) -> Model:
        """Wrap an HF model; its tokenizer is found from its checkpoint when not given (an
        error now, not at the first capture, if there is none); differences from
        ``load_model``'s conventions are warned about (:mod:`conceptkit.backends.conventions`)."""
        from conceptkit.backends.conventions import check_conventions, find_tokenizer

        tok = find_tokenizer(tokenizer, None, obj, f"{type(obj).__name__}")
        check_conventions(tok, obj, f"{type(obj).__name__}")
        return HFModel(obj, tok, **kwargs)


class NNsightBackend:
    """Recognises nnsight 0.8 models: ``NNsight``, ``LanguageModel``, ``TransformersModel`` and
    envoys (all ``Envoy`` subclasses; ``LanguageModel`` is not an ``NNsight`` subclass)."""

    def recognises(self, obj: Any) -> bool:
        import sys

        if "nnsight" not in sys.modules:
            return False
        from nnsight import Envoy, NNsight

        return isinstance(obj, (NNsight, Envoy))

    def wrap(self, obj: Any, tokenizer: Any = None, **kwargs: Any) -> Model:
        """Wrap an nnsight model. A model loaded lazily (meta weights, no ``dispatch=True``) stays
        so: the trace executor runs it where nnsight does (``remote=True``: NDIF), and the hook
        executor dispatches it on first use (nnsight's rule for a local run)."""
        from conceptkit.backends.conventions import check_conventions, find_tokenizer

        hf_model = obj._module
        what = f"nnsight {type(obj).__name__}"
        tok = find_tokenizer(tokenizer, getattr(obj, "tokenizer", None), hf_model, what)
        check_conventions(tok, hf_model, what)
        return NNsightModel(obj, tok, **kwargs)
