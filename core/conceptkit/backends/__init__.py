"""Backends: adapters that turn framework models into a :class:`Model`.

Backends are registered through the ``register_backends`` plugin hook (the core registers its
own the same way), so a third party can add one. Heavy frameworks are imported only when an
object of theirs is wrapped.
"""

from __future__ import annotations

from typing import Any

from conceptkit.backends.base import Model, ModelRef
from conceptkit.errors import InputError

__all__ = ["Model", "ModelRef", "wrap", "backend_names"]


def backend_names() -> list[str]:
    from conceptkit.plugin_manager import get_manager

    return [name for name, _, _ in get_manager().registry.backends]


def wrap(obj: Any, **kwargs: Any) -> Model:
    """Wrap a TransformerBridge / HookedTransformer, nnsight model, HF model or diffusers pipeline.

    Backends are asked in registration order whether they recognise ``obj``; the first wins.
    Keyword arguments (``tokenizer=``, ``name=``, ``padding_side=``) go to the backend.
    """
    from conceptkit.plugin_manager import get_manager

    if isinstance(obj, Model):
        return obj
    for _name, backend, _plugin in get_manager().registry.backends:
        if backend.recognises(obj):
            return backend.wrap(obj, **kwargs)
    raise InputError(
        f"no backend recognises an object of type {type(obj).__module__}.{type(obj).__qualname__}; "
        f"registered backends: {', '.join(backend_names())}"
    )
