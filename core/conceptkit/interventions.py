"""Declarative, serialisable interventions at a site and token positions.

Each intervention is pydantic data (``op`` selects the kind) with one method, ``apply(x, mask)``,
that maps the site's activations ``x [B, T, ..., d]`` to new ones, touching only the token rows
where ``mask [B, T]`` is true. Backends attach them as hooks; the same object works in ``run``,
``generate``, ``grad`` and ``with model.intervene([...])`` on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, Union

import pydantic
import torch

from conceptkit.errors import InputError
from conceptkit.tensors import TensorField

Positions = Union[Literal["all", "last", "first"], list[int]]


class _Base(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    site: str
    positions: Positions = "all"

    def apply(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        new = self.transform(x)
        m = mask.to(x.device).reshape(*mask.shape, *([1] * (x.dim() - 2)))
        return torch.where(m, new, x)

    def transform(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_width(self, x: torch.Tensor, width: int, what: str) -> None:
        if x.shape[-1] != width:
            raise InputError(
                f"{self.op} intervention at {self.site!r}: {what} has width {width} but the site's "  # type: ignore[attr-defined]
                f"activations have width {x.shape[-1]}"
            )


class Add(_Base):
    """``x + coeff * vector`` (steering)."""

    op: Literal["add"] = "add"
    vector: TensorField
    coeff: float = 1.0

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x, self.vector.shape[-1], "the vector")
        return x + self.coeff * self.vector.to(x.dtype).to(x.device)


class Scale(_Base):
    """``factor * x``."""

    op: Literal["scale"] = "scale"
    factor: float

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class ProjectOut(_Base):
    """Remove the span of ``directions [k, d]`` (orthonormalised here): ``x - x Q Qᵀ``."""

    op: Literal["project_out"] = "project_out"
    directions: TensorField

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        dirs = self.directions.reshape(-1, self.directions.shape[-1])
        self._check_width(x, dirs.shape[-1], "the directions")
        q, _ = torch.linalg.qr(dirs.to(torch.float64).T)  # [d, k] orthonormal columns
        q = q.to(x.dtype).to(x.device)
        return x - (x @ q) @ q.T


class Affine(_Base):
    """``x @ weight.T + bias`` (an eraser, a change of basis)."""

    op: Literal["affine"] = "affine"
    weight: TensorField
    bias: TensorField | None = None

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x, self.weight.shape[-1], "the weight's input")
        out = x @ self.weight.to(x.dtype).to(x.device).T
        if self.bias is not None:
            out = out + self.bias.to(x.dtype).to(x.device)
        return out


class Replace(_Base):
    """Set the activations to ``value`` (broadcast over the selected tokens)."""

    op: Literal["replace"] = "replace"
    value: TensorField

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x, self.value.shape[-1], "the value")
        return self.value.to(x.dtype).to(x.device).expand_as(x)


class ClampFeatures(_Base):
    """Clamp SAE features: encode, set ``features`` to ``value``, add back the decoded change.

    Only the change in the chosen features is written back (``x + (f' - f) W_dec``), so the
    SAE's reconstruction error does not leak into the model (the standard SAE-steering recipe).
    """

    op: Literal["clamp_features"] = "clamp_features"
    W_enc: TensorField  # [d, n_features]
    b_enc: TensorField  # [n_features]
    W_dec: TensorField  # [n_features, d]
    b_dec: TensorField  # [d]
    features: list[int]
    value: float = 0.0

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x, self.W_enc.shape[0], "the SAE encoder")
        W_enc, b_enc = self.W_enc.to(x), self.b_enc.to(x)
        W_dec, b_dec = self.W_dec.to(x), self.b_dec.to(x)
        idx = torch.as_tensor(self.features, device=x.device)
        acts = torch.relu((x - b_dec) @ W_enc[:, idx] + b_enc[idx])
        delta = (self.value - acts) @ W_dec[idx]
        return x + delta


Intervention = Annotated[
    Union[Add, Scale, ProjectOut, Affine, Replace, ClampFeatures], pydantic.Field(discriminator="op")
]
_ADAPTER = pydantic.TypeAdapter(Intervention)


def parse(value: object) -> "_Base":
    """An intervention from a dict (e.g. JSON) or an intervention object."""
    if isinstance(value, _Base):
        return value
    return _ADAPTER.validate_python(value)


def parse_all(values: Sequence[object] | None) -> list["_Base"]:
    return [parse(v) for v in (values or [])]


def dump(interventions: Sequence["_Base"]) -> list[dict]:
    """JSON-safe form of a list of interventions (round-trips through :func:`parse`)."""
    return [iv.model_dump(mode="json") for iv in interventions]
