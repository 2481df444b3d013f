"""Weight edits as data: storable, composable, undone exactly, applied on every backend.

A :class:`WeightEdit` names one parameter (a weight *role* and layer, whose matrix it sees in
TransformerLens ``[in, out]`` layout, or a raw parameter path), says how it changes (low-rank
factors or a dense delta, or a registered kind of its own), and carries the hash of the base
weights it was computed on. ``model.apply_edit(edit)`` returns a handle; a
:class:`WeightEditSet` applies several as one.

Composition rule (the *ledger*, one per parameter): the first edit of a parameter keeps a copy of
its original bits; every edit is an operation on the weight; the parameter always equals the
original with the active operations applied freshly, in the order they were applied. Removing an
edit (in any order) recomputes that from the original, so removing all restores the exact bits
and removing one never disturbs another.

Example:
    >>> import torch, conceptkit as ck
    >>> model = ck.load_model("tiny-llama", backend="transformers")  # doctest: +SKIP
    >>> u, v = torch.randn(128, 1), torch.randn(64, 1)
    >>> edit = ck.WeightEdit.low_rank(role="out", layer=1, left=u, right=v)  # doctest: +SKIP
    >>> with model.apply_edit(edit):  # doctest: +SKIP
    ...     logits = model.run(["hello"])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
import torch

from conceptkit.errors import InputError, UnknownNameError
from conceptkit.handles import Handle, HandleGroup
from conceptkit.tensors import TensorField

if TYPE_CHECKING:
    from conceptkit.store.record import Record, RecordDraft

__all__ = [
    "WeightEdit", "LowRankEdit", "DenseEdit", "WeightEditSet", "WeightEditHandle",
    "register_kind", "kinds", "parameter_hash", "apply_edit", "load", "edit_op", "RECORD_KIND",
]

RECORD_KIND = "weight_edit"
_SPEC_KEY = "weight_edits"  # the record metric holding the edits' JSON spec (tensors are stored apart)


def parameter_hash(t: torch.Tensor) -> str:
    """sha256 over a parameter's shape, dtype and bytes (as stored by the framework)."""
    data = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(data.shape)}|{data.dtype}".encode())
    h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:24]


# -- the ledger: per-parameter bookkeeping ----------------------------------------------------------
class _Ledger:
    """The original bits of one parameter and the active operations on it, in order."""

    def __init__(self, param: torch.Tensor) -> None:
        self.original = param.detach().clone()
        self.active: list[tuple[object, Callable[[torch.Tensor], torch.Tensor]]] = []


_LEDGER_ATTR = "_conceptkit_ledger"
_generation = 0  # bumped by every edit and every removal: cached model refs (weights hashes) go stale


def generation() -> int:
    """A counter that changes whenever an edit is applied or removed anywhere in this process.

    ``Model.ref`` caches the weights hash; it recomputes it when this counter moved, so a record,
    a cache key (TCAV's activations, ROCR's statistics) or the Ray workers' weights check made on
    an edited model names the edited weights, not the original ones. (In-place changes made
    around the ledger, ``param.data.add_(...)``, are not seen.)"""
    return _generation


def _bump() -> None:
    global _generation
    _generation += 1


def _checked(new: torch.Tensor, param: torch.Tensor, what: str) -> torch.Tensor:
    if new.shape != param.shape:
        raise InputError(f"edit of {what} produced shape {tuple(new.shape)}, expected {tuple(param.shape)}; nothing changed")
    if new.is_floating_point() and not torch.isfinite(new).all():
        raise InputError(f"edit of {what} produced NaN or Inf values; nothing changed")
    return new.to(param.dtype)


