"""Store records: one concept vector (or a named set) plus its manifest.

A manifest says what the vector is (concept, examples' fingerprint), how it was made (plugin,
distribution version, full config), from what (model ref, site, token reduction), what it
holds (tensor names, shapes, dtypes, normalisation), how good it is (metrics), and where it
came from (parents). Ids are content hashes: the same result stored twice is one record.
Nothing here is code: no class paths, no pickles (methods are looked up by plugin name).
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any, Literal

import pydantic
import torch

from conceptkit.errors import StoreError
from conceptkit.store.checks import stable_norm

SCHEMA_VERSION = 1
ALLOWED_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64}
MetricValue = float | int | str | bool | None | list[float] | list[int] | list[str]


class MethodInfo(pydantic.BaseModel):
    """Which plugin made the vector, with what configuration, from which inputs.

    Filled by the core (``Method.run`` / ``Result.save``, or ``conceptkit.method_info``), never
    built by hand in a plugin.
    """

    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = "manual"
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None
    config: dict[str, Any] = pydantic.Field(default_factory=dict)
    #: fingerprints of the inputs (texts or token ids) the result was computed from, by name
    inputs: dict[str, str] = pydantic.Field(default_factory=dict)


class TensorInfo(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    shape: list[int]
    dtype: str
    normalised: bool = False
    norm: float | None = None


def _check_name(value: str) -> str:
    if not value or not value.strip():
        raise ValueError("concept name must not be empty")
    return value


class RecordDraft(pydantic.BaseModel):
    """What a method hands to ``Store.put``: tensors plus everything but the id and timestamps."""

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    tensors: dict[str, torch.Tensor]
    concept: str
    description: str = ""
    kind: str = "vector"  # vector | vector_set | sae | eraser | weight_edit | ...
    examples_fingerprint: str | None = None
    method: MethodInfo = pydantic.Field(default_factory=MethodInfo)
    model: dict[str, Any] | None = None
    site: str | None = None
    reduction: str | list[int] | None = None
    metrics: dict[str, MetricValue] = pydantic.Field(default_factory=dict)
    tags: list[str] = pydantic.Field(default_factory=list)
    parents: list[str] = pydantic.Field(default_factory=list)

    _v_concept = pydantic.field_validator("concept")(classmethod(lambda cls, v: _check_name(v)))

    @pydantic.field_validator("tensors", mode="before")
    @classmethod
    def _tensors(cls, value: Any) -> dict[str, torch.Tensor]:
        if isinstance(value, torch.Tensor):
            value = {"vector": value}
        if not isinstance(value, dict) or not value:
            raise ValueError("a record needs at least one tensor")
        out = {}
        for name, t in value.items():
            if not isinstance(name, str) or not name or name.startswith("__"):
                raise ValueError(f"invalid tensor name {name!r}")
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
            if t.dtype not in ALLOWED_DTYPES:
                raise ValueError(
                    f"tensor {name!r} has dtype {str(t.dtype).removeprefix('torch.')}; allowed: float16, bfloat16, float32, float64, int32, int64"
                )
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"tensor {name!r} contains NaN or Inf values")
            out[name] = t.detach().cpu().contiguous()
        return out

    @pydantic.field_validator("metrics")
    @classmethod
    def _metrics(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Undefined metrics (a NaN p-value) are kept as null: JSON has no NaN.
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in value.items()}

    def tensor_infos(self) -> dict[str, TensorInfo]:
        infos = {}
        for name, t in self.tensors.items():
            norm = stable_norm(t)  # scaled float64: an all-1e300 vector keeps a finite norm
            infos[name] = TensorInfo(
                shape=list(t.shape),
                dtype=str(t.dtype).removeprefix("torch."),
                normalised=bool(norm is not None and t.dim() == 1 and abs(norm - 1.0) < 1e-4),
                norm=norm,
            )
        return infos


class Record(pydantic.BaseModel):
    """A stored record's manifest (tensors are loaded separately with ``Store.tensors``)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str
    concept: str
    description: str = ""
    kind: str = "vector"
    examples_fingerprint: str | None = None
    method: MethodInfo
    model: dict[str, Any] | None = None
    site: str | None = None
    reduction: str | list[int] | None = None
    tensors: dict[str, TensorInfo]
    metrics: dict[str, MetricValue] = pydantic.Field(default_factory=dict)
    tags: list[str] = pydantic.Field(default_factory=list)
    parents: list[str] = pydantic.Field(default_factory=list)
    created_at: datetime
    conceptkit_version: str
    blob_sha256: str

    _v_concept = pydantic.field_validator("concept")(classmethod(lambda cls, v: _check_name(v)))

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def _repr_html_(self) -> str:
        """Jupyter: what the record holds and its provenance, as tables."""
        from conceptkit._html import record_html

        return record_html(self)


def content_id(draft: RecordDraft) -> str:
    """sha256 over the tensors' bytes and the manifest fields that define the content."""
    h = hashlib.sha256()
    for name in sorted(draft.tensors):
        t = draft.tensors[name]
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    meta = draft.model_dump(mode="json", exclude={"tensors"})
    meta["tags"] = sorted(set(meta["tags"]))
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def parse_manifest(data: Any, where: str = "manifest") -> Record:
    """Validate a manifest dict, refusing unknown schema versions by name."""
    if not isinstance(data, dict):
        raise StoreError(f"{where}: a manifest must be a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(f"{where}: unknown schema_version {version!r} (this conceptkit reads {SCHEMA_VERSION})")
    try:
        return Record.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise StoreError(f"{where}: invalid field {loc!r}: {first['msg']}") from None


def now() -> datetime:
    return datetime.now(timezone.utc)
