"""Export/import bundles: one tar file holding manifests and blobs.

Import validates everything before writing anything: every member must be a regular file at a
relative path without ``..`` (no links, no devices), every manifest must parse with a known
``schema_version``, and every blob must match its manifest's hash. A bad bundle leaves the
store unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from safetensors.torch import load as st_load

from conceptkit.errors import StoreError
from conceptkit.store.local import LocalStore
from conceptkit.store.record import RecordDraft, parse_manifest

FORMAT = "conceptkit-bundle"
FORMAT_VERSION = 1


def export_bundle(store: LocalStore, path: str | Path, record_ids: Sequence[str] | None = None) -> int:
    """Write the given records (default: all) to a ``.tar`` bundle; returns how many."""
    records = [store.get(r) for r in record_ids] if record_ids else store.find()
    path = Path(path)
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        add("bundle.json", json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "records": [r.id for r in records]}).encode())
        for record in records:
            blob = store._blob_path(record.id).read_bytes()
            store.tensors(record)  # refuse to export a corrupt blob
            add(f"records/{record.id}/manifest.json", record.model_dump_json(indent=1).encode())
            add(f"records/{record.id}/tensors.safetensors", blob)
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


def import_bundle(store: LocalStore, path: str | Path) -> list[str]:
    """Import every record of a bundle (all or nothing); returns the record ids."""
    try:
        tar = tarfile.open(path, "r")
    except (tarfile.TarError, OSError) as exc:
        raise StoreError(f"{path}: not a readable bundle ({exc})") from None
    files: dict[str, bytes] = {}
    with tar:
        for member in tar.getmembers():
            name = _safe_member(member)
            if member.isfile():
                fh = tar.extractfile(member)
                files[name] = fh.read() if fh else b""
    header = files.get("bundle.json")
    if header is None:
        raise StoreError(f"{path}: no bundle.json; not a conceptkit bundle")
    meta = json.loads(header)
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise StoreError(f"{path}: unsupported bundle format {meta.get('format')!r} version {meta.get('version')!r}")
    drafts = []
    for rid in meta.get("records", []):
        where = f"{path}: record {str(rid)[:12]}"
        manifest = files.get(f"records/{rid}/manifest.json")
        blob = files.get(f"records/{rid}/tensors.safetensors")
        if manifest is None or blob is None:
            raise StoreError(f"{where}: manifest or tensors missing")
        record = parse_manifest(json.loads(manifest), where)
        if record.id != rid:
            raise StoreError(f"{where}: manifest id {record.id[:12]} does not match its folder")
        if hashlib.sha256(blob).hexdigest() != record.blob_sha256:
            raise StoreError(f"{where}: tensors do not match the manifest's hash")
        data = record.model_dump(exclude={"id", "schema_version", "created_at", "conceptkit_version", "blob_sha256", "tensors"})
        drafts.append(RecordDraft(tensors=st_load(blob), **data))
    stored = store.put_many(drafts)
    for draft_rec, rid in zip(stored, meta.get("records", [])):
        if draft_rec.id != rid:
            raise StoreError(f"record {rid[:12]} changed id on import ({draft_rec.id[:12]}); the bundle was made by another version")
    return [r.id for r in stored]
