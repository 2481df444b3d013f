"""The method contract: a name, a pydantic ``Config``, required capabilities, ``run``.

A plugin author subclasses :class:`Method` (or :class:`ArtifactMethod` for methods whose output
is applied later: erasers, weight edits, steering vectors) and implements ``compute``. The base
class validates the configuration, checks the model's capabilities *before* any compute, and
saves what the result produced to the store, so every method behaves the same from Python and
from the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic

from conceptkit.capabilities import Capability, missing
from conceptkit.errors import CapabilityError, ConfigError, InputError
from conceptkit.handles import Handle

if TYPE_CHECKING:
    from conceptkit.backends.base import Model
    from conceptkit.store import Store
    from conceptkit.store.record import RecordDraft


def jsonable(value: Any) -> Any:
    """``value`` with torch tensors and numpy arrays/scalars (also inside dicts, lists and
    tuples) turned into lists and Python numbers; anything else unchanged."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # the same container type: a tuple field stays a tuple
        return type(value)(jsonable(v) for v in value)
    kind = type(value).__module__.split(".")[0]
    if kind == "torch" and hasattr(value, "tolist"):
        return value.detach().cpu().tolist()
    if kind == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    return value


class MethodConfig(pydantic.BaseModel):
    """Base class of method configurations: unknown fields are errors, never silently ignored."""

    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


class Result(pydantic.BaseModel):
    """What ``Method.run`` returns. Subclasses add fields and override the three hooks below."""

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    method: str = ""
    config: dict[str, Any] = pydantic.Field(default_factory=dict)
    model_ref: dict[str, Any] | None = None
    record_ids: list[str] = pydantic.Field(default_factory=list)
    #: fingerprints of the inputs by name; ``Method.run`` adds the config's text fields, a
    #: method adds others with :meth:`add_input`
    input_fingerprints: dict[str, str] = pydantic.Field(default_factory=dict)
    #: who made this (filled by ``Method.run``); written into every draft by :meth:`save`
    provenance: Any = pydantic.Field(None, exclude=True, repr=False)

    @pydantic.field_serializer("*", mode="wrap", check_fields=False)
    def _json_safe(self, value: Any, handler: Any, info: Any) -> Any:
        """In JSON mode (``--json``, ``model_dump_json``) tensors and numpy values become
        (nested) lists and numbers, so a result may hold them in any field."""
        return handler(jsonable(value) if info.mode_is_json() else value)

    def add_input(self, name: str, inputs: Any, model: "Model | None" = None) -> str:
        """Record the fingerprint of ``inputs`` (texts or token ids) under ``name``."""
        from conceptkit.provenance import input_fingerprint

        self.input_fingerprints[name] = value = input_fingerprint(inputs, model)
        return value

    def summary(self) -> str:
        """A human-readable text summary (printed by the CLI)."""
        hidden = ("config", "record_ids", "input_fingerprints")
        fields = {k: v for k, v in self.model_dump().items() if k not in hidden}
        return "\n".join(f"{k}: {v}" for k, v in fields.items())

    def plot(self, path: str | Path) -> Path | None:
        """Write a figure to ``path`` where a picture helps; ``None`` when the method has none."""
        return None

    def _repr_html_(self) -> str:
        """Jupyter: a table of the fields, the summary, and the figure inline when there is one."""
        from conceptkit._html import result_html

        return result_html(self)

    def drafts(self) -> list["RecordDraft"]:
        """The concept vectors this result wants stored (empty by default)."""
        return []

    def save(self, store: "Store") -> list[str]:
        """Store every draft, with the core's provenance filled in; returns and remembers the ids.

        All or nothing: one bad draft stores none (``put_many`` validates every draft first)."""
        drafts = [self.with_provenance(draft) for draft in self.drafts()]
        put_many = getattr(store, "put_many", None)
        ids = [r.id for r in put_many(drafts)] if put_many is not None else [store.put(d).id for d in drafts]
        self.record_ids = ids
        return ids

    def with_provenance(self, draft: "RecordDraft") -> "RecordDraft":
        """``draft`` with method (plugin, distribution, version, config, inputs) and model ref
        filled in from this result. The method's identity always comes from the core; a config
        or model the draft set itself is kept."""
        if self.provenance is None:  # not made by Method.run: nothing known to fill in
            return draft
        own = draft.method
        info = self.provenance.model_copy(
            update={
                "config": own.config or self.config,
                "inputs": {**self.input_fingerprints, **own.inputs},
            }
        )
        return draft.model_copy(update={"method": info, "model": draft.model or self.model_ref})


