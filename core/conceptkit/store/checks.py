"""Checks that keep one bad record from taking a store down.

JSON has no NaN or infinity (a NaN inside a list is written as ``null`` and then no longer
parses), and SQLite/JSON cannot hold a lone UTF-16 surrogate. Both are refused when a record is
*put*, naming the field, so that nothing unreadable ever reaches the index.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from conceptkit.errors import StoreError

MAX_DEPTH = 64


def check_manifest_values(value: Any, where: str = "record", _depth: int = 0) -> None:
    """Refuse non-finite floats and strings that are not valid UTF-8, anywhere in ``value``."""
    if _depth > MAX_DEPTH:
        raise StoreError(f"refused: {where} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreError(f"refused: {where} is {value!r}; a record holds finite numbers only (JSON has no NaN/Inf)")
        return
    if isinstance(value, str):
        _check_text(value, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                _check_text(key, f"{where} key")
            check_manifest_values(item, f"{where}.{key}", _depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_manifest_values(item, f"{where}[{i}]", _depth + 1)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise StoreError(f"refused: {where} contains {bad!r} at position {exc.start}, which is not valid Unicode text (a lone surrogate)") from None


def stable_norm(t: torch.Tensor) -> float | None:
    """The L2 norm in float64, scaled first so that huge entries (1e300) do not overflow.

    ``None`` for non-float tensors and when even the scaled norm exceeds float64.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return 0.0 if t.is_floating_point() else None
    v = t.detach().double().flatten()
    scale = float(v.abs().max())
    if scale == 0.0:
        return 0.0
    norm = scale * float((v / scale).norm())
    return norm if math.isfinite(norm) else None


def unit_vector(v: torch.Tensor) -> torch.Tensor:
    """``v / ||v||`` computed in float64 with scaling (an all-``1e300`` vector stays a direction)."""
    d = v.detach().double()
    scale = float(d.abs().max()) if d.numel() else 0.0
    if scale == 0.0 or not math.isfinite(scale):
        return d
    d = d / scale
    return d / d.norm()
