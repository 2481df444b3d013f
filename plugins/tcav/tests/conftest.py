"""Fixtures for the TCAV tests."""

import pytest

from tcav_toys import VectorModel


@pytest.fixture
def vector_model():
    return VectorModel


@pytest.fixture(autouse=True, scope="session")
def _tcav_cache_in_a_temporary_folder(tmp_path_factory):
    """TCAV's activation/gradient cache lives in one temporary folder per test session."""
    from conceptkit_tcav import cache

    root = tmp_path_factory.mktemp("tcav-cache")
    original = cache.cache_root
    cache.cache_root = lambda: root
    yield root
    cache.cache_root = original
