"""A disk cache of the activations and gradients TCAV reads from the model.

Everything TCAV asks of the model is a pure function of (model weights, text, site, reduction)
for activations and additionally of the objective for gradients; the probes, random draws and
tests that follow are cheap. So re-running with another test, probe, seed or random-set draw
should not touch the model again. Entries are keyed by

* the model's :class:`ModelRef` (name, backend, dtype, *weights hash* …),
* the kind (``acts`` or ``grad``), the site and the token reduction,
* for gradients, the objective and the ``gradient_of`` convention,
* and per entry, the exact text *after* the template was applied (so the template is part of
  the key: the same sentence under another template is another entry).

Location: ``$CONCEPTKIT_CACHE/tcav`` if that variable is set, else ``tcav`` in the platform's
user cache folder (``platformdirs.user_cache_dir("conceptkit")``, e.g. ``~/.cache/conceptkit``
on Linux). One safetensors file per (model, kind, site, reduction, objective); no pickles.
Clear it with ``conceptkit tcav-cache clear`` or :func:`clear`; ``conceptkit tcav-cache info``
shows its size. Turn it off per run with ``cache: false``.

A weight edit changes the key: ``model.ref`` rehashes the weights whenever an edit was applied
or removed since it last hashed them, so a run under an edit is a cache miss, and removing the edit
serves the unedited entries again (tested).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

VERSION = "v1"


def cache_root() -> Path:
    """``$CONCEPTKIT_CACHE/tcav`` or the user cache folder's ``tcav`` (see the module docstring)."""
    from conceptkit.api import cache_dir

    return cache_dir() / "tcav"


def clear(root: Path | None = None) -> int:
    """Delete every cached activation and gradient; returns the number of files removed."""
    root = root or cache_root()
    if not root.exists():
        return 0
    n = sum(1 for _ in root.rglob("*.safetensors"))
    shutil.rmtree(root)
    return n


def info(root: Path | None = None) -> dict[str, Any]:
    """Where the cache is, how many files and bytes it holds."""
    root = root or cache_root()
    files = list(root.rglob("*.safetensors")) if root.exists() else []
    return {"path": str(root), "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class FeatureCache:
    """Per-text activation and gradient vectors on disk, filled on demand.

    ``enabled=False``, or a model whose ``ref`` has no weights hash (nothing would tell two such
    models apart), computes everything and writes nothing (same interface).
    """

    def __init__(self, model: Any, *, enabled: bool = True, root: Path | None = None) -> None:
        self.model = model
        ref = model.ref.model_dump(mode="json") if enabled else {}
        # Without a weights hash two different models could share a key: no cache then.
        self.enabled = enabled and bool(ref.get("weights_hash"))
        self.root = (root or cache_root()) / VERSION
        self._model_key = _digest(ref) if self.enabled else ""
        self.hits = 0
        self.misses = 0

    def _path(self, group: dict[str, Any]) -> Path:
        return self.root / f"{_digest({'model': self._model_key, **group})[:32]}.safetensors"

    def _load(self, path: Path) -> dict[str, Any]:
        if not path.exists():
            return {}
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception:  # a torn or foreign file: recompute rather than fail
            return {}

    def _save(self, path: Path, entries: dict[str, Any], group: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            meta = {k: json.dumps(v, default=str) for k, v in group.items()}
            save_file({k: v.contiguous() for k, v in entries.items()}, tmp, metadata=meta)
            os.replace(tmp, path)  # atomic: readers see the old or the new file, never half
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _get(self, texts: Sequence[str], group: dict[str, Any], compute: Callable[[list[str]], Any]) -> Any:
        import torch

        if not self.enabled:
            return compute(list(texts))
        path = self._path(group)
        entries = self._load(path)
        unique = list(dict.fromkeys(texts))
        missing = [t for t in unique if text_key(t) not in entries]
        self.hits += len(unique) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = compute(missing)
            entries = {**self._load(path), **{text_key(t): fresh[i].detach().cpu().float().contiguous() for i, t in enumerate(missing)}}
            self._save(path, entries, group)
        return torch.stack([entries[text_key(t)] for t in texts])

    def activations(self, texts: Sequence[str], sites: Sequence[str], reduction: str, batch_size: int) -> dict[str, Any]:
        """``{site: [len(texts), d]}`` activations, token-reduced; one forward pass over the texts
        missing at any site (all sites read in it)."""
        import torch

        groups = {site: {"kind": "acts", "site": site, "reduction": reduction} for site in sites}
        if not self.enabled:
            return dict(self.model.capture(list(texts), list(sites), reduce=reduction, batch_size=batch_size))
        unique = list(dict.fromkeys(texts))
        stored = {site: self._load(self._path(g)) for site, g in groups.items()}
        missing = [t for t in unique if any(text_key(t) not in stored[s] for s in sites)]
        self.hits += len(unique) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self.model.capture(missing, list(sites), reduce=reduction, batch_size=batch_size)
            for site, g in groups.items():
                new = {text_key(t): fresh[site][i].detach().cpu().float().contiguous() for i, t in enumerate(missing)}
                stored[site] = {**self._load(self._path(g)), **new}
                self._save(self._path(g), stored[site], g)
        return {site: torch.stack([stored[site][text_key(t)] for t in texts]) for site in sites}

    def gradients(self, texts: Sequence[str], site: str, reduction: str, objective_key: Any, objective: Any, batch_size: int) -> Any:
        """``[len(texts), d]`` gradients of ``objective`` at ``site``; ``objective_key`` identifies it."""
        group = {"kind": "grad", "site": site, "reduction": reduction, "objective": objective_key}
        return self._get(texts, group, lambda xs: self.model.grad(xs, site, objective, reduce=reduction, batch_size=batch_size))
