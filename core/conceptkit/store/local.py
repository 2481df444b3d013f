"""The embedded default store: a directory with a SQLite index (WAL) and safetensors blobs.

Layout::

    <root>/index.sqlite      records, tags and a float32 copy of every 1-D vector (for search)
    <root>/blobs/ab/<id>.safetensors
    <root>/tmp/              blobs being written
    <root>/.lock             the writers' lock (see below)

A put writes the blob to ``tmp/``, fsyncs it, renames it into ``blobs/`` and fsyncs the
directory, and only then commits the index row. A crash before the commit leaves at most an
orphan blob (or a temporary file), which ``verify`` names as such and ``gc`` removes; an
acknowledged record is always complete. SQLite's locking serialises writers across processes.

Writers hold a *shared* lock on ``.lock`` from their first file write to their commit; ``gc``
and ``rm`` take it *exclusively*. So ``gc`` never deletes a blob or temporary file that a live
writer is about to commit, and ``rm`` never unlinks a blob that a concurrent ``put`` of the same
content has just re-written. A process killed by the kernel releases its lock. Where ``flock``
does not exist (Windows) ``gc`` only removes files older than a grace period instead.

A store whose directory cannot be written is opened read-only (reads work, writes are refused
with a clear error). One unreadable record (a newer ``schema_version``, a damaged manifest) is
skipped with a warning naming it by ``find``/``similar``/``export``, named by ``verify``, and
still removable with ``rm``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from conceptkit.errors import StoreError, UnknownNameError
from conceptkit.store.checks import check_manifest_values, unit_vector
from conceptkit.store.record import Record, RecordDraft, content_id, now, parse_manifest

try:  # POSIX advisory locks; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

#: Without ``flock``, ``gc`` leaves files younger than this alone (a writer may still own them).
GC_GRACE_WITHOUT_LOCK_S = 3600.0

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
_COLUMNS = {
    "records": ("id", "concept", "model", "site", "method", "kind", "created_at", "blob_sha256", "manifest"),
    "tags": ("record_id", "tag"),
    "vectors": ("record_id", "tensor", "width", "data"),
    "meta": ("key", "value"),
}

F = TypeVar("F", bound=Callable[..., Any])


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
    unreadable: list[str] = field(default_factory=list)  # "id: reason" for manifests that do not parse
    orphans: list[str] = field(default_factory=list)  # blobs with no record (interrupted puts)
    temporary: list[str] = field(default_factory=list)  # half-written temporary files

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.unreadable

    def lines(self) -> list[str]:
        out = [f"checked {self.checked} record(s)"]
        out += [f"CORRUPT {c}" for c in self.corrupt]
        out += [f"UNREADABLE {u} (rm removes it)" for u in self.unreadable]
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


def _sqlite_errors(fn: F) -> F:
    """Turn SQLite's exceptions into a StoreError that names the index file."""

    @functools.wraps(fn)
    def wrapper(self: LocalStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"store index {str(self._index_path)!r}: {exc} (a damaged or foreign index; restore it from a bundle or a backup)") from None

    return wrapper  # type: ignore[return-value]


