"""Sparse autoencoders as first-class parts: the type, file formats, virtual sites, feature
interventions, training, an offline corpus and the embedded SmolLM2 SAE.

    sae = SAE.load("path/to/saelens_or_sparsify_folder")
    handle = attach_sae(model, sae)            # or model.attach_sae(sae)
    acts = model.capture(texts, [f"{sae.site}.hook_sae_acts_post"], reduce="all")
    sae = load_sae("smollm2-135m", site="blocks.12.hook_resid_post")   # trains once, then cached
"""

from __future__ import annotations

import importlib
from typing import Any

from conceptkit.sae.base import SAE, NormState
from conceptkit.sae.formats import SAEFormatError, read_folder, read_saelens, read_sparsify, write_saelens, write_sparsify

_LAZY = {
    "attach_sae": "conceptkit.sae.attach",
    "SAESites": "conceptkit.sae.attach",
    "SAEFeatures": "conceptkit.sae.interventions",
    "resolve_sae": "conceptkit.sae.registry",
    "register_sae": "conceptkit.sae.registry",
    "to_draft": "conceptkit.sae.records",
    "from_record": "conceptkit.sae.records",
    "similar_latents": "conceptkit.sae.records",
    "TopKTrainer": "conceptkit.sae.train",
    "TrainConfig": "conceptkit.sae.train",
    "evaluate": "conceptkit.sae.evaluate",
    "load_sae": "conceptkit.sae.builtin",
    "corpus": "conceptkit.sae.corpus",
}

__all__ = [
    "SAE", "NormState", "SAEFormatError", "read_folder", "read_saelens", "read_sparsify", "write_saelens",
    "write_sparsify", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conceptkit.sae' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module.endswith("." + name) else getattr(mod, name)
    globals()[name] = value
    return value
