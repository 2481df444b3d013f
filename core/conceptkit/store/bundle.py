"""Export/import bundles: one tar file holding manifests and blobs.

Import validates everything before writing anything: every member must be a regular file at a
relative path without ``..`` (no links, no devices), every manifest must parse with a known
``schema_version``, every blob must match its manifest's hash and every record's content must
hash to the id it claims. Members are read one at a time as the tar streams by; members a
bundle does not need are skipped unread, and member and total sizes are capped (a sparse or
highly compressed member cannot balloon in memory). A bad bundle leaves the store unchanged.

Export writes to a temporary file beside the target and renames it into place, so a failed
export never leaves a truncated bundle over an existing file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from conceptkit.errors import StoreError
from conceptkit.store.local import LocalStore, load_safetensors
from conceptkit.store.record import RecordDraft, content_id, parse_manifest

FORMAT = "conceptkit-bundle"
FORMAT_VERSION = 1

#: Environment overrides of the import caps (bytes / count).
MAX_MEMBER_ENV = "CONCEPTKIT_BUNDLE_MAX_MEMBER_BYTES"
MAX_TOTAL_ENV = "CONCEPTKIT_BUNDLE_MAX_TOTAL_BYTES"
MAX_MEMBERS_ENV = "CONCEPTKIT_BUNDLE_MAX_MEMBERS"
DEFAULT_MAX_MEMBER = 2 << 30  # 2 GiB: one blob (an SAE dictionary of a big model)
DEFAULT_MAX_TOTAL = 8 << 30  # 8 GiB read into memory for one import
DEFAULT_MAX_MEMBERS = 1_000_000
MAX_HEADER = 1 << 20  # bundle.json and each manifest.json

_RECORD_MEMBER = re.compile(r"^records/([0-9a-f]{64})/(manifest\.json|tensors\.safetensors)$")


def export_bundle(store: LocalStore, path: str | Path, record_ids: Sequence[str] | None = None) -> int:
    """Write the given records (default: all) to a ``.tar`` bundle; returns how many."""
    records = [store.get(r) for r in record_ids] if record_ids else store.find()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tarfile.open(tmp, "w") as tar:

            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))

            add("bundle.json", json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "records": [r.id for r in records]}).encode())
            for record in records:
                store.tensors(record)  # refuse to export a corrupt blob
                blob = store._blob_path(record.id).read_bytes()
                add(f"records/{record.id}/manifest.json", record.model_dump_json(indent=1).encode())
                add(f"records/{record.id}/tensors.safetensors", blob)
            tar.fileobj.flush()  # type: ignore[union-attr]
            os.fsync(tar.fileobj.fileno())  # type: ignore[union-attr]
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, StoreError):
            raise StoreError(f"could not write bundle {str(path)!r}: {exc.strerror or exc}") from None
        raise
    return len(records)


def _safe_member(member: tarfile.TarInfo) -> str:
    name = member.name
    pure = PurePosixPath(name)
    drive_like = bool(pure.parts) and ":" in pure.parts[0]  # C:\... on Windows
    if not pure.parts or pure.is_absolute() or name.startswith(("/", "\\")) or drive_like:
        raise StoreError(f"bundle member {name!r} has an absolute path; refused")
    if ".." in pure.parts:
        raise StoreError(f"bundle member {name!r} contains '..'; refused")
    if member.issym() or member.islnk():
        raise StoreError(f"bundle member {name!r} is a link; refused")
    if not (member.isfile() or member.isdir()):
        raise StoreError(f"bundle member {name!r} is not a regular file; refused")
    return str(pure)


def _cap(value: int | None, env: str, default: int) -> int:
    if value is not None:
        return int(value)
    raw = os.environ.get(env)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise StoreError(f"{env}={raw[:40]!r} is not a whole number of bytes") from None


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{where} is not valid JSON ({str(exc)[:120]})") from None


def import_bundle(
    store: LocalStore,
    path: str | Path,
    *,
    max_member_bytes: int | None = None,
    max_total_bytes: int | None = None,
    max_members: int | None = None,
) -> list[str]:
    """Import every record of a bundle (all or nothing); returns the record ids.

    ``max_member_bytes`` / ``max_total_bytes`` / ``max_members`` cap what is read (defaults
    2 GiB, 8 GiB and a million members; also set by ``CONCEPTKIT_BUNDLE_MAX_*``).
    """
    store._writable("import a bundle")
    member_cap = _cap(max_member_bytes, MAX_MEMBER_ENV, DEFAULT_MAX_MEMBER)
    total_cap = _cap(max_total_bytes, MAX_TOTAL_ENV, DEFAULT_MAX_TOTAL)
    count_cap = _cap(max_members, MAX_MEMBERS_ENV, DEFAULT_MAX_MEMBERS)
    files: dict[str, bytes] = {}
    total = 0
    try:
        tar = tarfile.open(path, "r|*")  # a stream: members are read in order, never all at once
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StoreError(f"{path}: not a readable bundle (not a tar file: {exc})") from None
    try:
        with tar:
            for count, member in enumerate(tar, start=1):
                if count > count_cap:
                    raise StoreError(f"{path}: more than {count_cap} members; refused (raise {MAX_MEMBERS_ENV} if this is expected)")
                name = _safe_member(member)
                if not member.isfile():
                    continue
                wanted = name == "bundle.json" or _RECORD_MEMBER.match(name)
                if not wanted:
                    continue  # unknown members are skipped unread
                cap = MAX_HEADER if not name.endswith(".safetensors") else member_cap
                if member.size > cap:
                    raise StoreError(f"{path}: member {name!r} is {member.size} bytes, over the limit of {cap} (raise {MAX_MEMBER_ENV} if this is expected)")
                total += member.size
                if total > total_cap:
                    raise StoreError(f"{path}: members add up to more than {total_cap} bytes; refused (raise {MAX_TOTAL_ENV} if this is expected)")
                if name in files:
                    raise StoreError(f"{path}: member {name!r} appears twice; refused")
                fh = tar.extractfile(member)
                data = fh.read(cap + 1) if fh else b""
                if len(data) > cap:
                    raise StoreError(f"{path}: member {name!r} is larger than the limit of {cap} bytes")
                files[name] = data
    except (tarfile.TarError, EOFError, *_decompression_errors()) as exc:
        raise StoreError(f"{path}: damaged bundle ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the bundle ({exc.strerror or exc})") from None
    header = files.get("bundle.json")
    if header is None:
        raise StoreError(f"{path}: no bundle.json; not a conceptkit bundle")
    meta = _json(header, f"{path}: bundle.json")
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: bundle.json must be a JSON object, not {type(meta).__name__}")
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise StoreError(f"{path}: unsupported bundle format {str(meta.get('format'))[:60]!r} version {str(meta.get('version'))[:20]!r}")
    ids = meta.get("records")
    if not isinstance(ids, list) or not all(isinstance(r, str) for r in ids):
        raise StoreError(f"{path}: bundle.json 'records' must be a list of record ids, not {type(ids).__name__}")
    if len(set(ids)) != len(ids):
        raise StoreError(f"{path}: bundle.json lists a record twice")
    drafts = []
    for rid in ids:
        where = f"{path}: record {rid[:12]}"
        manifest = files.get(f"records/{rid}/manifest.json")
        blob = files.get(f"records/{rid}/tensors.safetensors")
        if manifest is None or blob is None:
            raise StoreError(f"{where}: manifest or tensors missing")
        record = parse_manifest(_json(manifest, f"{where}: manifest.json"), where)
        if record.id != rid:
            raise StoreError(f"{where}: manifest id {record.id[:12]} does not match its folder")
        if hashlib.sha256(blob).hexdigest() != record.blob_sha256:
            raise StoreError(f"{where}: tensors do not match the manifest's hash")
        tensors = load_safetensors(blob, where)
        data = record.model_dump(exclude={"id", "schema_version", "created_at", "conceptkit_version", "blob_sha256", "tensors"})
        try:
            draft = RecordDraft(tensors=tensors, **data)
        except Exception as exc:  # pydantic.ValidationError: NaN tensors, bad dtypes ...
            from conceptkit.store.local import _first_error

            raise StoreError(f"{where}: refused: {_first_error(exc)}") from None
        actual = content_id(draft)
        if actual != rid:
            raise StoreError(f"{where}: its content hashes to {actual[:12]}, not to its id; the bundle was altered or made by another version")
        drafts.append(draft)
    stored = store.put_many(drafts)
    return [r.id for r in stored]


def _decompression_errors() -> tuple[type[BaseException], ...]:
    """Decompression errors a damaged ``.tar.gz``/``.tar.bz2``/``.tar.xz`` raises mid-stream."""
    import lzma
    import zlib

    errors: list[type[BaseException]] = [zlib.error, lzma.LZMAError]
    try:
        import gzip

        errors.append(gzip.BadGzipFile)
    except AttributeError:  # pragma: no cover
        pass
    return tuple(errors)
