"""The whole plugin contract, on one screen.

Every hook receives a ``register`` callback (the style of ``llm`` and datasette), so a plugin
adds any number of things with one function and the host decides how to collect them.
Specs evolve by *adding* arguments; names are never changed.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("conceptkit")
hookimpl = pluggy.HookimplMarker("conceptkit")


@hookspec
def register_methods(register: Callable[[type], None]) -> None:
    """Register method classes (subclasses of :class:`conceptkit.Method`).

    Call ``register(MyMethod)`` once per method. A method name already taken by another plugin
    is reported as a plugin error and the first registration wins.
    """


@hookspec
def register_backends(register: Callable[..., None]) -> None:
    """Register model backends: ``register(name, backend)``.

    ``backend`` has ``recognises(obj) -> bool`` and ``wrap(obj, **kwargs) -> Model``; the
    core asks each in registration order whether it recognises an object (first match wins).
    """


@hookspec
def register_models(register: Callable[..., None]) -> None:
    """Register named model loaders: ``register(name, loader, description=..., backends=...)``.

    ``loader(backend: str, **kwargs)`` returns a :class:`conceptkit.Model`.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``conceptkit`` click group ``cli``."""


@hookspec
def record_saved(record: Any, store: Any) -> None:
    """Event: a record was written to a store (for indexing, syncing or logging plugins)."""


@hookspec
def register_components(register: Callable[[str, type], None]) -> None:
    """Register components: ``register(family, cls)``.

    ``family`` is ``"intervention"``, ``"objective"``, ``"virtual_site"`` or ``"weight_edit"``;
    ``cls`` is a pydantic model whose ``Literal`` field (``op`` for interventions, ``kind`` for
    the others) names it, so it round-trips through JSON. A name already taken is a plugin
    error. Components are collected on first lookup (:mod:`conceptkit.components`).
    """
