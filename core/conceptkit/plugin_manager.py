"""The plugin manager: entry-point loading, allow/deny lists, listing and error isolation.

Plugins are found through the ``conceptkit`` entry-point group, first-party ones exactly like
third-party ones, and identified by their *distribution*: two distributions whose entry points
share a name both load. A plugin that fails to import (even with ``SystemExit``), raises while
registering, uses a hook wrapper, registers a method whose ``Config`` is not a pydantic model, or
tries to replace a command is recorded as a :class:`PluginFailure` naming its distribution and
the reason; every other plugin keeps working. A plugin that is slow to import is reported too.

When two distributions register the same method name, neither wins by accident (such as
alphabetical order): the collision is reported naming both, and the name is ambiguous until the
user chooses, with ``ck.method(name, plugin=DIST)`` or ``CONCEPTKIT_METHOD_PLUGINS=name=DIST``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import threading
import time
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
#: ``name=distribution[,name=distribution...]``: which plugin serves a method name that several register
METHOD_PLUGINS_ENV = "CONCEPTKIT_METHOD_PLUGINS"
#: seconds after which a plugin's import is reported as slow (default 3)
SLOW_IMPORT_ENV = "CONCEPTKIT_SLOW_PLUGIN_IMPORT_S"
DEFAULT_SLOW_IMPORT_S = 3.0
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
        if self.stage in ("conflict", "slow-import"):  # reports, not failures: the plugin is loaded
            return f"plugin {self.plugin!r}{dist}: {self.reason}"
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
    import_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def matches(self, choice: str) -> bool:
        """Whether ``choice`` names this plugin (its distribution or its entry-point name)."""
        return choice in (self.distribution, self.name)


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
    methods: dict[str, tuple[type, str]] = field(default_factory=dict)  # name -> (cls, plugin), unambiguous or chosen
    #: every registration of every method name, in registration order: name -> [(cls, plugin)]
    candidates: dict[str, list[tuple[type, str]]] = field(default_factory=dict)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # name -> plugins that claim it
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
        self._import_seconds: dict[str, float] = {}
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
        wrappers = [
            attr
            for attr in dir(plugin)
            if isinstance(opts := getattr(getattr(plugin, attr, None), "conceptkit_impl", None), dict)
            and (opts.get("hookwrapper") or opts.get("wrapper"))
        ]
        if wrappers:
            self._early_failures.append(
                PluginFailure(name, dist, "validate", f"hook wrapper implementation(s) {', '.join(wrappers)} are not supported; use a plain conceptkit.hookimpl")
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
        slow = _slow_import_seconds()
        eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.dist.name if e.dist else ""))
        seen: set[tuple[str, str | None]] = set()
        for ep in eps:
            dist = ep.dist.name if ep.dist else None
            names = {ep.name, dist} - {None}
            if allow is not None and not names & allow:
                continue
            if names & deny:
                continue
            if (ep.name, dist) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, dist))
            # Plugins are identified by distribution: an entry-point name another distribution
            # already uses does not hide either of them.
            key = ep.name
            if self._pm.has_plugin(key):
                owner = self._dists.get(key, (None, None))[0]
                key = f"{dist}:{ep.name}"
                self._early_failures.append(
                    PluginFailure(key, dist, "conflict", f"entry point name {ep.name!r} is also used by distribution {owner!r}; both are loaded, this one as {key!r}")
                )
            started = time.perf_counter()
            try:
                plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - isolation is the point (SystemExit too)
                self._early_failures.append(
                    PluginFailure(key, dist, "import", f"{type(exc).__name__}: {exc}")
                )
                continue
            seconds = time.perf_counter() - started
            self._import_seconds[key] = seconds
            if seconds > slow:
                self._early_failures.append(
                    PluginFailure(key, dist, "slow-import", f"importing it took {seconds:.1f} s (over {slow:g} s), which every conceptkit command pays; disable it with {DISABLE_ENV}={dist or key}")
                )
            self._add(plugin, key, dist, ep.dist.version if ep.dist else None)

    def _collect(self) -> Registry:
        reg = Registry(failures=list(self._early_failures))
        for name, plugin in self._pm.list_name_plugin():
            if plugin is None:
                continue
            dist, version = self._dists.get(name, (None, None))
            hooks = sorted(c.name for c in self._pm.get_hookcallers(plugin) or [])
            reg.plugins[name] = PluginInfo(name, dist, version, hooks=hooks, import_seconds=self._import_seconds.get(name))

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
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - SystemExit in a hook is isolated too
                    _undo(hook_name, reg, info, added)
                    reg.failures.append(
                        PluginFailure(plugin_name, info.distribution, hook_name, f"{type(exc).__name__}: {exc}")
                    )
        _resolve_methods(reg)
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
        import pydantic

        from conceptkit.contract import Method

        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise PluginError(f"register_methods got {cls!r}, which is not a conceptkit.Method subclass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"method class {cls.__qualname__} has no 'name'")
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, pydantic.BaseModel)):
            raise PluginError(f"method {name!r}: Config is {config!r}, not a pydantic model (subclass conceptkit.MethodConfig)")
        try:
            config.model_json_schema()
        except Exception as exc:  # noqa: BLE001 - it would break `--help` for every method
            raise PluginError(f"method {name!r}: Config has no JSON schema ({type(exc).__name__}: {exc})") from None
        claims = reg.candidates.setdefault(name, [])
        if any(owner == plugin for _, owner in claims):
            reg.failures.append(
                PluginFailure(plugin, info.distribution, "register_methods", f"method name {name!r} registered twice by this plugin; the first is kept")
            )
            return
        claims.append((cls, plugin))
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
            reg.candidates[name] = [c for c in reg.candidates.get(name, []) if c[1] != info.name]
            if not reg.candidates[name]:
                del reg.candidates[name]
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
    """``{name: method class}`` for every registered method (ambiguous names left out; see :func:`method`)."""
    return {name: cls for name, (cls, _) in sorted(get_manager().registry.methods.items())}


def _lookup(name: str, plugin: str | None = None) -> tuple[type, str]:
    reg = get_manager().registry
    if plugin is not None:
        claims = reg.candidates.get(name, [])
        for cls, owner in claims:
            if reg.plugins[owner].matches(plugin):
                return cls, owner
        if not claims:
            raise UnknownNameError("method", name, reg.candidates)
        offered = ", ".join(_describe(reg, owner) for _, owner in claims)
        raise PluginError(f"method {name!r} is not registered by plugin {plugin!r}; it is registered by {offered}")
    if name in reg.methods:
        return reg.methods[name]
    if name in reg.ambiguous:
        raise PluginError(_ambiguity(reg, name))
    raise UnknownNameError("method", name, list(reg.methods) + list(reg.ambiguous))


def method_class(name: str, plugin: str | None = None) -> type:
    """The class of the method registered as ``name`` (``plugin`` as in :func:`method`)."""
    return _lookup(name, plugin)[0]


def method(name: str, plugin: str | None = None) -> Any:
    """An instance of the method registered as ``name``.

    ``plugin`` (a distribution or entry-point name) chooses among several plugins that register
    the same name; without it such a name is an error naming them (see ``CONCEPTKIT_METHOD_PLUGINS``).
    """
    return _lookup(name, plugin)[0]()


def method_plugin(name: str, plugin: str | None = None) -> PluginInfo:
    """The plugin that registered method ``name`` (for provenance)."""
    return get_manager().registry.plugins[_lookup(name, plugin)[1]]


def plugin_of(cls: type) -> PluginInfo | None:
    """The plugin that registered the method class ``cls`` (also when its name is ambiguous)."""
    reg = get_manager().registry
    for claims in reg.candidates.values():
        for candidate, owner in claims:
            if candidate is cls:
                return reg.plugins[owner]
    return None


def _describe(reg: Registry, plugin: str) -> str:
    info = reg.plugins[plugin]
    return f"{info.distribution or plugin!r} (plugin {plugin!r})" if info.distribution else repr(plugin)


def _ambiguity(reg: Registry, name: str) -> str:
    owners = reg.ambiguous[name]
    dists = [reg.plugins[o].distribution or o for o in owners]
    return (
        f"method name {name!r} is registered by several distributions: {', '.join(_describe(reg, o) for o in owners)}; "
        f"choose one with ck.method({name!r}, plugin={dists[0]!r}) or {METHOD_PLUGINS_ENV}={name}={dists[0]}"
    )


def _method_choices() -> dict[str, str]:
    raw = os.environ.get(METHOD_PLUGINS_ENV, "")
    out = {}
    for part in raw.split(","):
        name, sep, dist = part.partition("=")
        if sep and name.strip() and dist.strip():
            out[name.strip()] = dist.strip()
    return out


def _resolve_methods(reg: Registry) -> None:
    """Fill ``reg.methods`` from the candidates: one claimant wins; several need the user's choice."""
    choices = _method_choices()
    for name, claims in reg.candidates.items():
        if len(claims) == 1:
            reg.methods[name] = claims[0]
            continue
        chosen = [c for c in claims if name in choices and reg.plugins[c[1]].matches(choices[name])]
        if chosen:
            reg.methods[name] = chosen[0]
            continue
        reg.ambiguous[name] = [owner for _, owner in claims]
        for _, owner in claims:
            info = reg.plugins[owner]
            others = [reg.plugins[o].distribution or o for _, o in claims if o != owner]
            reg.failures.append(
                PluginFailure(owner, info.distribution, "conflict", f"method name {name!r} is also registered by {', '.join(repr(o) for o in others)}; "
                              f"neither is used until you choose (ck.method({name!r}, plugin=...) or {METHOD_PLUGINS_ENV}={name}=DIST)")
            )


