"""Installed-distribution versions, for provenance.

A leaf module (it imports nothing of conceptkit) so that backends, the store and plugins can ask
for a version without importing the plugin manager and, through it, every plugin.
"""

from __future__ import annotations

import importlib.metadata as md


def dist_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or ``None`` (for provenance)."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None
