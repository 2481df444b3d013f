"""Results serialise to JSON whatever they hold: tensors and numpy values become lists and numbers."""

from __future__ import annotations

import json

import numpy as np
import torch

import conceptkit as ck


class _Holds(ck.Result):
    vector: torch.Tensor
    per_layer: dict[str, object] = {}
    pair: tuple[int, int] = (1, 2)


def test_result_json_turns_tensors_into_lists():
    """A torch.Tensor field (also inside a dict, and numpy values) dumps to JSON as nested lists and numbers."""
    result = _Holds(vector=torch.arange(4.0).reshape(2, 2), per_layer={"0": np.float32(0.5), "1": [torch.tensor(3)]})
    data = json.loads(result.model_dump_json())
    assert data["vector"] == [[0.0, 1.0], [2.0, 3.0]]
    assert data["per_layer"] == {"0": 0.5, "1": [3]} and data["pair"] == [1, 2]
    assert result.model_dump(mode="json")["vector"] == data["vector"]


def test_result_python_dump_keeps_tensors():
    """Outside JSON mode the tensors stay tensors (summary() and Python callers see the real objects)."""
    result = _Holds(vector=torch.ones(3))
    assert isinstance(result.model_dump()["vector"], torch.Tensor)
    assert "vector" in result.summary()