class LocalStore:
    """The default concept-vector store. Open with :func:`conceptkit.open_store`."""

    def __init__(self, root: str | Path, *, readonly: bool | None = None) -> None:
        self.root = Path(root).expanduser()
        self._index_path = self.root / "index.sqlite"
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {str(self.root)!r} exists and is not a directory")
        for sub in ("blobs", "tmp"):
            if (self.root / sub).exists() and not (self.root / sub).is_dir():
                raise StoreError(f"store {str(self.root)!r}: {sub}/ is not a directory (the store is damaged)")
        if self._index_path.exists() and not self._index_path.is_file():
            raise StoreError(f"store {str(self.root)!r}: index.sqlite is not a file (the store is damaged)")
        if readonly is None:
            readonly = self.root.exists() and not os.access(self.root, os.W_OK | os.X_OK)
        self.readonly = readonly
        self._local = threading.local()
        self._cache: dict[tuple, tuple[int, np.ndarray, list[tuple[str, str]]]] = {}
        if readonly:
            if not self._index_path.exists():
                raise StoreError(f"store {str(self.root)!r} is read-only and has no index.sqlite; nothing to read")
        else:
            try:
                (self.root / "blobs").mkdir(parents=True, exist_ok=True)
                (self.root / "tmp").mkdir(exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create store {str(self.root)!r}: {exc.strerror or exc}") from None
        self._init_index()

    @_sqlite_errors
    def _init_index(self) -> None:
        if not self.readonly:
            self._db.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
        for table, needed in _COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in needed if c not in have]
            if missing:
                raise StoreError(f"store index {str(self._index_path)!r}: table {table!r} lacks column(s) {', '.join(missing)}; not a conceptkit index")

    # -- sqlite -------------------------------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.readonly:
                conn = self._connect_readonly()
            else:
                conn = sqlite3.connect(self._index_path, timeout=60, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = "file:" + quote(str(self._index_path.resolve()))
        try:
            conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=60, isolation_level=None)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            # A WAL database in a folder we cannot write (no -shm file can be created): read it as
            # an immutable snapshot.
            conn = sqlite3.connect(uri + "?immutable=1", uri=True, timeout=60, isolation_level=None)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
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

    @contextmanager
    def _lock(self, exclusive: bool, name: str = ".lock") -> Iterator[None]:
        """The writers' lock: shared for ``put``, exclusive for ``gc`` and ``rm`` (see module doc).

        ``name=".commit.lock"`` queues writers' index transactions: the kernel wakes the next
        writer as soon as one commits, where SQLite's busy handler would poll with sleeps.
        """
        if fcntl is None:
            yield
            return
        # One descriptor per lock file, thread and process (a forked child must not share its
        # parent's open file description: flock locks belong to that description).
        files = getattr(self._local, "lock_files", None)
        if files is None or files.pid != os.getpid():
            files = self._local.lock_files = _LockFiles()
        fd = files.fds.get(name)
        if fd is None:
            fd = files.fds[name] = os.open(self.root / name, os.O_RDWR | os.O_CREAT, 0o644)
        if fd in files.held:  # re-entered in this thread: already held
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        files.held.add(fd)
        try:
            yield
        finally:
            files.held.discard(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _writable(self, what: str) -> None:
        if self.readonly:
            raise StoreError(f"store {str(self.root)!r} is read-only (its folder is not writable); cannot {what}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        files = getattr(self._local, "lock_files", None)
        if files is not None:
            files.close()
        self._local.lock_files = None

    def _generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    # -- paths --------------------------------------------------------------------------------
    def _blob_path(self, record_id: str) -> Path:
        return self.root / "blobs" / record_id[:2] / f"{record_id}.safetensors"

    # -- writes -------------------------------------------------------------------------------
    def _prepare(self, draft: RecordDraft | dict[str, Any]) -> tuple[Record, bytes, dict[str, torch.Tensor]]:
        """Validate a draft once; return its manifest, its safetensors bytes and its tensors.

        Everything that could make the record unreadable later is refused here, before any
        file is written: non-finite numbers anywhere in the manifest, text that is not valid
        Unicode, a manifest that does not serialise.
        """
        if not isinstance(draft, RecordDraft):
            try:
                draft = RecordDraft.model_validate(draft)
            except Exception as exc:  # pydantic.ValidationError
                raise StoreError(f"refused: {_first_error(exc)}") from None
        check_manifest_values(draft.model_dump(mode="python", exclude={"tensors"}), "record")
        for name in draft.tensors:
            check_manifest_values(name, f"tensor name {name!r}")
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
        try:
            parse_manifest(json.loads(record.model_dump_json()), f"record {record_id[:12]}")
        except (StoreError, ValueError) as exc:
            raise StoreError(f"refused: the manifest would not read back ({exc})") from None
        return record, blob, draft.tensors

    def _write_blob(self, record: Record, blob: bytes, sync: bool = True) -> Path:
        """Write ``blob`` to its final place via ``tmp/``; on any failure no temporary file stays."""
        tmp = self.root / "tmp" / f"{record.id}.{uuid.uuid4().hex}.tmp"
        final = self._blob_path(record.id)
        try:
            with open(tmp, "wb") as fh:
                fh.write(blob)
                fh.flush()
                if sync:
                    os.fsync(fh.fileno())
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
        except BaseException as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise StoreError(f"could not write the blob of record {record.short_id} to {str(final)!r}: {exc.strerror or exc}; nothing was stored") from None
            raise
        return final

    def _index_rows(self, db: sqlite3.Connection, record: Record, tensors: dict[str, torch.Tensor]) -> None:
        db.execute(
            "INSERT INTO records (id, concept, model, site, method, kind, created_at, blob_sha256, manifest) VALUES (?,?,?,?,?,?,?,?,?)",
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
        db.executemany("INSERT INTO tags (record_id, tag) VALUES (?,?)", [(record.id, t) for t in record.tags])
        rows = []
        for name, t in tensors.items():
            if t.dim() == 1 and t.is_floating_point():
                unit = unit_vector(t).float().numpy()
                rows.append((record.id, name, int(t.shape[0]), unit.tobytes()))
        db.executemany("INSERT INTO vectors (record_id, tensor, width, data) VALUES (?,?,?,?)", rows)

    def put(self, draft: RecordDraft | dict[str, Any]) -> Record:
        """Store a record; storing the same content again returns the existing record."""
        return self.put_many([draft])[0]

    @_sqlite_errors
    def put_many(self, drafts: Iterable[RecordDraft | dict[str, Any]]) -> list[Record]:
        """Store several records all-or-nothing (one index transaction; bulk loads, ``Result.save``).

        Every draft is validated before any file is written, so one bad draft stores none.
        Every blob is durable (fsynced, directories too) before the transaction commits. Storing
        content that is already indexed but whose blob is missing or damaged repairs the blob.
        """
        self._writable("store records")
        prepared = [self._prepare(d) for d in drafts]
        if not prepared:
            return []
        unique: dict[str, tuple[Record, bytes, dict[str, torch.Tensor]]] = {}
        for item in prepared:
            unique.setdefault(item[0].id, item)
        with self._lock(exclusive=False):
            existing = self._existing(list(unique))
            written_dirs: set[Path] = set()
            fresh, repaired = [], []
            for rid, (record, blob, tensors) in unique.items():
                if rid in existing:
                    if self._blob_matches(rid, existing[rid]):
                        continue
                    written_dirs.add(self._write_blob(record, blob).parent)
                    repaired.append(record)
                else:
                    written_dirs.add(self._write_blob(record, blob).parent)
                    fresh.append((record, tensors))
            try:
                for d in written_dirs:
                    _fsync_dir(d)
            except OSError as exc:
                raise StoreError(f"could not make the new blobs durable ({exc.strerror or exc}); nothing was stored (`gc` removes the blobs)") from None
            committed: list[Record] = []
            with self._lock(exclusive=True, name=".commit.lock"), self._tx() as db:
                for record, tensors in fresh:
                    # Another process may have stored the same content since we looked.
                    if db.execute("SELECT 1 FROM records WHERE id=?", (record.id,)).fetchone():
                        continue
                    self._index_rows(db, record, tensors)
                    committed.append(record)
                for record in repaired:
                    if existing[record.id] != record.blob_sha256:  # the blob was written by another version
                        row = db.execute("SELECT manifest FROM records WHERE id=?", (record.id,)).fetchone()
                        if row is not None:
                            manifest = json.loads(row[0])
                            manifest["blob_sha256"] = record.blob_sha256
                            db.execute("UPDATE records SET blob_sha256=?, manifest=? WHERE id=?", (record.blob_sha256, json.dumps(manifest), record.id))
                db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
                mine = {r.id for r in committed}
                rows = self._rows_by_id(db, [rid for rid in unique if rid not in mine])
            # Read back inside the lock: no ``rm`` can run between our commit and this read.
        if len(committed) >= 1000:
            # Fold a bulk load's write-ahead log back into the database file (it would otherwise
            # stay on disk at the size of the load until the next automatic checkpoint).
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        out = []
        fresh_by_id = {r.id: r for r in committed}
        for record, _, _ in prepared:
            if record.id in fresh_by_id:
                out.append(fresh_by_id[record.id])
                continue
            text = rows.get(record.id)
            if text is None:  # pragma: no cover - the lock makes this impossible
                raise StoreError(f"record {record.short_id} vanished while it was being stored")
            out.append(parse_manifest(json.loads(text), f"record {record.short_id}"))
        for rec in committed:
            _announce(rec, self)
        return out

    def _blob_matches(self, record_id: str, sha: str) -> bool:
        try:
            return hashlib.sha256(self._blob_path(record_id).read_bytes()).hexdigest() == sha
        except OSError:
            return False

    def _existing(self, ids: Sequence[str]) -> dict[str, str]:
        """``{id: blob_sha256}`` for the ids already indexed."""
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = f"SELECT id, blob_sha256 FROM records WHERE id IN ({','.join('?' * len(chunk))})"
            found.update((r[0], r[1]) for r in self._db.execute(q, chunk))
        return found

    @staticmethod
    def _rows_by_id(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = f"SELECT id, manifest FROM records WHERE id IN ({','.join('?' * len(chunk))})"
            out.update((r[0], r[1]) for r in db.execute(q, chunk))
        return out

    @_sqlite_errors
    def rm(self, record_id: str) -> None:
        """Remove a record (index first, then its blob); works on unreadable records too."""
        self._writable("remove records")
        with self._lock(exclusive=True):
            full, _ = self._resolve_row(record_id)
            with self._tx() as db:
                db.execute("DELETE FROM records WHERE id=?", (full,))
                db.execute("DELETE FROM tags WHERE record_id=?", (full,))
                db.execute("DELETE FROM vectors WHERE record_id=?", (full,))
                db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
            _remove_path(self._blob_path(full))

    # -- reads --------------------------------------------------------------------------------
    def _resolve_row(self, record_id: str) -> tuple[str, str]:
        """``(full id, manifest text)`` for a full id or a unique prefix, matched literally."""
        if not isinstance(record_id, str) or len(record_id) < 4:
            raise StoreError(f"record id {record_id!r} is too short (give at least 4 characters)")
        rows = self._db.execute(
            "SELECT id, manifest FROM records WHERE substr(id, 1, ?) = ? LIMIT 2", (len(record_id), record_id)
        ).fetchall()
        if not rows:
            raise UnknownNameError("record", record_id)
        if len(rows) > 1:
            raise StoreError(f"record id prefix {record_id!r} is ambiguous (matches {rows[0][0][:12]}, {rows[1][0][:12]}, ...); give more characters")
        return rows[0][0], rows[0][1]

    def _resolve(self, record_id: str) -> str:
        return self._resolve_row(record_id)[0]

    @_sqlite_errors
    def get(self, record_id: str) -> Record:
        """The manifest of a record (full id or a unique prefix)."""
        full, text = self._resolve_row(record_id)
        record = _parse_row(full, text)
        _warn_if_plugin_missing(record)
        return record

    @_sqlite_errors
    def tensors(self, record_id: str | Record) -> dict[str, torch.Tensor]:
        """The record's tensors, after checking the blob's hash (corruption is an error)."""
        record = record_id if isinstance(record_id, Record) else self.get(record_id)
        path = self._blob_path(record.id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if record.id not in self:  # removed by a concurrent rm since we read its manifest
                raise UnknownNameError("record", record.id) from None
            raise StoreError(f"record {record.short_id}: blob {path} is missing (run `conceptkit store verify`)") from None
        except OSError as exc:
            raise StoreError(f"record {record.short_id}: blob {path} cannot be read ({exc.strerror or exc}; run `conceptkit store verify`)") from None
        if hashlib.sha256(data).hexdigest() != record.blob_sha256:
            raise StoreError(f"record {record.short_id}: blob {path} is corrupt (hash mismatch); not loading it")
        return load_safetensors(data, f"record {record.short_id}")

    def load(self, record_id: str) -> tuple[Record, dict[str, torch.Tensor]]:
        record = self.get(record_id)
        return record, self.tensors(record)

    @_sqlite_errors
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
        """Records matching every given filter, newest first (unreadable ones skipped, with a warning).

        ``concept`` matches exactly, or as a glob when it holds ``*``, ``?`` or ``[``
        (``"sent*"``, ``"*bias*"``; case-sensitive, as SQLite's GLOB)."""
        where, args = self._filters(concept, model, site, method, tag, kind)
        q = f"SELECT id, manifest FROM records r {where} ORDER BY created_at DESC"
        if limit:
            q += f" LIMIT {int(limit)}"
        return _parse_rows(self._db.execute(q, args).fetchall())

    ls = find

    def _filters(self, concept, model, site, method, tag, kind=None) -> tuple[str, list[Any]]:  # type: ignore[no-untyped-def]
        clauses, args = [], []
        for col, val in (("concept", concept), ("model", model), ("site", site), ("method", method), ("kind", kind)):
            if val is not None:
                glob = col == "concept" and any(c in val for c in "*?[")
                clauses.append(f"r.{col} GLOB ?" if glob else f"r.{col} = ?")
                args.append(val)
        if tag is not None:
            clauses.append("EXISTS (SELECT 1 FROM tags t WHERE t.record_id = r.id AND t.tag = ?)")
            args.append(tag)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args

    @_sqlite_errors
    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    @_sqlite_errors
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
        rows = [r for r in self._db.execute(q, [width, *args]).fetchall() if isinstance(r[2], bytes) and len(r[2]) == 4 * width]
        keys = [(r[0], r[1]) for r in rows]
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), width) if rows else np.zeros((0, width), np.float32)
        self._cache = {k: v for k, v in self._cache.items() if v[0] == generation}
        self._cache[key] = (generation, matrix, keys)
        return matrix, keys

    @_sqlite_errors
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
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise StoreError(f"similar: k={k!r}; give a whole number >= 1")
        exclude = None
        if isinstance(query, str):
            record = self.get(query)
            tensors = self.tensors(record)
            names = [n for n, t in tensors.items() if t.dim() == 1] if tensor is None else [tensor]
            if len(names) != 1 or names[0] not in tensors:
                raise StoreError(f"record {record.short_id} holds {sorted(tensors)}; name one 1-D tensor with tensor=")
            vec_t = tensors[names[0]]
            exclude = (record.id, names[0])
        else:
            vec_t = torch.as_tensor(np.asarray(query.detach().cpu() if isinstance(query, torch.Tensor) else query, dtype=np.float64))
        if vec_t.dim() != 1 or not vec_t.is_floating_point() or not bool(torch.isfinite(vec_t).all()) or not bool((vec_t != 0).any()):
            raise StoreError("a similarity query must be a finite, non-zero 1-D vector")
        matrix, keys = self._matrix(int(vec_t.shape[0]), (concept, model, site, method, tag))
        if not keys:
            return []
        q = unit_vector(vec_t).float().numpy()
        scores = matrix @ q
        if exclude is not None:
            for i, key in enumerate(keys):
                if key == exclude:
                    scores[i] = -np.inf
        n = min(k, len(keys))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top])]
        ids = list({keys[i][0] for i in top})
        manifests = {r.id: r for r in _parse_rows(list(self._rows_by_id(self._db, ids).items()))}
        return [Match(manifests[keys[i][0]], keys[i][1], float(scores[i])) for i in top if np.isfinite(scores[i]) and keys[i][0] in manifests]

    # -- maintenance ----------------------------------------------------------------------------
    @_sqlite_errors
    def verify(self) -> VerifyReport:
        """Recompute every blob hash and parse every manifest; list corrupt and unreadable records,
        orphan blobs and temporary files."""
        report = VerifyReport()
        known = {}
        for rid, sha, text in self._db.execute("SELECT id, blob_sha256, manifest FROM records"):
            known[rid] = sha
            try:
                _parse_row(rid, text)
            except StoreError as exc:
                report.unreadable.append(f"{rid}: {exc}")
        for rid, sha in known.items():
            report.checked += 1
            if not self._blob_matches(rid, sha):
                report.corrupt.append(rid)
        blobs = self.root / "blobs"
        if blobs.is_dir():
            for path in blobs.glob("*/*.safetensors"):
                if path.stem not in known:
                    report.orphans.append(str(path.relative_to(self.root)))
        tmp = self.root / "tmp"
        if tmp.is_dir():
            report.temporary = [str(p.relative_to(self.root)) for p in tmp.iterdir()]
        return report

    def _unindexed_files(self) -> tuple[list[Path], list[Path]]:
        """Blobs whose id is not indexed, and everything in ``tmp/`` (no hashing)."""
        known = {row[0] for row in self._db.execute("SELECT id FROM records")}
        blobs, tmp = self.root / "blobs", self.root / "tmp"
        orphans = [p for p in blobs.glob("*/*.safetensors") if p.stem not in known] if blobs.is_dir() else []
        temporary = list(tmp.iterdir()) if tmp.is_dir() else []
        return orphans, temporary

    @_sqlite_errors
    def gc(self, grace_s: float | None = None) -> list[str]:
        """Delete orphan blobs and temporary files left by interrupted writes.

        Candidates are listed without a lock, then re-checked and deleted under the writers'
        lock held exclusively: no writer is between its first file write and its commit then,
        so a blob that is still not indexed, and anything in ``tmp/``, is garbage. ``grace_s``
        additionally spares files younger than that many seconds (default 0 where ``flock``
        exists, an hour where it does not).
        """
        self._writable("collect garbage")
        if grace_s is None:
            grace_s = 0.0 if fcntl is not None else GC_GRACE_WITHOUT_LOCK_S
        orphans, temporary = self._unindexed_files()
        if not orphans and not temporary:
            return []
        removed = []
        cutoff = time.time() - grace_s
        with self._lock(exclusive=True):
            for path in orphans + temporary:
                try:
                    if grace_s > 0 and path.lstat().st_mtime > cutoff:
                        continue
                except OSError:
                    continue  # gone already
                if path in orphans and path.stem in self:
                    continue  # committed since we listed it
                _remove_path(path)
                removed.append(str(path.relative_to(self.root)))
        return removed

    def __repr__(self) -> str:
        mode = ", readonly=True" if self.readonly else ""
        return f"LocalStore({str(self.root)!r}{mode})"


