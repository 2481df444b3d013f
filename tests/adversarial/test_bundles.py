"""Bundles against hostile input (issue 10 items 4, 7, 9): all-or-nothing import with the id
checked against the content before writing, export via temp+rename, streaming with size caps,
and a clear error for every malformed bundle."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import conceptkit as ck
from conceptkit.errors import StoreError
from conceptkit.store import RecordDraft
from conceptkit.store.bundle import export_bundle, import_bundle
from tests.adversarial.tally import expect_error, tally

AREA = "bundles"


def draft(seed: int, width: int = 8) -> RecordDraft:
    g = torch.Generator().manual_seed(seed)
    return RecordDraft(tensors={"vector": torch.randn(width, generator=g)}, concept=f"c{seed}")


def state(store) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file() and "index.sqlite" not in p.name and not p.name.endswith(".lock"))
        return len(store), sorted(r.id for r in store.find()), files


def write_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def source(tmp_path):
    """A store with two records and the parts of their bundle."""
    s = ck.open_store(tmp_path / "src")
    recs = [s.put(draft(i)) for i in range(2)]
    export_bundle(s, tmp_path / "good.tar")
    parts = {}
    with tarfile.open(tmp_path / "good.tar") as tar:
        for m in tar.getmembers():
            parts[m.name] = tar.extractfile(m).read()
    return s, recs, parts


@pytest.fixture
def target(tmp_path):
    t = ck.open_store(tmp_path / "dst")
    t.put(draft(99))
    return t


def _with_blob(parts: dict, rid: str, blob: bytes) -> dict:
    """``parts`` with record ``rid``'s blob replaced and its manifest's hash updated to match."""
    out = dict(parts)
    manifest = json.loads(out[f"records/{rid}/manifest.json"])
    manifest["blob_sha256"] = hashlib.sha256(blob).hexdigest()
    out[f"records/{rid}/manifest.json"] = json.dumps(manifest).encode()
    out[f"records/{rid}/tensors.safetensors"] = blob
    return out


def test_malformed_bundles_are_clear_errors_and_change_nothing(source, target, tmp_path):
    """Non-tar files, bad bundle.json, truncated or absurd safetensors headers, NaN and empty blobs,
    and a manifest whose content does not hash to its id: each a StoreError, the store unchanged."""
    _, recs, parts = source
    rid = recs[1].id
    before = state(target)
    header = parts["bundle.json"]
    big_header = (2**63).to_bytes(8, "little") + b"{}"
    altered = dict(parts)
    manifest = json.loads(altered[f"records/{rid}/manifest.json"])
    manifest["concept"] = "renamed after export"
    altered[f"records/{rid}/manifest.json"] = json.dumps(manifest).encode()
    cases = {
        "not a tar file": (None, "not a readable bundle"),
        "bundle.json is a list": ({**parts, "bundle.json": b"[1, 2]"}, "must be a JSON object"),
        "records is null": ({**parts, "bundle.json": json.dumps({"format": "conceptkit-bundle", "version": 1, "records": None}).encode()}, "must be a list"),
        "bundle.json not JSON": ({**parts, "bundle.json": b"{oops"}, "not valid JSON"),
        "records lists a number": ({**parts, "bundle.json": json.dumps({"format": "conceptkit-bundle", "version": 1, "records": [1]}).encode()}, "must be a list of record ids"),
        "manifest not JSON": ({**parts, f"records/{rid}/manifest.json": b"\xff\xfe"}, "not valid JSON"),
        "truncated safetensors header": (_with_blob(parts, rid, parts[f"records/{rid}/tensors.safetensors"][:20]), "truncated or not safetensors"),
        "header claims 2^63 bytes": (_with_blob(parts, rid, big_header), "claims 9223372036854775808 bytes"),
        "empty blob": (_with_blob(parts, rid, b""), "0 bytes long"),
        "NaN blob": (_with_blob(parts, rid, st_save({"vector": torch.tensor([1.0, float("nan")])})), "NaN or Inf"),
        "content does not hash to the id": (altered, "hashes to .* not to its id"),
    }
    assert header  # the good parts are used as the base of every case
    for label, (members, needle) in cases.items():
        path = tmp_path / f"{label.replace(' ', '_')}.tar"
        if members is None:
            path.write_bytes(b"this is not a tar archive at all" * 40)
        else:
            write_tar(path, list(members.items()))
        expect_error(AREA, label, lambda p=path: import_bundle(target, p), needle, StoreError)
        assert state(target) == before, label


def test_import_is_all_or_nothing_and_checks_ids_before_writing(source, target, tmp_path):
    """A bundle whose second record is bad writes nothing, not even the first record's blob."""
    _, recs, parts = source
    members = dict(parts)
    manifest = json.loads(members[f"records/{recs[1].id}/manifest.json"])
    manifest["tags"] = ["added-later"]
    members[f"records/{recs[1].id}/manifest.json"] = json.dumps(manifest).encode()
    before = state(target)
    expect_error(AREA, "second record's id does not match its content", lambda: import_bundle(target, write_tar(tmp_path / "x.tar", list(members.items()))), "not to its id", StoreError)
    assert state(target) == before and target.verify().orphans == []


