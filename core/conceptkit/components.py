"""Components: the pieces of the core's vocabulary that plugins may add, looked up by name.

Four families: intervention ops, objectives, virtual sites and weight-edit kinds. Each component
is a pydantic model with a ``Literal`` discriminator field (``op`` for interventions, ``kind``
for the others) whose value is its name, so it round-trips through JSON: ``dump`` writes the
name with the data and ``parse`` finds the class again by that name. Plugins register them with
the ``register_components(register)`` hook; the core's own register the same way (``_builtin``).

Components are collected the first time one is looked up, not when plugins are listed, so
``conceptkit plugins`` still imports no torch.

Example:
    >>> class Clip(ck.interventions.Intervention):  # doctest: +SKIP
    ...     op: Literal["clip"] = "clip"
    ...     bound: float
    ...     def transform(self, x): return x.clamp(-self.bound, self.bound)
    >>> @ck.hookimpl  # doctest: +SKIP
    ... def register_components(register):
    ...     register("intervention", Clip)
"""

from __future__ import annotations

import threading
import typing
import warnings
from typing import Any, Literal

import pydantic

from conceptkit.errors import InputError, PluginError, UnknownNameError

Family = Literal["intervention", "objective", "virtual_site", "weight_edit"]
#: family -> the discriminator field carrying a component's name
DISCRIMINATORS: dict[str, str] = {"intervention": "op", "objective": "kind", "virtual_site": "kind", "weight_edit": "kind"}

_lock = threading.RLock()
_cache: tuple[Any, dict[str, dict[str, tuple[type, str]]]] | None = None


def component_name(family: str, cls: type) -> str:
    """The name a component class registers under: the single value of its ``Literal`` field."""
    if family not in DISCRIMINATORS:
        raise PluginError(f"unknown component family {family!r}; use one of {sorted(DISCRIMINATORS)}")
    if not (isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)):
        raise PluginError(f"a {family} component must be a pydantic model class, got {cls!r}")
    key = DISCRIMINATORS[family]
    field = cls.model_fields.get(key)
    values = typing.get_args(field.annotation) if field is not None else ()
    if field is None or typing.get_origin(field.annotation) is not Literal or len(values) != 1:
        raise PluginError(f"{family} component {cls.__qualname__} needs a field {key}: Literal['<name>'] with one value")
    name = values[0]
    if field.default != name:
        raise PluginError(f"{family} component {cls.__qualname__}: field {key!r} must default to {name!r}")
    return str(name)


def _collect() -> dict[str, dict[str, tuple[type, str]]]:
    """Call every ``register_components`` implementation, each isolated like the other hooks."""
    from conceptkit.plugin_manager import PluginFailure, get_manager

    manager = get_manager()
    registry = manager.registry
    global _cache
    with _lock:
        if _cache is not None and _cache[0] is registry:
            return _cache[1]
        table: dict[str, dict[str, tuple[type, str]]] = {f: {} for f in DISCRIMINATORS}
        for impl in manager.hook.register_components.get_hookimpls():  # registration order
            plugin = impl.plugin_name
            added: list[tuple[str, str]] = []

            def register(family: str, cls: type, _plugin: str = plugin, _added: list = added) -> None:
                name = component_name(family, cls)
                if name in table[family]:
                    owner = table[family][name][1]
                    raise PluginError(f"{family} {name!r} is already registered by plugin {owner!r}")
                table[family][name] = (cls, _plugin)
                _added.append((family, name))

            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001 - one plugin must not hide the others
                for family, name in added:
                    table[family].pop(name, None)
                info = registry.plugins.get(plugin)
                failure = PluginFailure(plugin, info.distribution if info else None, "register_components", f"{type(exc).__name__}: {exc}")
                registry.failures.append(failure)
                warnings.warn(str(failure), RuntimeWarning, stacklevel=3)
        _cache = (registry, table)
        return table


def kinds(family: Family) -> list[str]:
    """The registered names of a family, sorted."""
    return sorted(_table(family))


def get(family: Family, name: str) -> type:
    """The class registered as ``name`` in ``family``."""
    table = _table(family)
    if name not in table:
        raise UnknownNameError(f"{family.replace('_', ' ')} {DISCRIMINATORS[family]}", str(name), table)
    return table[name][0]


def plugin_of(family: Family, name: str) -> str:
    """The plugin that registered ``name`` (for provenance and error messages)."""
    get(family, name)
    return _table(family)[name][1]


def parse(family: Family, data: Any, base: type | None = None) -> Any:
    """A component from its dict (e.g. JSON) or a component object (returned as is).

    With ``base``, the result must be an instance of it (the family's base class), else an
    ``InputError`` says which class to subclass.
    """
    if isinstance(data, pydantic.BaseModel):
        obj = data
    else:
        if not isinstance(data, dict):
            raise InputError(f"a {family.replace('_', ' ')} must be a dict or a component object, got {data!r}")
        key = DISCRIMINATORS[family]
        if key not in data:
            raise InputError(f"a {family.replace('_', ' ')} dict needs {key!r}; known: {', '.join(kinds(family))}")
        from conceptkit.interventions import input_errors

        cls = get(family, data[key])
        with input_errors(f"{family.replace('_', ' ')} {data[key]!r}"):
            obj = cls(**data)
    if base is not None and not isinstance(obj, base):
        article = "an" if family[0] in "aeiou" else "a"
        raise InputError(f"{obj!r} is not {article} {family.replace('_', ' ')} (subclass {base.__module__}.{base.__qualname__})")
    return obj


def dump(component: pydantic.BaseModel) -> dict[str, Any]:
    """The JSON-safe form of a component (round-trips through :func:`parse`)."""
    return component.model_dump(mode="json")


def _table(family: str) -> dict[str, tuple[type, str]]:
    if family not in DISCRIMINATORS:
        raise InputError(f"unknown component family {family!r}; use one of {sorted(DISCRIMINATORS)}")
    return _collect()[family]