def validate_config(config_cls: type[MethodConfig], value: Any, method: str) -> MethodConfig:
    """Turn a dict / instance / None into a validated config; errors name method, field and value."""
    if isinstance(value, config_cls):
        return value
    if value is None:
        value = {}
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        raise ConfigError(f"method {method!r}: config must be a mapping, got {type(value).__name__}")
    try:
        return config_cls.model_validate(value)
    except pydantic.ValidationError as exc:
        raise ConfigError(format_validation_error(exc, method, config_cls)) from None


def _field_names(cls: type[pydantic.BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model that rejected an unknown key (for a "did you mean")."""
    if cls is None:
        return []
    for part in loc[:-1]:  # descend into nested models where the location names one
        field = cls.model_fields.get(str(part)) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, pydantic.BaseModel):
            cls = ann
    return list(cls.model_fields)


def format_validation_error(exc: pydantic.ValidationError, method: str, config_cls: type[pydantic.BaseModel] | None = None) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<config>"
        if err["type"] == "extra_forbidden":
            import difflib

            known = _field_names(config_cls, err["loc"])
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=3, cutoff=0.6) if known else []
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            parts.append(f"unknown field {loc!r}{hint}")
        elif err["type"] == "missing":
            parts.append(f"missing required field {loc!r}")
        else:
            parts.append(f"field {loc!r}: {err['msg']} (got {err.get('input')!r})")
    return f"method {method!r}: invalid config: " + "; ".join(parts)


class Method:
    """Base class of every conceptkit method.

    Class attributes:
        name: the name users type (``conceptkit run NAME``).
        Config: a :class:`MethodConfig` subclass; its JSON schema drives ``--help``.
        requires: capabilities the model's backend must offer.
        needs_model: ``False`` for methods that work on stored data only.
        description: one line for listings.
        supports_ray: ``True`` for methods whose dataset-scale passes go through
            ``conceptkit.scale.dataset_moments`` / ``dataset_capture``, and so run over Ray
            workers inside ``conceptkit.scale.use_ray`` (``conceptkit run METHOD --ray``).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    requires: ClassVar[frozenset[Capability]] = frozenset()
    needs_model: ClassVar[bool] = True
    description: ClassVar[str] = ""
    supports_ray: ClassVar[bool] = False

    def check(self, model: "Model | None") -> None:
        """Raise before any compute if ``model`` cannot serve this method."""
        if model is None:
            if self.needs_model:
                raise InputError(f"method {self.name!r} needs a model (pass one, or --model NAME)")
            return
        lacking = missing(self.requires, model.capabilities)
        if lacking:
            raise CapabilityError(
                f"method {self.name!r} requires {', '.join(lacking)}, which backend "
                f"{model.backend_name!r} does not offer"
            )

    def run(self, model: "Model | None" = None, config: Any = None, store: "Store | None" = None) -> Result:
        """Validate, check capabilities, compute, and save to ``store`` if one is given."""
        cfg = validate_config(self.Config, config, self.name)
        self.check(model)
        if not self.supports_ray:  # inside use_ray, a method that would silently run locally is an error
            from conceptkit.scale.dataset import active_ray, check_ray_support

            if active_ray() is not None:
                check_ray_support(self)
        result = self.compute(model, cfg, store)
        from conceptkit.provenance import config_inputs, method_info

        result.method = self.name
        result.config = cfg.model_dump(mode="json")
        if model is not None and result.model_ref is None:
            result.model_ref = model.ref.model_dump(mode="json")
        result.input_fingerprints = {**config_inputs(cfg), **result.input_fingerprints}
        result.provenance = method_info(self, result.config)
        if store is not None:
            result.save(store)
        return result

    def compute(self, model: "Model | None", config: Any, store: "Store | None") -> Result:
        """The method itself; implemented by subclasses."""
        raise NotImplementedError(f"method {self.name!r} does not implement compute()")

    def __repr__(self) -> str:
        return f"<conceptkit method {self.name!r}>"


class ArtifactMethod(Method):
    """A method whose output is applied later: ``fit`` returns an artifact, ``apply`` a handle.

    ``run`` fits (and reports); ``apply(artifact, model)`` returns a :class:`Handle` that undoes
    itself on ``remove()`` or at the end of a ``with`` block.
    """

    def fit(self, model: "Model | None", config: Any = None, store: "Store | None" = None) -> Any:
        raise NotImplementedError(f"method {self.name!r} does not implement fit()")

    def apply(self, artifact: Any, model: "Model") -> Handle:
        raise NotImplementedError(f"method {self.name!r} does not implement apply()")
