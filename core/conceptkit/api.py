"""The public surface of conceptkit: everything a plugin or a script may import.

``import conceptkit as ck`` exposes the same names (``ck.WeightEdit``, ``ck.InputError`` ...);
this module exists so that a plugin can write ``from conceptkit.api import RecordDraft,
InputError`` and a reader can see the whole contract on one page. Every other module of the
package is internal: its names may move or change between releases. Names load on first use
(PEP 562), so importing this module imports neither torch nor a model framework.

The groups below are the contract; a name is added when its module has landed (names of
modules not present in this installation are left out of ``__all__``).

Example:
    >>> from conceptkit.api import RecordDraft, InputError, fingerprint
    >>> fingerprint(["a", "b"]) == fingerprint(["a", "b"])
    True
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

#: name -> module that defines it. ``"conceptkit.x:"`` means the module itself is the value.
_GROUPS: dict[str, dict[str, str]] = {
    "plugins and methods": {
        "hookimpl": "conceptkit.hookspecs",
        "plugins": "conceptkit.plugin_manager",
        "plugin_failures": "conceptkit.plugin_manager",
        "methods": "conceptkit.plugin_manager",
        "method": "conceptkit.plugin_manager",
        "registered_plugin": "conceptkit.plugin_manager",
        "Method": "conceptkit.contract",
        "ArtifactMethod": "conceptkit.contract",
        "MethodConfig": "conceptkit.contract",
        "Result": "conceptkit.contract",
        "validate_config": "conceptkit.contract",
        "Capability": "conceptkit.capabilities",
    },
    "provenance": {
        "MethodInfo": "conceptkit.store.record",
        "method_info": "conceptkit.provenance",
        "input_fingerprint": "conceptkit.provenance",
        "fingerprint": "conceptkit.data",
    },
    "models": {
        "Model": "conceptkit.backends.base",
        "ModelRef": "conceptkit.backends.base",
        "wrap": "conceptkit.backends",
        "ConventionWarning": "conceptkit.backends.conventions",
        "load_model": "conceptkit.models",
        "cache_dir": "conceptkit.models",
        "Handle": "conceptkit.handles",
        "HandleGroup": "conceptkit.handles",
        "Activations": "conceptkit.activations",
        "open_activations": "conceptkit.activations",
        "unknown_site": "conceptkit.sites",
    },
    "data": {
        "Batch": "conceptkit.data",
        "reduce_tokens": "conceptkit.data",
        "Reduce": "conceptkit.data",
        "PaddingSide": "conceptkit.data",
        "TensorField": "conceptkit.tensors",
        "concepts": "conceptkit.concepts:",
        "ConceptSet": "conceptkit.concepts",
    },
    "interventions": {
        "interventions": "conceptkit.interventions:",
        "Intervention": "conceptkit.interventions",
        "Add": "conceptkit.interventions",
        "Scale": "conceptkit.interventions",
        "ProjectOut": "conceptkit.interventions",
        "Affine": "conceptkit.interventions",
        "Replace": "conceptkit.interventions",
    },
    "objectives": {
        "objectives": "conceptkit.objectives:",
        "TokenLogit": "conceptkit.objectives",
        "LogitDiff": "conceptkit.objectives",
        "NextTokenLoss": "conceptkit.objectives",
        "Objective": "conceptkit.objectives",
        "LogitFunctional": "conceptkit.objectives",
        "InnerSiteFunctional": "conceptkit.objectives",
        "as_objective": "conceptkit.objectives",
        "token_id": "conceptkit.objectives",
    },
    "probes": {
        "probes": "conceptkit.probes:",
        "Probe": "conceptkit.probes",
        "fit_probe": "conceptkit.probes",
        "holdout_accuracy": "conceptkit.probes",
        "cross_validate": "conceptkit.probes",
        "CVResult": "conceptkit.probes",
        "fit_probes": "conceptkit.probes",
    },
    "weight edits": {
        "edits": "conceptkit.edits:",
        "WeightEdit": "conceptkit.edits",
        "WeightEditSet": "conceptkit.edits",
        "WeightEditHandle": "conceptkit.edits",
        "parameter_hash": "conceptkit.edits",
    },
    "store": {
        "open_store": "conceptkit.store",
        "Store": "conceptkit.store",
        "Record": "conceptkit.store.record",
        "RecordDraft": "conceptkit.store.record",
    },
    "errors": {
        "ConceptkitError": "conceptkit.errors",
        "PluginError": "conceptkit.errors",
        "UnknownNameError": "conceptkit.errors",
        "ConfigError": "conceptkit.errors",
        "CapabilityError": "conceptkit.errors",
        "MissingDependencyError": "conceptkit.errors",
        "InputError": "conceptkit.errors",
        "StoreError": "conceptkit.errors",
    },
    # Parts of the core being built now (issue 9); each appears once its module lands.
    "components": {
        "components": "conceptkit.components:",
        "virtual_sites": "conceptkit.virtual_sites:",
        "VirtualSiteProvider": "conceptkit.virtual_sites",
        "VirtualSiteSpec": "conceptkit.virtual_sites",
    },
    "plans and generation": {
        "plans": "conceptkit.plans:",
        "Plan": "conceptkit.plans",
        "Read": "conceptkit.plans",
        "GradRequest": "conceptkit.plans",
        "PlanOutput": "conceptkit.plans",
        "LocalExecutor": "conceptkit.plans",
        "generation": "conceptkit.generation:",
        "GenerationPolicy": "conceptkit.generation",
        "StepState": "conceptkit.generation",
        "StepRecord": "conceptkit.generation",
        "RowScoped": "conceptkit.generation",
        "Generation": "conceptkit.generation",
    },
    "scale-out": {
        "scale": "conceptkit.scale:",
        "dataset_moments": "conceptkit.scale.dataset",
        "dataset_capture": "conceptkit.scale.dataset",
        "use_ray": "conceptkit.scale.dataset",
        "ray_requested": "conceptkit.scale.dataset",
        "Moments": "conceptkit.scale.moments",
        "ShardFailedError": "conceptkit.scale.ray_executor",
    },
    "sparse autoencoders": {
        "sae": "conceptkit.sae:",
        "SAE": "conceptkit.sae.base",
        "attach_sae": "conceptkit.sae.attach",
        "SAEFeatures": "conceptkit.sae.interventions",
        "load_sae": "conceptkit.sae.builtin",
    },
}


_ROOT = Path(__file__).parent


def _present(module: str) -> bool:
    """Whether a core module exists, found on disk so that nothing is imported (no torch)."""
    parts = module.rstrip(":").split(".")[1:]
    base = _ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


#: every public name -> its module, for the names whose module is installed
SURFACE: dict[str, str] = {
    name: module for group in _GROUPS.values() for name, module in group.items() if _present(module)
}

__all__ = sorted(SURFACE)


def resolve(name: str) -> Any:
    """The object behind public ``name`` (imports its module on first use)."""
    module = SURFACE.get(name)
    if module is None:
        raise AttributeError(f"module 'conceptkit.api' has no attribute {name!r}")
    if module.endswith(":"):
        return importlib.import_module(module[:-1])
    return getattr(importlib.import_module(module), name)


def __getattr__(name: str) -> Any:
    value = resolve(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
