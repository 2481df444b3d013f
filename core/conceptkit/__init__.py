"""conceptkit: concept vectors in neural networks.

The public API is the names in ``__all__``. They are loaded on first use (PEP 562), so
``import conceptkit`` imports neither torch nor any model framework.

Example:
    >>> import conceptkit as ck
    >>> model = ck.load_model("smollm2-135m", backend="transformer_lens")  # doctest: +SKIP
    >>> acts = model.capture(["I loved it"], sites=["blocks.12.hook_resid_post"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from conceptkit.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    # plugins and methods
    "plugins": "conceptkit.plugin_manager",
    "plugin_failures": "conceptkit.plugin_manager",
    "methods": "conceptkit.plugin_manager",
    "method": "conceptkit.plugin_manager",
    "registered_plugin": "conceptkit.plugin_manager",
    "Method": "conceptkit.contract",
    "ArtifactMethod": "conceptkit.contract",
    "MethodConfig": "conceptkit.contract",
    "Result": "conceptkit.contract",
    "Capability": "conceptkit.capabilities",
    "Handle": "conceptkit.handles",
    # models
    "Model": "conceptkit.backends.base",
    "ModelRef": "conceptkit.backends.base",
    "wrap": "conceptkit.backends",
    "load_model": "conceptkit.models",
    # interventions and objectives
    "interventions": "conceptkit",
    "objectives": "conceptkit",
    # store
    "open_store": "conceptkit.store",
    "Store": "conceptkit.store",
    "Record": "conceptkit.store.record",
    "RecordDraft": "conceptkit.store.record",
    # errors
    "ConceptkitError": "conceptkit.errors",
}

__all__ = sorted([*_LAZY, "hookimpl", "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conceptkit' has no attribute {name!r}")
    if module == "conceptkit":
        value = importlib.import_module(f"conceptkit.{name}")
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from conceptkit import interventions, objectives
    from conceptkit.backends import wrap
    from conceptkit.backends.base import Model, ModelRef
    from conceptkit.capabilities import Capability
    from conceptkit.errors import ConceptkitError
    from conceptkit.handles import Handle
    from conceptkit.contract import ArtifactMethod, Method, MethodConfig, Result
    from conceptkit.models import load_model
    from conceptkit.plugin_manager import method, methods, plugin_failures, plugins, registered_plugin
    from conceptkit.store import Store, open_store
    from conceptkit.store.record import Record, RecordDraft