def _slow_import_seconds() -> float:
    raw = os.environ.get(SLOW_IMPORT_ENV)
    try:
        return float(raw) if raw else DEFAULT_SLOW_IMPORT_S
    except ValueError:
        return DEFAULT_SLOW_IMPORT_S


def add_plugin_commands(group: Any, echo: Callable[[str], None] | None = None) -> list[PluginFailure]:
    """Let every plugin's ``register_commands`` add commands to the click ``group``.

    A plugin may add new commands only: replacing or removing an existing one (a core command
    such as ``store`` or ``plugins``, or another plugin's) is undone and reported naming its
    distribution; a plugin that raises (even ``SystemExit``) is reported and skipped.
    """
    manager = get_manager()
    reg = manager.registry
    failures: list[PluginFailure] = []
    owners: dict[str, str] = {name: "the core" for name in group.commands}
    for impl in manager.hook.register_commands.get_hookimpls():
        info = reg.plugins.get(impl.plugin_name)
        dist = info.distribution if info else None
        before = dict(group.commands)
        try:
            impl.function(cli=group)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            group.commands.clear()
            group.commands.update(before)
            failures.append(PluginFailure(impl.plugin_name, dist, "register_commands", f"{type(exc).__name__}: {exc}"))
            continue
        for name, cmd in before.items():
            if group.commands.get(name) is not cmd:
                failures.append(PluginFailure(impl.plugin_name, dist, "register_commands", f"tried to replace the command {name!r} of {owners.get(name, 'another plugin')}; refused"))
                group.commands[name] = cmd
        for name in group.commands:
            owners.setdefault(name, f"plugin {impl.plugin_name!r} ({dist})")
    for failure in failures:
        (echo or (lambda m: warnings.warn(m, RuntimeWarning, stacklevel=2)))(f"warning: {failure}")
    reg.failures.extend(failures)
    return failures


@contextlib.contextmanager
def registered_plugin(plugin: object, name: str = "test-plugin") -> Iterator[PluginManager]:
    """Register ``plugin`` for the duration of a ``with`` block (also used by the pytest plugin)."""
    manager = get_manager()
    manager.register(plugin, name)
    try:
        yield manager
    finally:
        manager.unregister(name)
