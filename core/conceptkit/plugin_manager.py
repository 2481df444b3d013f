"""The plugin manager: entry-point loading, allow/deny lists, listing and error isolation.

Plugins are found through the ``conceptkit`` entry-point group, first-party ones exactly like
third-party ones. A plugin that fails to import, raises while registering or claims a name that
is already taken is recorded as a :class:`PluginFailure` naming its distribution and the reason;
every other plugin keeps working.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from conceptkit import hookspecs
from conceptkit._dist import dist_version  # re-exported for plugins written before _dist
from conceptkit.errors import PluginError, UnknownNameError

ENTRY_POINT_GROUP = "conceptkit"
LOAD_ENV = "CONCEPTKIT_LOAD_PLUGINS"
DISABLE_ENV = "CONCEPTKIT_DISABLE_PLUGINS"
CORE_PLUGIN = "conceptkit"

_REGISTER_HOOKS = ("register_methods", "register_backends", "register_models")


@dataclass
class PluginFailure:
    """Why one plugin could not be (fully) loaded."""

    plugin: str
    distribution: str | None
    stage: str  # "import", "validate", "register_methods", ...
    reason: str

    def __str__(self) -> str:
        dist = f" (distribution {self.distribution})" if self.distribution else ""
        return f"plugin {self.plugin!r}{dist} failed during {self.stage}: {self.reason}"


@dataclass
class PluginInfo:
    """What ``conceptkit plugins`` shows for one plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ModelEntry:
    name: str
    loader: Callable[..., Any]
    description: str
    backends: tuple[str, ...]
    plugin: str


@dataclass
class Registry:
    """Everything the loaded plugins registered."""

    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    methods: dict[str, tuple[type, str]] = field(default_factory=dict)  # name -> (cls, plugin)
    backends: list[tuple[str, Any, str]] = field(default_factory=list)
    models: dict[str, ModelEntry] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)


def _split_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


