"""The concept-vector store: records with provenance, a SQLite+safetensors default, bundles."""

from __future__ import annotations

import os
from pathlib import Path

from conceptkit.store.local import LocalStore, Match, VerifyReport
from conceptkit.store.record import MethodInfo, Record, RecordDraft

STORE_ENV = "CONCEPTKIT_STORE"
Store = LocalStore

__all__ = ["Store", "LocalStore", "Record", "RecordDraft", "MethodInfo", "Match", "VerifyReport", "open_store", "default_path"]


def default_path() -> Path:
    """``$CONCEPTKIT_STORE``, else the platform's user data folder (platformdirs)."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("conceptkit")) / "store"


def open_store(path: str | Path | None = None) -> LocalStore:
    """Open (creating if needed) a store at ``path`` or the default location."""
    return LocalStore(path if path is not None else default_path())
