"""The embedded default store: a directory with a SQLite index (WAL) and safetensors blobs.

Layout::

    <root>/index.sqlite      records, tags and a float32 copy of every 1-D vector (for search)
    <root>/blobs/ab/<id>.safetensors
    <root>/tmp/              blobs being written

A put writes the blob to ``tmp/``, fsyncs it, renames it into ``blobs/`` and fsyncs the
directory, and only then commits the index row. A crash before the commit leaves at most an
orphan blob (or a temporary file), which ``verify`` names as such and ``gc`` removes; an
acknowledged record is always complete. SQLite's locking serialises writers across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from conceptkit.errors import StoreError, UnknownNameError
from conceptkit.store.record import Record, RecordDraft, content_id, now, parse_manifest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    concept TEXT NOT NULL,
    model TEXT,
    site TEXT,
    method TEXT,
    kind TEXT,
    created_at TEXT NOT NULL,
    blob_sha256 TEXT NOT NULL,
    manifest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (record_id TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (record_id, tag));
CREATE TABLE IF NOT EXISTS vectors (
    record_id TEXT NOT NULL,
    tensor TEXT NOT NULL,
    width INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (record_id, tensor)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS records_concept ON records(concept);
CREATE INDEX IF NOT EXISTS vectors_width ON vectors(width);
"""


@dataclass
class Match:
    """One ``similar`` hit."""

    record: Record
    tensor: str
    score: float


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[str] = field(default_factory=list)  # record ids whose blob is missing/altered
    orphans: list[str] = field(default_factory=list)  # blobs with no record (interrupted puts)
    temporary: list[str] = field(default_factory=list)  # half-written temporary files

    @property
    def ok(self) -> bool:
        return not self.corrupt

    def lines(self) -> list[str]:
        out = [f"checked {self.checked} record(s)"]
        out += [f"CORRUPT {c}" for c in self.corrupt]
        out += [f"orphan blob (an interrupted write; gc removes it): {o}" for o in self.orphans]
        out += [f"temporary file (an interrupted write; gc removes it): {t}" for t in self.temporary]
        return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _model_name(model: dict[str, Any] | None) -> str | None:
    return None if model is None else model.get("name")