class PluginManager:
    """Loads plugins once and keeps what they registered."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager("conceptkit")
        self._pm.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        self._registry: Registry | None = None
        self._early_failures: list[PluginFailure] = []
        self._lock = threading.RLock()
        self._loaded_entry_points = False

    # -- loading -------------------------------------------------------------------------
    def _add(self, plugin: object, name: str, dist: str | None, version: str | None) -> bool:
        specs = set(self._pm.hook.__dict__)
        # Functions carrying the ``conceptkit.hookimpl`` marker whose name is not a hook spec.
        unknown = [
            attr
            for attr in dir(plugin)
            if hasattr(getattr(plugin, attr, None), "conceptkit_impl") and attr not in specs
        ]
        if unknown:
            self._early_failures.append(
                PluginFailure(name, dist, "validate", f"unknown hook(s) {', '.join(unknown)}")
            )
            return False
        try:
            self._pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            self._early_failures.append(PluginFailure(name, dist, "validate", str(exc)))
            return False
        self._dists[name] = (dist, version)
        return True

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        from conceptkit import _builtin

        self._add(_builtin, CORE_PLUGIN, "conceptkit", dist_version("conceptkit"))
        allow, deny = _split_env(LOAD_ENV), _split_env(DISABLE_ENV) or set()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else None
            names = {ep.name, dist} - {None}
            if allow is not None and not names & allow:
                continue
            if names & deny:
                continue
            if self._pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                self._early_failures.append(
                    PluginFailure(ep.name, dist, "import", f"{type(exc).__name__}: {exc}")
                )
                continue
            self._add(plugin, ep.name, dist, ep.dist.version if ep.dist else None)

    def _collect(self) -> Registry:
        reg = Registry(failures=list(self._early_failures))
        for name, plugin in self._pm.list_name_plugin():
            if plugin is None:
                continue
            dist, version = self._dists.get(name, (None, None))
            hooks = sorted(c.name for c in self._pm.get_hookcallers(plugin) or [])
            reg.plugins[name] = PluginInfo(name, dist, version, hooks=hooks)

        for hook_name in _REGISTER_HOOKS:
            caller = getattr(self._pm.hook, hook_name)
            # Call each implementation on its own so one raising plugin cannot hide the others.
            for impl in caller.get_hookimpls():  # registration order
                plugin_name = impl.plugin_name
                info = reg.plugins[plugin_name]
                added: list[Any] = []
                register = _make_register(hook_name, reg, info, added)
                try:
                    impl.function(register=register)
                except Exception as exc:  # noqa: BLE001
                    _undo(hook_name, reg, info, added)
                    reg.failures.append(
                        PluginFailure(plugin_name, info.distribution, hook_name, f"{type(exc).__name__}: {exc}")
                    )
        return reg

    # -- public --------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        with self._lock:
            if self._registry is None:
                self._load_entry_points()
                self._registry = self._collect()
                for failure in self._registry.failures:
                    warnings.warn(str(failure), RuntimeWarning, stacklevel=3)
            return self._registry

    @property
    def hook(self) -> Any:
        self.registry  # noqa: B018 - make sure plugins are loaded
        return self._pm.hook

    def register(self, plugin: object, name: str, distribution: str | None = None) -> None:
        """Register an in-process plugin object (tests, notebooks)."""
        with self._lock:
            self._load_entry_points()
            if self._pm.has_plugin(name):
                raise PluginError(f"a plugin named {name!r} is already registered")
            self._add(plugin, name, distribution, None)
            self._registry = None

    def unregister(self, name: str) -> None:
        with self._lock:
            if self._pm.has_plugin(name):
                self._pm.unregister(name=name)
            self._early_failures = [f for f in self._early_failures if f.plugin != name]
            self._dists.pop(name, None)
            self._registry = None


def _make_register(hook_name: str, reg: Registry, info: PluginInfo, added: list[Any]) -> Callable[..., None]:
    plugin = info.name

    def register_method(cls: type) -> None:
        from conceptkit.contract import Method

        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise PluginError(f"register_methods got {cls!r}, which is not a conceptkit.Method subclass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"method class {cls.__qualname__} has no 'name'")
        if name in reg.methods:
            owner = reg.methods[name][1]
            reg.failures.append(
                PluginFailure(
                    plugin,
                    info.distribution,
                    "register_methods",
                    f"method name {name!r} is already registered by plugin {owner!r}; ignored",
                )
            )
            return
        reg.methods[name] = (cls, plugin)
        info.methods.append(name)
        added.append(name)

    def register_backend(name: str, backend: Any) -> None:
        if any(existing == name for existing, _, _ in reg.backends):
            raise PluginError(f"backend name {name!r} is already registered")
        reg.backends.append((name, backend, plugin))
        info.backends.append(name)
        added.append(name)

    def register_model(
        name: str,
        loader: Callable[..., Any],
        description: str = "",
        backends: tuple[str, ...] | list[str] = ("transformer_lens", "nnsight"),
    ) -> None:
        if name in reg.models:
            raise PluginError(f"model name {name!r} is already registered by plugin {reg.models[name].plugin!r}")
        reg.models[name] = ModelEntry(name, loader, description, tuple(backends), plugin)
        info.models.append(name)
        added.append(name)

    return {
        "register_methods": register_method,
        "register_backends": register_backend,
        "register_models": register_model,
    }[hook_name]


def _undo(hook_name: str, reg: Registry, info: PluginInfo, added: list[Any]) -> None:
    """Drop what a plugin registered before it raised, so a half-registered plugin is absent."""
    for name in added:
        if hook_name == "register_methods":
            reg.methods.pop(name, None)
            info.methods.remove(name)
        elif hook_name == "register_backends":
            reg.backends = [b for b in reg.backends if b[0] != name]
            info.backends.remove(name)
        else:
            reg.models.pop(name, None)
            info.models.remove(name)


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_manager() -> PluginManager:
    """The process-wide plugin manager (created on first use)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = PluginManager()
        return _manager


def reset() -> None:
    """Forget loaded plugins; the next use reloads them (tests, after changing env vars)."""
    global _manager
    with _manager_lock:
        _manager = None


def plugins() -> list[dict[str, Any]]:
    """Installed plugins: name, distribution, version, hooks, methods, backends, models."""
    return [info.as_dict() for info in get_manager().registry.plugins.values()]


def plugin_failures() -> list[PluginFailure]:
    """Plugins that failed to load or register, with the reason."""
    return list(get_manager().registry.failures)


def methods() -> dict[str, type]:
    """``{name: method class}`` for every registered method."""
    return {name: cls for name, (cls, _) in sorted(get_manager().registry.methods.items())}


def method(name: str) -> Any:
    """An instance of the method registered as ``name``."""
    reg = get_manager().registry
    if name not in reg.methods:
        raise UnknownNameError("method", name, reg.methods)
    return reg.methods[name][0]()


def method_plugin(name: str) -> PluginInfo:
    """The plugin that registered method ``name`` (for provenance)."""
    reg = get_manager().registry
    if name not in reg.methods:
        raise UnknownNameError("method", name, reg.methods)
    return reg.plugins[reg.methods[name][1]]


@contextlib.contextmanager
def registered_plugin(plugin: object, name: str = "test-plugin") -> Iterator[PluginManager]:
    """Register ``plugin`` for the duration of a ``with`` block (also used by the pytest plugin)."""
    manager = get_manager()
    manager.register(plugin, name)
    try:
        yield manager
    finally:
        manager.unregister(name)