def edit_op(param: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor], what: str) -> Handle:
    """Apply ``op`` (weight in, new weight out, stored layout) to ``param`` through its ledger.

    The handle removes exactly this operation: the parameter becomes the original with the
    remaining operations applied in their order. ``op`` must be a deterministic function.
    """
    ledger: _Ledger | None = getattr(param, _LEDGER_ATTR, None)
    new = _checked(op(param.detach().clone()), param, what)
    if ledger is None:
        ledger = _Ledger(param)
        setattr(param, _LEDGER_ATTR, ledger)
    token = object()
    ledger.active.append((token, op))
    with torch.no_grad():
        param.copy_(new)
    _bump()

    def undo() -> None:
        ledger.active[:] = [(t, f) for t, f in ledger.active if t is not token]
        w = ledger.original.clone()
        for _, f in ledger.active:
            w = _checked(f(w), param, what)
        with torch.no_grad():
            param.copy_(w)
        _bump()
        if not ledger.active and getattr(param, _LEDGER_ATTR, None) is ledger:
            delattr(param, _LEDGER_ATTR)

    return Handle(undo, f"edit {what}")


def original_of(param: torch.Tensor) -> torch.Tensor:
    """The parameter's bits before any active edit (itself when none is active)."""
    ledger: _Ledger | None = getattr(param, _LEDGER_ATTR, None)
    return ledger.original if ledger is not None else param.detach()


# -- edit kinds ------------------------------------------------------------------------------------
class WeightEdit(pydantic.BaseModel):
    """One change of one parameter. Subclasses (kinds) say how: :meth:`compute_delta`.

    Fields:
        kind: the registered kind (``low_rank``, ``dense``, or a plugin's).
        role, layer: the parameter by weight role (``"out"``, ``"in"``, ``"o"``, ``"qkv"``,
            ``"unembed"`` ... as ``model.weights`` names them); tensors are in TL ``[in, out]``
            layout and the core converts for ``nn.Linear`` vs GPT-2's ``Conv1D``.
        param: or a raw parameter path (``"model.layers.3.mlp.down_proj.weight"``,
            ``"unet.<...>.to_k.weight"``); tensors are then in the parameter's own layout.
        base_hash: :func:`parameter_hash` of the weight the edit was computed on (the
            parameter as stored); applying to other weights is refused.
    """

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    kind: str
    role: str | None = None
    layer: int | None = None
    param: str | None = None
    base_hash: str | None = None

    #: names of the tensor fields (stored as record tensors, not in the JSON spec)
    tensor_fields: ClassVar[tuple[str, ...]] = ()

    @pydantic.model_validator(mode="after")
    def _one_target(self) -> "WeightEdit":
        if (self.role is None) == (self.param is None):
            raise ValueError("a weight edit targets either a role (with layer) or a raw parameter path, exactly one")
        return self

    # -- what a kind implements ------------------------------------------------------------------
    def compute_delta(self, base: torch.Tensor) -> torch.Tensor:
        """The additive change, in the edit's layout, given the base weight in that layout."""
        raise NotImplementedError(f"weight edit kind {self.kind!r} does not implement compute_delta()")

    # -- constructors ----------------------------------------------------------------------------
    @staticmethod
    def low_rank(left: Any, right: Any, *, role: str | None = None, layer: int | None = None, param: str | None = None,
                 base_hash: str | None = None) -> "LowRankEdit":
        """``ΔW = left @ right.T``; ``left`` ``[in, r]``, ``right`` ``[out, r]`` (1-D means rank one)."""
        return LowRankEdit(left=left, right=right, role=role, layer=layer, param=param, base_hash=base_hash)

    @staticmethod
    def dense(delta: Any, *, role: str | None = None, layer: int | None = None, param: str | None = None,
              base_hash: str | None = None) -> "DenseEdit":
        """``ΔW = delta`` (``[in, out]`` for a role, the parameter's own shape for a path)."""
        return DenseEdit(delta=delta, role=role, layer=layer, param=param, base_hash=base_hash)

    # -- use -------------------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.param if self.param is not None else f"{self.role}@{self.layer}"

    def apply(self, model: Any, *, check_hash: bool = True) -> Handle:
        """Apply to a model (or a ``model.weights``); the handle undoes exactly this edit."""
        return apply_edit(model, self, check_hash=check_hash)

    def with_base(self, model: Any) -> "WeightEdit":
        """A copy whose ``base_hash`` is the hash of ``model``'s (unedited) target parameter."""
        param, _ = _resolve(model, self)
        return self.model_copy(update={"base_hash": parameter_hash(original_of(param))})

    def spec(self) -> dict[str, Any]:
        """The JSON part (everything but tensors)."""
        return self.model_dump(mode="json", exclude=set(self.tensor_fields))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.tensor_fields}

    def to_draft(self, concept: str, **kwargs: Any) -> "RecordDraft":
        """A store draft (kind ``weight_edit``) holding this one edit; see :meth:`WeightEditSet.to_draft`."""
        return WeightEditSet([self]).to_draft(concept, **kwargs)


