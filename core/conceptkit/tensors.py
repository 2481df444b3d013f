"""A pydantic field type for tensors, so interventions and configs stay declarative data.

Accepts torch tensors, numpy arrays and nested lists; serialises to nested lists (JSON-safe,
no pickle). Non-finite values are refused at validation time with a message naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema


def to_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    elif isinstance(value, np.ndarray):
        tensor = torch.from_numpy(value)
    elif isinstance(value, (list, tuple, int, float)):
        tensor = torch.tensor(value, dtype=torch.float32)
    else:
        raise ValueError(f"expected a tensor, array or list of numbers, got {type(value).__name__}")
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ValueError("tensor contains NaN or Inf values")
    return tensor


TensorField = Annotated[
    torch.Tensor,
    BeforeValidator(to_tensor),
    PlainSerializer(lambda t: t.detach().cpu().tolist(), return_type=list),
    WithJsonSchema({"type": "array", "description": "a tensor as nested lists of numbers"}),
]
