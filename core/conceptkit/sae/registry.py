"""Finding an SAE from a reference: an :class:`SAE` object, a store record id, ``sae:<fingerprint>``
(an SAE object seen earlier in this process) or the path of an SAELens/sparsify folder.

Interventions and virtual-site specs hold such a reference, never inline matrices, so they stay
small JSON. A reference is resolved once per object and cached.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from conceptkit.errors import InputError
from conceptkit.sae.base import SAE

_LIVE: "weakref.WeakValueDictionary[str, SAE]" = weakref.WeakValueDictionary()
_LOADED: dict[tuple[str, str], SAE] = {}  # (store root, record id) -> SAE, small and strong


def register_sae(sae: SAE) -> str:
    """Make ``sae`` findable by its :attr:`SAE.ref` in this process; returns the reference."""
    _LIVE[sae.ref] = sae
    if sae.record_id:
        _LIVE[sae.record_id] = sae
    return sae.ref


def resolve_sae(ref: Any, store: Any = None) -> SAE:
    """The SAE that ``ref`` names (see the module docstring)."""
    if isinstance(ref, SAE):
        register_sae(ref)
        return ref
    if not isinstance(ref, str) or not ref:
        raise InputError(f"an SAE reference must be an SAE, a record id or a folder path, got {ref!r}")
    if ref in _LIVE:
        return _LIVE[ref]
    if ref.startswith("sae:"):
        raise InputError(
            f"SAE {ref!r} is an unsaved SAE from another process; store it (conceptkit.sae.to_draft + store.put) "
            "and refer to it by record id"
        )
    path = Path(ref).expanduser()
    if path.is_dir():
        from conceptkit.sae.formats import read_folder

        sae = read_folder(path)
        register_sae(sae)
        return sae
    if store is None:
        from conceptkit.store import open_store

        store = open_store()
    key = (str(getattr(store, "root", "")), ref)
    if key not in _LOADED:
        from conceptkit.sae.records import from_record

        if len(_LOADED) >= 8:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = from_record(store, ref)
    sae = _LOADED[key]
    register_sae(sae)
    return sae
