"""Fixtures for the TCAV tests."""

import pytest

from tcav_toys import VectorModel


@pytest.fixture
def vector_model():
    return VectorModel