def test_export_failure_leaves_existing_file_intact(source, tmp_path, monkeypatch):
    """An export that fails half-way leaves the previous bundle untouched and no temporary file."""
    s, recs, _ = source
    path = tmp_path / "good.tar"
    before = path.read_bytes()
    calls = {"n": 0}
    real = s.tensors

    def failing(record):
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreError("simulated failure on the second record")
        return real(record)

    monkeypatch.setattr(s, "tensors", failing)
    expect_error(AREA, "export failing on the second record", lambda: export_bundle(s, path), "simulated failure", StoreError)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".good.tar")) == []


def test_members_are_streamed_capped_and_unknown_ones_skipped(source, target, tmp_path):
    """Member and total sizes are capped with a clear error; unknown members are skipped unread."""
    _, recs, parts = source
    junk = ("junk/zeros.bin", b"\0" * (3 << 20))
    ok = write_tar(tmp_path / "junk.tar", [*parts.items(), junk])
    assert sorted(import_bundle(target, ok, max_member_bytes=1 << 20, max_total_bytes=1 << 20)) == sorted(r.id for r in recs)
    tally(AREA, "3 MiB unknown member skipped under a 1 MiB cap")
    other = ck.open_store(tmp_path / "other")
    big_blob = parts[f"records/{recs[0].id}/tensors.safetensors"]
    expect_error(AREA, "member over max_member_bytes", lambda: import_bundle(other, ok, max_member_bytes=len(big_blob) - 1), "over the limit", StoreError)
    expect_error(AREA, "members over max_total_bytes", lambda: import_bundle(other, ok, max_total_bytes=len(big_blob) + 50), "add up to more than", StoreError)
    expect_error(AREA, "more members than max_members", lambda: import_bundle(other, ok, max_members=2), "more than 2 members", StoreError)
    assert len(other) == 0


def test_compressed_bomb_is_refused_before_decompressing_it(source, tmp_path, monkeypatch):
    """A .tar.gz whose member inflates to 64 MiB is refused by its declared size under a 1 MiB cap (env)."""
    _, recs, parts = source
    rid = recs[0].id
    members = {**parts, f"records/{rid}/tensors.safetensors": b"\0" * (64 << 20)}
    path = write_tar(tmp_path / "bomb.tar.gz", list(members.items()), mode="w:gz")
    assert path.stat().st_size < 1 << 20
    monkeypatch.setenv("CONCEPTKIT_BUNDLE_MAX_MEMBER_BYTES", str(1 << 20))
    other = ck.open_store(tmp_path / "other")
    expect_error(AREA, "1 MB .tar.gz inflating to 64 MiB", lambda: import_bundle(other, path), "over the limit of 1048576", StoreError)


def test_member_claiming_gigabytes_in_a_tiny_file_is_refused(source, tmp_path):
    """A 10 KB tar whose member header claims 3 GiB is refused by the default cap, not read."""
    _, recs, parts = source
    rid = recs[0].id
    info = tarfile.TarInfo(f"records/{rid}/tensors.safetensors")
    info.size = 3 << 30
    data = info.tobuf(tarfile.GNU_FORMAT) + b"\0" * 8192
    path = tmp_path / "claims.tar"
    with open(path, "wb") as fh:
        fh.write(write_tar(tmp_path / "head.tar", [("bundle.json", parts["bundle.json"])]).read_bytes()[:1024])  # bundle.json member
        fh.write(data)
    assert path.stat().st_size < 20_000
    other = ck.open_store(tmp_path / "other")
    expect_error(AREA, "10 KB tar claiming a 3 GiB member", lambda: import_bundle(other, path), "over the limit", StoreError)


def test_damaged_gzip_stream_is_a_clear_error(source, tmp_path):
    """A .tar.gz cut in the middle is a StoreError, not a zlib traceback."""
    _, _, parts = source
    path = write_tar(tmp_path / "ok.tar.gz", list(parts.items()), mode="w:gz")
    data = path.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    other = ck.open_store(tmp_path / "other")
    expect_error(AREA, "truncated .tar.gz", lambda: import_bundle(other, tmp_path / "cut.tar.gz"), "damaged bundle|not a readable bundle", StoreError)
