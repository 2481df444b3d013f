"""Concept erasure for conceptkit: LEACE, concept scrubbing, UCE.

Names load on first use, so registering the plugin (``conceptkit plugins``) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LeaceFitter": "leace", "LeaceEraser": "leace", "OracleFitter": "leace", "OracleEraser": "leace", "one_hot_labels": "leace",
    "uce_solve": "uce", "uce_edit": "uce", "uce_edits": "uce", "uce_draft": "uce",
    "Scrubber": "scrub", "fit_scrubber": "scrub",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'conceptkit_erasure' has no attribute {name!r}")
    return getattr(importlib.import_module(f"conceptkit_erasure.{_LAZY[name]}"), name)