class LowRankEdit(WeightEdit):
    """``ΔW = left @ right.T`` (rank r): rank-one editors (ROME, ROCR) store a key and a value."""

    kind: Literal["low_rank"] = "low_rank"
    left: TensorField
    right: TensorField
    tensor_fields: ClassVar[tuple[str, ...]] = ("left", "right")

    @pydantic.field_validator("left", "right")
    @classmethod
    def _matrix(cls, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, 1) if t.dim() == 1 else t

    def compute_delta(self, base: torch.Tensor) -> torch.Tensor:
        left, right = self.left.to(base.dtype), self.right.to(base.dtype)
        if left.shape[1] != right.shape[1] or (left.shape[0], right.shape[0]) != tuple(base.shape):
            raise InputError(
                f"low-rank edit of {self.target}: left {tuple(self.left.shape)} and right {tuple(self.right.shape)} "
                f"do not make a {tuple(base.shape)} weight (left [in, r], right [out, r])"
            )
        return left @ right.T


class DenseEdit(WeightEdit):
    """``ΔW = delta``: a full-rank change (UCE's closed-form edits)."""

    kind: Literal["dense"] = "dense"
    delta: TensorField
    tensor_fields: ClassVar[tuple[str, ...]] = ("delta",)

    def compute_delta(self, base: torch.Tensor) -> torch.Tensor:
        if tuple(self.delta.shape) != tuple(base.shape):
            raise InputError(f"dense edit of {self.target}: delta {tuple(self.delta.shape)}, weight {tuple(base.shape)}")
        return self.delta.to(base.dtype)


# -- registry of kinds (the ``weight_edit`` component family) ----------------------------------------
#: the core's own kinds, registered through ``register_components`` like a plugin's
BUILTIN: tuple[type[WeightEdit], ...] = (LowRankEdit, DenseEdit)
_LOCAL: dict[str, type] = {}


def register_kind(cls: type) -> None:
    """Add an edit kind in this process (plugins use ``register_components``:
    ``register("weight_edit", MyEdit)``): a :class:`WeightEdit` subclass with a ``Literal``
    ``kind`` that implements :meth:`WeightEdit.compute_delta`."""
    from conceptkit.components import component_name

    _LOCAL[component_name("weight_edit", cls)] = cls


def kinds() -> dict[str, type]:
    """Registered edit kinds by name: the built-ins and those plugins added."""
    from conceptkit import components

    table = {name: components.get("weight_edit", name) for name in components.kinds("weight_edit")}
    return {**{c.model_fields["kind"].default: c for c in BUILTIN}, **table, **_LOCAL}


