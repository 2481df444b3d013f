"""Declarative, serialisable interventions at a site and token positions.

Each intervention is pydantic data (``op`` selects the kind) with one method, ``apply(x, mask)``,
that maps the site's activations ``x [B, T, ..., d]`` to new ones, touching only the token rows
where ``mask [B, T]`` is true. Backends attach them as hooks; the same object works in ``run``,
``generate``, ``grad`` and ``with model.intervene([...])`` on every backend.

The set of ops is open: a plugin subclasses :class:`Intervention` with an ``op: Literal[...]``
field and a ``transform`` (or ``apply``), and registers it through ``register_components``;
:func:`parse` finds every registered op by name (:mod:`conceptkit.components`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Literal, Union

import pydantic
import torch

from conceptkit.errors import InputError
from conceptkit.tensors import TensorField

Positions = Union[Literal["all", "last", "first"], list[int]]


class Intervention(pydantic.BaseModel):
    """Base of every intervention op: ``site``, ``positions`` and ``apply``/``transform``."""

    model_config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    site: str
    positions: Positions = "all"

    def __init__(self, **data: object) -> None:
        with input_errors(type(self).__name__):
            super().__init__(**data)

    def apply(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        new = self.transform(x)
        if new.shape != x.shape:
            raise InputError(
                f"{self.op} intervention at {self.site!r} changed the activations' shape from "  # type: ignore[attr-defined]
                f"{tuple(x.shape)} to {tuple(new.shape)}; an intervention must keep it"
            )
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

    def _check_vector(self, x: torch.Tensor, v: torch.Tensor, what: str) -> None:
        """``v`` is one vector for every token: shape ``x.shape[2:]``, or ``[d]`` broadcast."""
        if tuple(v.shape) == tuple(x.shape[2:]) and v.dim() > 0:
            return
        if v.dim() == 1:
            self._check_width(x, v.shape[0], what)
            return
        raise InputError(
            f"{self.op} intervention at {self.site!r}: {what} has shape {tuple(v.shape)} but each token's "  # type: ignore[attr-defined]
            f"activation has shape {tuple(x.shape[2:])}"
        )


_Base = Intervention  # the name used before the ops were opened to plugins


@contextlib.contextmanager
def input_errors(what: str) -> Iterator[None]:
    """Turn a pydantic validation error into one :class:`InputError` line naming field and value."""
    try:
        yield
    except pydantic.ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg} (got {_brief(err.get('input'))})" if loc else msg)
        raise InputError(f"invalid {what}: " + "; ".join(parts)) from None


def _brief(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return value


def _not_scalar(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dim() == 0:
        raise ValueError(f"{what} must be a vector, got a 0-d tensor ({t.item()!r})")
    return t


class Add(Intervention):
    """``x + coeff * vector`` (steering). ``vector`` is ``[d]`` (or a token's full shape, e.g.
    ``[H, d_head]`` at a head site)."""

    op: Literal["add"] = "add"
    vector: TensorField
    coeff: float = 1.0

    @pydantic.field_validator("vector")
    @classmethod
    def _vector(cls, v: torch.Tensor) -> torch.Tensor:
        return _not_scalar(v, "the Add vector")

    @pydantic.field_validator("coeff")
    @classmethod
    def _coeff(cls, v: float) -> float:
        return _finite(v, "the Add coeff")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._check_vector(x, self.vector, "the vector")
        return x + self.coeff * self.vector.to(x.dtype).to(x.device)


class Scale(Intervention):
    """``factor * x``."""

    op: Literal["scale"] = "scale"
    factor: float

    @pydantic.field_validator("factor")
    @classmethod
    def _factor(cls, v: float) -> float:
        return _finite(v, "the Scale factor")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class ProjectOut(Intervention):
    """Remove the span of ``directions [k, d]`` (orthonormalised here): ``x - x Q Qᵀ``."""

    op: Literal["project_out"] = "project_out"
    directions: TensorField

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        dirs = self.directions.reshape(-1, self.directions.shape[-1])
        self._check_width(x, dirs.shape[-1], "the directions")
        q, _ = torch.linalg.qr(dirs.to(torch.float64).T)  # [d, k] orthonormal columns
        q = q.to(x.dtype).to(x.device)
        return x - (x @ q) @ q.T


class Affine(Intervention):
    """``x @ weight.T + bias`` (an eraser, a change of basis); ``weight`` is square ``[d, d]``,
    since the rest of the model reads the site at its own width."""

    op: Literal["affine"] = "affine"
    weight: TensorField
    bias: TensorField | None = None

    @pydantic.model_validator(mode="after")
    def _shapes(self) -> "Affine":
        w = self.weight
        if w.dim() != 2 or w.shape[0] != w.shape[1]:
            raise ValueError(f"the Affine weight must be square [d, d] (it may not change the width), got shape {tuple(w.shape)}")
        if self.bias is not None and tuple(self.bias.shape) != (w.shape[0],):
            raise ValueError(f"the Affine bias must have shape ({w.shape[0]},), got {tuple(self.bias.shape)}")
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x, self.weight.shape[-1], "the weight's input")
        out = x @ self.weight.to(x.dtype).to(x.device).T
        if self.bias is not None:
            out = out + self.bias.to(x.dtype).to(x.device)
        return out


class Replace(Intervention):
    """Set the activations to ``value`` (broadcast over the selected tokens): ``[d]`` or a
    token's full shape."""

    op: Literal["replace"] = "replace"
    value: TensorField

    @pydantic.field_validator("value")
    @classmethod
    def _value(cls, v: torch.Tensor) -> torch.Tensor:
        return _not_scalar(v, "the Replace value")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        self._check_vector(x, self.value, "the value")
        return self.value.to(x.dtype).to(x.device).expand_as(x)


#: The ops that ship with conceptkit (registered through ``_builtin.register_components``).
BUILTIN: tuple[type[Intervention], ...] = (Add, Scale, ProjectOut, Affine, Replace)
# SAE feature interventions (clamp, ablate, scale, add) are conceptkit.sae.SAEFeatures, which refers
# to an SAE by record id instead of carrying its matrices.


def parse(value: object) -> Intervention:
    """An intervention from a dict (e.g. JSON, any registered ``op``) or an intervention object."""
    if isinstance(value, Intervention):
        return value
    from conceptkit import components

    return components.parse("intervention", value, Intervention)


def parse_all(values: Sequence[object] | None) -> list[Intervention]:
    return [parse(v) for v in (values or [])]


def dump(interventions: Sequence[Intervention]) -> list[dict]:
    """JSON-safe form of a list of interventions (round-trips through :func:`parse`)."""
    return [iv.model_dump(mode="json") for iv in interventions]
