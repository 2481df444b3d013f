"""Shared fixtures: a fresh plugin manager per test, fake distributions, a temporary store."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import conceptkit.plugin_manager as ck_plugins


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test sees freshly loaded plugins and a store of its own."""
    monkeypatch.delenv("CONCEPTKIT_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("CONCEPTKIT_DISABLE_PLUGINS", raising=False)
    monkeypatch.setenv("CONCEPTKIT_STORE", str(tmp_path / "default-store"))
    ck_plugins.reset()
    yield
    ck_plugins.reset()


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str, str], None]:
    """Install a throwaway distribution (module + dist-info with a conceptkit entry point)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def make(dist: str, module: str, source: str, entry_name: str | None = None) -> None:
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[conceptkit]\n{entry_name or module} = {module}\n")
        sys.modules.pop(module, None)
        ck_plugins.reset()

    return make


_MODELS: dict = {}


def load_cached(name: str, backend: str = "transformer_lens"):
    """Models are expensive to build; tests share one per (name, backend) and must undo changes."""
    import conceptkit as ck

    key = (name, backend)
    if key not in _MODELS:
        _MODELS[key] = ck.load_model(name, backend=backend)
    return _MODELS[key]


@pytest.fixture
def models():
    return load_cached