def parse(spec: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> WeightEdit:
    """One edit from its JSON spec and tensors (the inverse of ``spec()`` + ``tensors()``)."""
    kind = spec.get("kind")
    table = kinds()
    if kind not in table:
        raise UnknownNameError("weight edit kind", str(kind), table)
    return table[kind].model_validate({**spec, **(tensors or {})})


# -- targets ---------------------------------------------------------------------------------------
def _weights_of(model: Any) -> Any:
    from conceptkit.backends.weights import Weights

    return model if isinstance(model, Weights) else model.weights


def _resolve(model: Any, edit: WeightEdit) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The parameter an edit targets and the switch between its stored and the edit's layout."""
    if edit.role is not None:
        weights = _weights_of(model)
        role = edit.role
        return weights.parameter(role, edit.layer), lambda t: weights.in_out(role, t)
    return find_parameter(model, edit.param), lambda t: t  # type: ignore[arg-type]


def find_parameter(model: Any, path: str) -> torch.nn.Parameter:
    """A parameter by raw path on any backend (the framework's own module names).

    TransformerLens bridges are addressed by the HF model they wrap (``original_model``);
    diffusers models by ``unet.<...>`` / ``text_encoder.<...>``.
    """
    finder = getattr(model, "find_parameter", None)
    if callable(finder):
        return finder(path)
    from conceptkit.backends.weights import Weights

    if isinstance(model, Weights):
        root = model.root
    else:
        root = getattr(model, "hf", None)
        if root is None:
            root = getattr(model, "tl", None)
    if root is None:
        raise InputError(f"backend {getattr(model, 'backend_name', type(model).__name__)!r} has no parameters to edit")
    try:
        return root.get_parameter(path)
    except AttributeError:
        names = [n for n, _ in root.named_parameters()]
        raise UnknownNameError("parameter", path, names[:20] + (["..."] if len(names) > 20 else [])) from None


def apply_edit(model: Any, edit: "WeightEdit | WeightEditSet", *, check_hash: bool = True) -> Handle:
    """Apply an edit (or a set) to a model or its weights; the handle undoes exactly it.

    Raises:
        InputError: the edit's ``base_hash`` matches neither the parameter's original bits nor
            its current bits (another checkpoint, dtype or edit state); nothing changes.
    """
    if isinstance(edit, WeightEditSet):
        return edit.apply(model, check_hash=check_hash)
    if not isinstance(edit, WeightEdit):
        applier = getattr(edit, "apply", None)
        if callable(applier):  # a registered non-weight edit kind (an activation eraser ...)
            return applier(model)
        raise InputError(f"cannot apply a {type(edit).__name__} as a weight edit")
    param, layout = _resolve(model, edit)
    if check_hash and edit.base_hash is not None:
        ok = {parameter_hash(original_of(param)), parameter_hash(param)}
        if edit.base_hash not in ok:
            raise InputError(
                f"weight edit of {edit.target} was computed on weights {edit.base_hash}, but this model's are "
                f"{parameter_hash(original_of(param))} (another checkpoint, dtype or edit state); refused. "
                f"Pass check_hash=False to apply it anyway"
            )

    def op(w: torch.Tensor) -> torch.Tensor:
        return w + layout(edit.compute_delta(layout(w)))

    return edit_op(param, op, f"{edit.kind} edit of {edit.target}")


# -- sets and records -----------------------------------------------------------------------------
class WeightEditHandle(HandleGroup):
    """The handle of an applied :class:`WeightEditSet`: removes all its edits, in reverse order."""


class WeightEditSet:
    """Several edits applied and removed as one (all or nothing), stored as one record."""

    def __init__(self, edits: Iterable[Any], name: str = "") -> None:
        self.edits = list(edits)
        self.name = name

    def __iter__(self) -> Iterator[Any]:
        return iter(self.edits)

    def __len__(self) -> int:
        return len(self.edits)

    def __repr__(self) -> str:
        return f"WeightEditSet({self.name!r}, {len(self.edits)} edits: {', '.join(e.kind for e in self.edits)})"

    def apply(self, model: Any, *, check_hash: bool = True) -> WeightEditHandle:
        """Apply every edit; if one is refused, those applied are undone and the error raised."""
        group = WeightEditHandle(description=f"weight edits {self.name!r}")
        try:
            for edit in self.edits:
                group.add(apply_edit(model, edit, check_hash=check_hash))
        except BaseException:
            group.remove()
            raise
        return group

    def with_base(self, model: Any) -> "WeightEditSet":
        return WeightEditSet([e.with_base(model) for e in self.edits], self.name)

    # -- records -----------------------------------------------------------------------------------
    def to_draft(self, concept: str, *, description: str = "", model: Any = None, tags: list[str] | None = None,
                 parents: list[str] | None = None, metrics: dict[str, Any] | None = None) -> "RecordDraft":
        """A store draft of kind ``weight_edit``: tensors ``"<i>.<field>"``, the JSON spec in the
        ``weight_edits`` metric. Method provenance is filled by the core when a method's result
        saves it (or pass the draft through ``Result.with_provenance``)."""
        from conceptkit.store.record import RecordDraft

        tensors: dict[str, torch.Tensor] = {}
        specs = []
        for i, edit in enumerate(self.edits):
            specs.append(edit.spec())
            tensors.update({f"{i}.{k}": v for k, v in edit.tensors().items()})
        if not tensors:  # a record holds at least one tensor; kinds without tensors get a count
            tensors["count"] = torch.tensor([len(self.edits)])
        ref = model.ref.model_dump(mode="json") if hasattr(model, "ref") else model
        return RecordDraft(
            tensors=tensors,
            concept=concept,
            description=description or f"{len(self.edits)} weight edit(s): " + ", ".join(f"{e.kind} {e.target}" for e in self.edits),
            kind=RECORD_KIND,
            model=ref,
            site=",".join(e.target for e in self.edits),
            metrics={**(metrics or {}), _SPEC_KEY: json.dumps({"name": self.name, "edits": specs}, sort_keys=True)},
            tags=list(tags or []),
            parents=list(parents or []),
        )

    @classmethod
    def from_record(cls, record: "Record", tensors: dict[str, torch.Tensor]) -> "WeightEditSet":
        raw = record.metrics.get(_SPEC_KEY)
        if not isinstance(raw, str):
            raise InputError(f"record {record.short_id} of kind {record.kind!r} holds no weight-edit spec")
        data = json.loads(raw)
        edits = []
        for i, spec in enumerate(data["edits"]):
            own = {k.split(".", 1)[1]: t for k, t in tensors.items() if "." in k and k.split(".", 1)[0] == str(i)}
            edits.append(parse(spec, own))
        return cls(edits, data.get("name") or record.concept)


def load(store: Any, record_id: str) -> Any:
    """The edit stored as ``record_id``, ready to ``apply(model)`` on any backend.

    Records of kind ``weight_edit`` give a :class:`WeightEditSet`; records of another kind are
    served by the registered edit kind whose ``record_kind`` matches (e.g. erasers).
    """
    record, tensors = store.load(record_id)
    return from_record(record, tensors)


def from_record(record: "Record", tensors: dict[str, torch.Tensor]) -> Any:
    """The edit a record holds (see :func:`load`)."""
    if record.kind == RECORD_KIND:
        return WeightEditSet.from_record(record, tensors)
    for cls in kinds().values():
        if getattr(cls, "record_kind", None) == record.kind and hasattr(cls, "from_record"):
            return cls.from_record(record, tensors)
    artifact = _artifact_edit(record, tensors)
    if artifact is not None:
        return artifact
    served = sorted({RECORD_KIND} | {k for c in kinds().values() if (k := getattr(c, "record_kind", None))})
    raise InputError(
        f"record {record.short_id} is a {record.kind!r} made by {record.method.name!r}, which neither an edit kind nor an "
        f"artifact method applies; edit records are {', '.join(served)} or the artifacts of fit/apply methods"
    )


class ArtifactEdit:
    """A stored artifact of a fit/apply method (an eraser ...), applied by that method."""

    def __init__(self, method: Any, record: "Record", tensors: dict[str, torch.Tensor]) -> None:
        self.method, self.record, self.tensors = method, record, tensors
        self.kind = f"{record.method.name} {record.kind}"

    def apply(self, model: Any, *, check_hash: bool = True) -> Handle:
        return self.method.apply(self.tensors, model)

    def __repr__(self) -> str:
        return f"ArtifactEdit({self.kind!r}, {len(self.tensors)} tensors)"


def _artifact_edit(record: "Record", tensors: dict[str, torch.Tensor]) -> ArtifactEdit | None:
    from conceptkit.contract import ArtifactMethod
    from conceptkit.plugin_manager import get_manager

    entry = get_manager().registry.methods.get(record.method.name)
    if entry is None or not issubclass(entry[0], ArtifactMethod):
        return None
    return ArtifactEdit(entry[0](), record, tensors)
