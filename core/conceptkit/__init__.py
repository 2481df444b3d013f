"""conceptkit: concept vectors in neural networks.

The public API is the names in ``__all__`` (the same as :mod:`conceptkit.api`, where they are
listed by group). They are loaded on first use (PEP 562), so ``import conceptkit`` imports
neither torch nor any model framework. Every other module is internal.

Example:
    >>> import conceptkit as ck
    >>> model = ck.load_model("smollm2-135m", backend="transformer_lens")  # doctest: +SKIP
    >>> acts = model.capture(["I loved it"], sites=["blocks.12.hook_resid_post"])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conceptkit import api as _api
from conceptkit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = sorted({*_api.__all__, "api", "hookimpl", "__version__"})


def __getattr__(name: str) -> Any:
    if name not in _api.SURFACE:
        raise AttributeError(f"module 'conceptkit' has no attribute {name!r}")
    value = _api.resolve(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from conceptkit import concepts, edits, interventions, objectives, probes
    from conceptkit.activations import Activations, open_activations
    from conceptkit.backends import wrap
    from conceptkit.backends.base import Model, ModelRef
    from conceptkit.backends.conventions import ConventionWarning
    from conceptkit.capabilities import Capability
    from conceptkit.concepts import ConceptSet
    from conceptkit.contract import ArtifactMethod, Method, MethodConfig, Result, validate_config
    from conceptkit.data import Batch, PaddingSide, Reduce, fingerprint, reduce_tokens
    from conceptkit.edits import WeightEdit, WeightEditHandle, WeightEditSet, parameter_hash
    from conceptkit.errors import (
        CapabilityError,
        ConceptkitError,
        ConfigError,
        InputError,
        MissingDependencyError,
        PluginError,
        StoreError,
        UnknownNameError,
    )
    from conceptkit.handles import Handle, HandleGroup
    from conceptkit.interventions import Add, Affine, Intervention, ProjectOut, Replace, Scale
    from conceptkit.models import cache_dir, load_model
    from conceptkit.objectives import (
        InnerSiteFunctional,
        LogitDiff,
        LogitFunctional,
        NextTokenLoss,
        Objective,
        TokenLogit,
        as_objective,
        token_id,
    )
    from conceptkit.plugin_manager import method, methods, plugin_failures, plugins, registered_plugin
    from conceptkit.sae.base import SAE
    from conceptkit.sae.builtin import load_sae
    from conceptkit.sae.interventions import SAEFeatures
    from conceptkit.probes import CVResult, Probe, cross_validate, fit_probe, fit_probes, holdout_accuracy
    from conceptkit.provenance import input_fingerprint, method_info
    from conceptkit.sites import unknown_site
    from conceptkit.store import Store, open_store
    from conceptkit.store.record import MethodInfo, Record, RecordDraft
    from conceptkit.tensors import TensorField
