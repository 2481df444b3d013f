"""Provenance: which plugin, distribution, version and configuration made something, from what.

The core fills this in (``Method.run`` and ``Result.save``), so plugins never build it by hand.
:func:`method_info` is also there for artifacts made outside ``Method.run`` (a UCE edit built by
a helper); :func:`input_fingerprint` names the data a result was computed from.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conceptkit.errors import InputError

if TYPE_CHECKING:
    from conceptkit.backends.base import Model
    from conceptkit.store.record import MethodInfo

__all__ = ["method_info", "input_fingerprint", "config_inputs"]


def _registered(name: str) -> tuple[str, str | None, str | None] | None:
    """(plugin, distribution, version) of a registered method, or None."""
    from conceptkit.plugin_manager import get_manager

    reg = get_manager().registry
    if name not in reg.methods:
        return None
    info = reg.plugins[reg.methods[name][1]]
    return info.name, info.distribution, info.version


def _defining_distribution(cls: type) -> tuple[str | None, str | None]:
    """The distribution that ships the package defining ``cls`` (for unregistered methods)."""
    top = cls.__module__.split(".")[0]
    dists = md.packages_distributions().get(top) or []
    if not dists:
        return None, None
    try:
        return dists[0], md.version(dists[0])
    except md.PackageNotFoundError:
        return dists[0], None


def method_info(method: Any, config: Any = None, inputs: dict[str, str] | None = None) -> "MethodInfo":
    """The provenance of ``method`` (a registered name, a Method class or instance).

    Plugin, distribution and version come from the plugin registry, or, for a method class that
    is not registered, from the installed distribution that defines it.

    Example:
        >>> method_info("erasure").plugin  # doctest: +SKIP
        'erasure'
    """
    from conceptkit.store.record import MethodInfo

    if isinstance(method, str):
        name, cls = method, None
    else:
        cls = method if isinstance(method, type) else type(method)
        name = getattr(cls, "name", "") or cls.__name__
    registered = _registered(name)
    if registered is None and cls is None:
        from conceptkit.errors import UnknownNameError
        from conceptkit.plugin_manager import get_manager

        raise UnknownNameError("method", name, get_manager().registry.methods)
    if registered is not None:
        plugin, distribution, version = registered
    else:
        distribution, version = _defining_distribution(cls)  # type: ignore[arg-type]
        plugin = None
    if config is not None and hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    return MethodInfo(
        name=name, plugin=plugin, distribution=distribution, version=version, config=dict(config or {}), inputs=dict(inputs or {})
    )


def input_fingerprint(inputs: Any, model: "Model | None" = None) -> str:
    """A fingerprint of the data a result was computed from.

    Without a model: the content of the texts (order-sensitive; as ``data.fingerprint``). With a
    model: the token ids the model actually runs (so a different BOS or tokenizer convention
    gives a different fingerprint) and the model's weights hash from ``model.ref`` (so the same
    checkpoint gives the same fingerprint through every backend).

    Args:
        inputs: texts (``list[str]``), lists of texts, or token ids (a tensor, ``Batch`` or dict).
        model: the model the inputs went through, or None.
    """
    import torch

    from conceptkit.data import Batch, fingerprint

    h = hashlib.sha256()
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, Sequence) and all(isinstance(x, (str, list, tuple)) for x in inputs):
        h.update(fingerprint(inputs).encode())
        texts = [x for x in inputs if isinstance(x, str)] or [t for x in inputs for t in x]
    else:
        texts = None
    if model is not None:
        ref = model.ref
        h.update(json.dumps({"weights": ref.weights_hash or ref.name}).encode())
        if texts:
            batch = model.tokenize(list(texts))
        elif texts is not None:
            batch = None
        elif isinstance(inputs, (Batch, dict)) or hasattr(inputs, "input_ids"):
            batch = model.tokenize(inputs)
        else:
            batch = None
        if batch is not None:
            for ids, mask in zip(batch.input_ids, batch.attention_mask):
                h.update(ids[mask.bool()].to(torch.int64).numpy().tobytes() + b"|")
    if texts is None:
        if isinstance(inputs, torch.Tensor):
            h.update(str(tuple(inputs.shape)).encode() + inputs.detach().cpu().contiguous().numpy().tobytes())
        elif model is None:
            raise InputError(f"cannot fingerprint inputs of type {type(inputs).__name__}; give texts or token ids")
    return "sha256:" + h.hexdigest()


def config_inputs(config: Any) -> dict[str, str]:
    """Fingerprints of a config's text fields (lists of strings or of lists of strings), by field."""
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config or {})
    out = {}
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            out[key] = input_fingerprint(value)
        elif isinstance(value, list) and value and all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in value):
            out[key] = input_fingerprint(value)
    return out
