"""A pytest plugin for plugin authors (entry point ``pytest11``; active once conceptkit is installed).

Fixtures:
    ck_store: a fresh store in a temporary folder.
    ck_tiny_model: a factory ``ck_tiny_model("tiny-llama", backend="nnsight")`` (cached per session).
    ck_registered_plugin: the :func:`registered_plugin` context manager.
    ck_hook_leak_check: call it with a model; at teardown the test fails if the model has more or
        fewer hooks than when the check started.

Helpers: :func:`registered_plugin` and :func:`assert_no_hook_leak`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conceptkit.plugin_manager import registered_plugin

__all__ = ["registered_plugin", "assert_no_hook_leak"]


@contextlib.contextmanager
def assert_no_hook_leak(model: Any) -> Iterator[None]:
    """Fail if the block changes the number of hooks registered on ``model`` (raising or not)."""
    before = model.hook_registry()
    try:
        yield
    finally:
        after = model.hook_registry()
        assert after == before, f"hook leak on {model!r}: {len(before)} hook(s) before, {len(after)} after"


@pytest.fixture
def ck_store(tmp_path: Any) -> Any:
    """A fresh, empty store in the test's temporary folder, closed after the test."""
    from conceptkit.store import open_store

    store = open_store(tmp_path / "store")
    yield store
    store.close()


_MODEL_CACHE: dict[tuple[str, str], Any] = {}


@pytest.fixture
def ck_tiny_model() -> Callable[..., Any]:
    """A loader of tiny random named models: ``ck_tiny_model("tiny-gpt2", backend="nnsight")``.

    Models are built once per test session and shared (seeded, so every build is identical);
    a test that edits weights should restore them or load its own model.
    """
    def load(name: str = "tiny-llama", backend: str = "transformer_lens") -> Any:
        key = (name, backend)
        if key not in _MODEL_CACHE:
            from conceptkit.models import load_model

            _MODEL_CACHE[key] = load_model(name, backend=backend)
        return _MODEL_CACHE[key]

    return load


@pytest.fixture
def ck_registered_plugin() -> Callable[..., Any]:
    """The :func:`registered_plugin` context manager: register a plugin object for one block.

    Example: ``with ck_registered_plugin(MyPlugin(), "my-plugin"): ck.method("mine")``.
    """
    return registered_plugin


@pytest.fixture
def ck_hook_leak_check() -> Iterator[Callable[[Any], None]]:
    """Call it with a model; at teardown the test fails if the model's hook registry differs
    from when the call was made (a hook added and never removed, or one removed too many)."""
    watched: list[tuple[Any, list]] = []

    def watch(model: Any) -> None:
        watched.append((model, model.hook_registry()))

    yield watch
    for model, before in watched:
        after = model.hook_registry()
        assert after == before, f"hook leak on {model!r}: {len(before)} hook(s) before the test, {len(after)} after"