class LocalStore:
    """The default concept-vector store. Open with :func:`conceptkit.open_store`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {str(self.root)!r} exists and is not a directory")
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        self._local = threading.local()
        self._cache: dict[tuple, tuple[int, np.ndarray, list[tuple[str, str]]]] = {}
        self._db.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")

    # -- sqlite -------------------------------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _generation(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    # -- paths --------------------------------------------------------------------------------
    def _blob_path(self, record_id: str) -> Path:
        return self.root / "blobs" / record_id[:2] / f"{record_id}.safetensors"

    # -- writes -------------------------------------------------------------------------------
    def _prepare(self, draft: RecordDraft | dict[str, Any]) -> tuple[Record, bytes, dict[str, torch.Tensor]]:
        """Validate a draft once; return its manifest, its safetensors bytes and its tensors."""
        if not isinstance(draft, RecordDraft):
            try:
                draft = RecordDraft.model_validate(draft)
            except Exception as exc:  # pydantic.ValidationError
                raise StoreError(f"refused: {_first_error(exc)}") from None
        from conceptkit import __version__

        record_id = content_id(draft)
        blob = st_save(draft.tensors, metadata={"conceptkit_record": record_id})
        record = Record(
            id=record_id,
            concept=draft.concept,
            description=draft.description,
            kind=draft.kind,
            examples_fingerprint=draft.examples_fingerprint,
            method=draft.method,
            model=draft.model,
            site=draft.site,
            reduction=draft.reduction,
            tensors=draft.tensor_infos(),
            metrics=draft.metrics,
            tags=sorted(set(draft.tags)),
            parents=draft.parents,
            created_at=now(),
            conceptkit_version=__version__,
            blob_sha256=hashlib.sha256(blob).hexdigest(),
        )
        return record, blob, draft.tensors

    def _write_blob(self, record: Record, blob: bytes, sync: bool = True) -> Path:
        tmp = self.root / "tmp" / f"{record.id}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        final = self._blob_path(record.id)
        final.parent.mkdir(exist_ok=True)
        os.replace(tmp, final)
        return final

    def _index_rows(self, db: sqlite3.Connection, record: Record, tensors: dict[str, torch.Tensor]) -> None:
        db.execute(
            "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?)",
            (
                record.id,
                record.concept,
                _model_name(record.model),
                record.site,
                record.method.name,
                record.kind,
                record.created_at.isoformat(),
                record.blob_sha256,
                record.model_dump_json(),
            ),
        )
        db.executemany("INSERT INTO tags VALUES (?,?)", [(record.id, t) for t in record.tags])
        rows = []
        for name, t in tensors.items():
            if t.dim() == 1 and t.is_floating_point():
                v = t.double()
                norm = float(v.norm())
                unit = (v / norm if norm > 0 else v).float().numpy()
                rows.append((record.id, name, int(t.shape[0]), unit.tobytes()))
        db.executemany("INSERT INTO vectors VALUES (?,?,?,?)", rows)

    def put(self, draft: RecordDraft | dict[str, Any]) -> Record:
        """Store a record; storing the same content again returns the existing record."""
        return self.put_many([draft])[0]

    def put_many(self, drafts: Iterable[RecordDraft | dict[str, Any]]) -> list[Record]:
        """Store several records with one index transaction (bulk loads).

        Every blob is durable (fsynced, directories too) before the transaction commits.
        """
        prepared = [self._prepare(d) for d in drafts]
        if not prepared:
            return []
        existing = self._existing([r.id for r, _, _ in prepared])
        todo = [(r, b, t) for r, b, t in prepared if r.id not in existing]
        seen: set[str] = set()
        written_dirs: set[Path] = set()
        fresh = []
        for record, blob, tensors in todo:
            if record.id in seen:
                continue
            seen.add(record.id)
            written_dirs.add(self._write_blob(record, blob).parent)
            fresh.append((record, tensors))
        for d in written_dirs:
            _fsync_dir(d)
        results: dict[str, Record] = {}
        with self._tx() as db:
            for record, tensors in fresh:
                # Another process may have stored the same content since we looked.
                if db.execute("SELECT 1 FROM records WHERE id=?", (record.id,)).fetchone():
                    continue
                self._index_rows(db, record, tensors)
                results[record.id] = record
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
        if len(results) >= 1000:
            # Fold a bulk load's write-ahead log back into the database file (it would otherwise
            # stay on disk at the size of the load until the next automatic checkpoint).
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        out = []
        for record, _, _ in prepared:
            out.append(results.get(record.id) or self.get(record.id))
        for rec in results.values():
            _announce(rec, self)
        return out

    def _existing(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = f"SELECT id FROM records WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self._db.execute(q, chunk))
        return found

    def rm(self, record_id: str) -> None:
        """Remove a record (index first, then its blob)."""
        record = self.get(record_id)
        with self._tx() as db:
            db.execute("DELETE FROM records WHERE id=?", (record.id,))
            db.execute("DELETE FROM tags WHERE record_id=?", (record.id,))
            db.execute("DELETE FROM vectors WHERE record_id=?", (record.id,))
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
        self._blob_path(record.id).unlink(missing_ok=True)

    # -- reads --------------------------------------------------------------------------------
    def _resolve(self, record_id: str) -> str:
        if not isinstance(record_id, str) or len(record_id) < 4:
            raise StoreError(f"record id {record_id!r} is too short (give at least 4 characters)")
        rows = self._db.execute("SELECT id FROM records WHERE id LIKE ?", (record_id + "%",)).fetchmany(2)
        if not rows:
            raise UnknownNameError("record", record_id)
        if len(rows) > 1:
            raise StoreError(f"record id prefix {record_id!r} is ambiguous")
        return rows[0][0]

    def get(self, record_id: str) -> Record:
        """The manifest of a record (full id or a unique prefix)."""
        full = self._resolve(record_id)
        row = self._db.execute("SELECT manifest FROM records WHERE id=?", (full,)).fetchone()
        record = parse_manifest(json.loads(row[0]), f"record {full[:12]}")
        _warn_if_plugin_missing(record)
        return record

    def tensors(self, record_id: str | Record) -> dict[str, torch.Tensor]:
        """The record's tensors, after checking the blob's hash (corruption is an error)."""
        record = record_id if isinstance(record_id, Record) else self.get(record_id)
        path = self._blob_path(record.id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"record {record.short_id}: blob {path} is missing (run `conceptkit store verify`)") from None
        if hashlib.sha256(data).hexdigest() != record.blob_sha256:
            raise StoreError(f"record {record.short_id}: blob {path} is corrupt (hash mismatch); not loading it")
        return st_load(data)

    def load(self, record_id: str) -> tuple[Record, dict[str, torch.Tensor]]:
        record = self.get(record_id)
        return record, self.tensors(record)

    def find(
        self,
        concept: str | None = None,
        model: str | None = None,
        site: str | None = None,
        method: str | None = None,
        tag: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Records matching every given filter, newest first."""
        where, args = self._filters(concept, model, site, method, tag, kind)
        q = f"SELECT manifest FROM records r {where} ORDER BY created_at DESC"
        if limit:
            q += f" LIMIT {int(limit)}"
        return [parse_manifest(json.loads(row[0])) for row in self._db.execute(q, args)]

    ls = find

    def _filters(self, concept, model, site, method, tag, kind=None) -> tuple[str, list[Any]]:  # type: ignore[no-untyped-def]
        clauses, args = [], []
        for col, val in (("concept", concept), ("model", model), ("site", site), ("method", method), ("kind", kind)):
            if val is not None:
                clauses.append(f"r.{col} = ?")
                args.append(val)
        if tag is not None:
            clauses.append("EXISTS (SELECT 1 FROM tags t WHERE t.record_id = r.id AND t.tag = ?)")
            args.append(tag)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def __contains__(self, record_id: object) -> bool:
        return bool(self._db.execute("SELECT 1 FROM records WHERE id=?", (record_id,)).fetchone())

    # -- similarity ----------------------------------------------------------------------------
    def _matrix(self, width: int, filters: tuple) -> tuple[np.ndarray, list[tuple[str, str]]]:
        generation = self._generation()
        key = (width, filters)
        cached = self._cache.get(key)
        if cached and cached[0] == generation:
            return cached[1], cached[2]
        where, args = self._filters(*filters)
        extra = ("AND " + where[6:]) if where else ""
        q = f"SELECT v.record_id, v.tensor, v.data FROM vectors v JOIN records r ON r.id = v.record_id WHERE v.width = ? {extra}"
        rows = self._db.execute(q, [width, *args]).fetchall()
        keys = [(r[0], r[1]) for r in rows]
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), width) if rows else np.zeros((0, width), np.float32)
        self._cache = {k: v for k, v in self._cache.items() if v[0] == generation}
        self._cache[key] = (generation, matrix, keys)
        return matrix, keys

    def similar(
        self,
        query: str | torch.Tensor | np.ndarray,
        k: int = 10,
        *,
        concept: str | None = None,
        model: str | None = None,
        site: str | None = None,
        method: str | None = None,
        tag: str | None = None,
        tensor: str | None = None,
    ) -> list[Match]:
        """Top-``k`` stored vectors by cosine similarity among those of the query's width.

        ``query`` is a record id (its ``tensor``, or its only 1-D tensor) or a vector.
        """
        exclude = None
        if isinstance(query, str):
            record = self.get(query)
            tensors = self.tensors(record)
            names = [n for n, t in tensors.items() if t.dim() == 1] if tensor is None else [tensor]
            if len(names) != 1 or names[0] not in tensors:
                raise StoreError(f"record {record.short_id} holds {sorted(tensors)}; name one 1-D tensor with tensor=")
            vec = tensors[names[0]].double().numpy()
            exclude = (record.id, names[0])
        else:
            vec = np.asarray(query.detach().cpu() if isinstance(query, torch.Tensor) else query, dtype=np.float64)
        if vec.ndim != 1 or not np.isfinite(vec).all() or not np.linalg.norm(vec) > 0:
            raise StoreError("a similarity query must be a finite, non-zero 1-D vector")
        matrix, keys = self._matrix(vec.shape[0], (concept, model, site, method, tag))
        if not keys:
            return []
        q = (vec / np.linalg.norm(vec)).astype(np.float32)
        scores = matrix @ q
        if exclude is not None:
            for i, key in enumerate(keys):
                if key == exclude:
                    scores[i] = -np.inf
        n = min(k, len(keys))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top])]
        manifests = {}
        ids = list({keys[i][0] for i in top})
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for rid, man in self._db.execute(f"SELECT id, manifest FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                manifests[rid] = parse_manifest(json.loads(man))
        return [Match(manifests[keys[i][0]], keys[i][1], float(scores[i])) for i in top if np.isfinite(scores[i])]

    # -- maintenance ----------------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        """Recompute every blob hash; list corrupt records, orphan blobs and temporary files."""
        report = VerifyReport()
        known = {}
        for rid, sha in self._db.execute("SELECT id, blob_sha256 FROM records"):
            known[rid] = sha
        for rid, sha in known.items():
            report.checked += 1
            path = self._blob_path(rid)
            try:
                ok = hashlib.sha256(path.read_bytes()).hexdigest() == sha
            except FileNotFoundError:
                ok = False
            if not ok:
                report.corrupt.append(rid)
        for path in (self.root / "blobs").glob("*/*.safetensors"):
            if path.stem not in known:
                report.orphans.append(str(path.relative_to(self.root)))
        report.temporary = [str(p.relative_to(self.root)) for p in (self.root / "tmp").iterdir()]
        return report

    def gc(self) -> list[str]:
        """Delete orphan blobs and temporary files left by interrupted writes."""
        report = self.verify()
        removed = []
        for rel in report.orphans + report.temporary:
            (self.root / rel).unlink(missing_ok=True)
            removed.append(rel)
        return removed

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        err = errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        return f"field {loc!r}: {err['msg']}"
    return str(exc)


def _warn_if_plugin_missing(record: Record) -> None:
    plugin = record.method.plugin
    if plugin is None:
        return
    from conceptkit.plugin_manager import get_manager

    if plugin not in get_manager().registry.plugins:
        warnings.warn(
            f"record {record.short_id} was made by plugin {plugin!r}, which is not installed; "
            "it can be inspected but not re-run",
            RuntimeWarning,
            stacklevel=3,
        )


def _announce(record: Record, store: LocalStore) -> None:
    from conceptkit.plugin_manager import get_manager

    try:
        get_manager().hook.record_saved(record=record, store=store)
    except Exception as exc:  # noqa: BLE001 - a listener must not lose a committed write
        warnings.warn(f"a record_saved listener raised {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