class _LockFiles:
    """One thread's open lock-file descriptors; closed when the store (or thread) goes away."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.fds: dict[str, int] = {}
        self.held: set[int] = set()

    def close(self) -> None:
        if self.pid == os.getpid():  # a forked child must not close (and unlock) its parent's
            for fd in self.fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fds = {}

    def __del__(self) -> None:
        self.close()


def load_safetensors(data: bytes, where: str) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; truncated or absurd headers become a StoreError naming ``where``."""
    if len(data) < 8:
        raise StoreError(f"{where}: tensors file is {len(data)} bytes long; not a safetensors file")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise StoreError(f"{where}: safetensors header claims {header_len} bytes but the file has {len(data) - 8}; truncated or not safetensors")
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise StoreError(f"{where}: not a valid safetensors file ({str(exc)[:200]})") from None


def _remove_path(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _parse_row(rid: str, text: Any) -> Record:
    where = f"record {rid[:12]}"
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{where}: manifest is not JSON ({exc})") from None
    record = parse_manifest(data, where)
    if record.id != rid:
        raise StoreError(f"{where}: manifest names id {record.id[:12]}")
    return record


def _parse_rows(rows: Iterable[tuple[str, Any]]) -> list[Record]:
    """Parse manifests, skipping unreadable ones with a warning that names each."""
    out = []
    for rid, text in rows:
        try:
            out.append(_parse_row(rid, text))
        except StoreError as exc:
            warnings.warn(f"skipping record {rid}: {exc} (`conceptkit store rm {rid}` removes it)", RuntimeWarning, stacklevel=3)
    return out


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        err = errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        return f"field {loc!r}: {err['msg']}"
    return str(exc)


_INSTALLED: set[str] = set()


def _plugin_installed(name: str) -> bool:
    """Whether an entry point or distribution called ``name`` is installed (reads metadata only)."""
    if name in _INSTALLED or name == "conceptkit":
        return True
    import importlib.metadata as md

    from conceptkit._dist import dist_version

    if dist_version(name) is not None:
        _INSTALLED.add(name)
        return True
    for ep in md.entry_points(group="conceptkit"):
        _INSTALLED.add(ep.name)
        if ep.dist is not None:
            _INSTALLED.add(ep.dist.name)
    return name in _INSTALLED


def _warn_if_plugin_missing(record: Record) -> None:
    """Warn when a record's plugin is not installed; reads package metadata, never imports plugins."""
    plugin = record.method.plugin
    if plugin is None:
        return
    candidates = [plugin] + ([record.method.distribution] if record.method.distribution else [])
    if not any(_plugin_installed(c) for c in candidates):
        warnings.warn(
            f"record {record.short_id} was made by plugin {plugin!r}, which is not installed; "
            "it can be inspected but not re-run",
            RuntimeWarning,
            stacklevel=3,
        )


def _announce(record: Record, store: LocalStore) -> None:
    try:
        from conceptkit.plugin_manager import get_manager

        get_manager().hook.record_saved(record=record, store=store)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a listener must not lose a committed write
        warnings.warn(f"a record_saved listener raised {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
