"""Store faults (issue 10 items 3, 4, 9, 12): one bad record, damaged stores, hostile values.

Each test states the rule; every adversarial input is tallied for the figures table.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import warnings
from pathlib import Path

import pytest
import torch

import conceptkit as ck
from conceptkit.errors import StoreError, UnknownNameError
from conceptkit.store import RecordDraft
from conceptkit.store.record import MethodInfo, content_id
from tests.adversarial.tally import expect_error, tally


def draft(seed: int = 0, concept: str = "c", width: int = 8, **kw) -> RecordDraft:
    g = torch.Generator().manual_seed(seed)
    return RecordDraft(tensors={"vector": torch.randn(width, generator=g)}, concept=concept, **kw)


def files(store) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file() and "index.sqlite" not in p.name and not p.name.endswith(".lock"))


def snapshot(store) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return len(store), sorted(r.id for r in store.find()), files(store)


@pytest.fixture
def store(tmp_path):
    return ck.open_store(tmp_path / "store")


# -- item 3: non-finite values anywhere are refused at put ------------------------------------------
@pytest.mark.parametrize(
    ("label", "kw", "needle"),
    [
        ("NaN inside a metrics list", {"metrics": {"runs": [0.5, float("nan")]}}, r"metrics\.runs\[1\] is nan"),
        ("Inf inside a metrics list", {"metrics": {"runs": [float("inf")]}}, r"metrics\.runs\[0\] is inf"),
        ("NaN in the method config", {"method": MethodInfo(name="m", config={"lr": float("nan")})}, r"method\.config\.lr is nan"),
        ("-Inf deep in the method config", {"method": MethodInfo(name="m", config={"a": {"b": [1, {"c": float("-inf")}]}})}, r"config\.a\.b\[1\]\.c is -inf"),
        ("NaN in the model ref", {"model": {"name": "m", "scale": float("nan")}}, r"model\.scale is nan"),
    ],
)
def test_non_finite_values_anywhere_are_refused_at_put(store, label, kw, needle):
    """A non-finite number anywhere in a record is refused at put, naming the field; nothing is written."""
    store.put(draft(0))
    before = snapshot(store)
    expect_error("store: non-finite values", label, lambda: store.put(draft(1, **kw)), needle, StoreError)
    assert snapshot(store) == before


def test_lone_surrogate_in_concept_name_leaves_no_orphan(store):
    """Text that is not valid Unicode is refused before any file is written (no orphan blob)."""
    for label, kw in (("lone surrogate in concept", {"concept": "bad \ud800 name"}), ("lone surrogate in a tag", {"tags": ["\udfff"]}),
                      ("lone surrogate in a tensor name", {})):
        before = snapshot(store)
        if not kw:
            make = lambda: store.put(RecordDraft(tensors={"v\ud800": torch.ones(2)}, concept="c"))  # noqa: E731
        else:
            make = lambda kw=kw: store.put(draft(2, **kw))  # noqa: E731
        expect_error("store: bad text", label, make, "not valid Unicode", StoreError)
        assert snapshot(store) == before and store.verify().orphans == []


# -- item 3: a bad or newer record does not take the store down -------------------------------------
def _plant(store, rid: str, manifest: dict) -> None:
    """Write an index row as an older/newer conceptkit would have (bypassing today's checks)."""
    db = sqlite3.connect(store.root / "index.sqlite")
    db.execute("INSERT INTO records (id, concept, model, site, method, kind, created_at, blob_sha256, manifest) VALUES (?,?,?,?,?,?,?,?,?)",
               (rid, manifest.get("concept", "x"), None, None, "manual", "vector", "2999-01-01T00:00:00+00:00", "0" * 64, json.dumps(manifest)))
    db.execute("INSERT INTO vectors VALUES (?,?,?,?)", (rid, "vector", 8, torch.ones(8).div(8**0.5).numpy().tobytes()))
    db.commit()
    db.close()


@pytest.mark.parametrize("kind", ["null inside a metrics list", "newer schema_version", "manifest not JSON"])
def test_bad_or_newer_record_is_skipped_named_by_verify_and_removable(store, tmp_path, capsys, kind):
    """find/ls/similar/export skip a bad record with a warning naming it; show is a clear error;
    verify exits non-zero naming it; rm deletes it."""
    good = store.put(draft(0))
    manifest = json.loads(store.get(good.id).model_dump_json())
    bad_id = "ee" * 32
    manifest["id"] = bad_id
    if kind == "null inside a metrics list":
        manifest["metrics"] = {"runs": [0.5, None]}
    elif kind == "newer schema_version":
        manifest["schema_version"] = 2
    _plant(store, bad_id, manifest)
    if kind == "manifest not JSON":
        db = sqlite3.connect(store.root / "index.sqlite")
        db.execute("UPDATE records SET manifest='{not json' WHERE id=?", (bad_id,))
        db.commit()
        db.close()
    area = "store: one bad record"
    with pytest.warns(RuntimeWarning, match=bad_id):
        assert [r.id for r in store.find()] == [good.id]
    with pytest.warns(RuntimeWarning, match=bad_id):
        hits = store.similar(torch.ones(8), k=5)
    assert [h.record.id for h in hits] == [good.id]
    from conceptkit.store.bundle import export_bundle

    with pytest.warns(RuntimeWarning, match=bad_id):
        assert export_bundle(store, tmp_path / "b.tar") == 1
    tally(area, f"{kind}: find/similar/export skip it with a warning")
    expect_error(area, f"{kind}: show", lambda: store.get(bad_id[:10]), bad_id[:12], StoreError)
    report = store.verify()
    assert not report.ok and any(u.startswith(bad_id) for u in report.unreadable)
    from conceptkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["store", "verify", "--store", str(store.root)])
    assert exc.value.code == 1 and bad_id in capsys.readouterr().out
    tally(area, f"{kind}: verify exits 1 naming it")
    store.rm(bad_id[:8])
    assert bad_id not in store and store.verify().ok
    tally(area, f"{kind}: rm deletes it")


# -- item 4: Result.save is all-or-nothing -------------------------------------------------------
def test_result_save_is_all_or_nothing(store):
    """A result whose second draft is bad stores none of its drafts."""

    class Two(ck.Result):
        def drafts(self):
            return [draft(1), draft(2, metrics={"runs": [float("nan")]})]

    before = snapshot(store)
    expect_error("store: multi-record writes", "Result.save with a bad second draft", lambda: Two().save(store), r"metrics\.runs\[0\]", StoreError)
    assert snapshot(store) == before
    tally("store: multi-record writes", "first draft not stored", "clear" if len(store) == 0 else "silent")


def test_put_many_is_all_or_nothing(store):
    """put_many validates every draft before writing any file."""
    before = snapshot(store)
    expect_error("store: multi-record writes", "put_many with a bad third draft",
                 lambda: store.put_many([draft(1), draft(2), {"tensors": {"v": torch.tensor([float("nan")])}, "concept": "x"}]), "NaN or Inf", StoreError)
    assert snapshot(store) == before


# -- item 9: damaged stores ----------------------------------------------------------------------
def test_garbage_or_truncated_index_is_a_clear_error(tmp_path):
    """A garbage or truncated SQLite index is a StoreError naming the index, not a traceback."""
    s = ck.open_store(tmp_path / "a")
    for i in range(20):
        s.put(draft(i))
    s.close()
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "index.sqlite").write_bytes(b"this is not a database" * 100)
    expect_error("store: damaged store", "garbage index", lambda: ck.open_store(tmp_path / "g"), "index.sqlite", StoreError)
    data = (tmp_path / "a" / "index.sqlite").read_bytes()
    for f in (tmp_path / "a").glob("index.sqlite-*"):
        f.unlink()
    (tmp_path / "a" / "index.sqlite").write_bytes(data[:100] + b"\x00" * 50 + data[150:4096])

    def use():
        st = ck.open_store(tmp_path / "a")
        st.find()
        len(st)

    expect_error("store: damaged store", "truncated index", use, "index.sqlite", StoreError)


def test_foreign_index_without_our_columns_is_refused(tmp_path):
    """An index whose records table lacks our columns is named as foreign."""
    (tmp_path / "f").mkdir()
    db = sqlite3.connect(tmp_path / "f" / "index.sqlite")
    db.execute("CREATE TABLE records (id TEXT, x TEXT)")
    db.commit()
    db.close()
    expect_error("store: damaged store", "foreign records table", lambda: ck.open_store(tmp_path / "f"), "index.sqlite.*(lacks column|no such column)", StoreError)


def test_extra_column_in_records_still_works(store):
    """An extra column (a newer minor version's) does not stop put/get."""
    store.put(draft(0))
    store.close()
    db = sqlite3.connect(store.root / "index.sqlite")
    db.execute("ALTER TABLE records ADD COLUMN extra TEXT")
    db.commit()
    db.close()
    s = ck.open_store(store.root)
    rec = s.put(draft(1))
    assert s.get(rec.id).id == rec.id and len(s) == 2
    tally("store: damaged store", "extra column in records")


def test_read_only_store_opens_read_only(store, monkeypatch):
    """A store whose folder is not writable opens read-only: reads work, writes are clear errors."""
    rec = store.put(draft(0))
    store.close()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if (mode & os.W_OK and Path(p) == store.root) else real(p, mode, *a, **k))
    ro = ck.open_store(store.root)
    assert ro.readonly and ro.get(rec.id).id == rec.id and torch.equal(ro.tensors(rec.id)["vector"], draft(0).tensors["vector"])
    tally("store: damaged store", "read-only folder: reads work")
    expect_error("store: damaged store", "read-only folder: put", lambda: ro.put(draft(1)), "read-only", StoreError)
    expect_error("store: damaged store", "read-only folder: rm", lambda: ro.rm(rec.id), "read-only", StoreError)
    expect_error("store: damaged store", "read-only folder: gc", lambda: ro.gc(), "read-only", StoreError)


def test_explicit_read_only_open_of_a_wal_store(store):
    """readonly=True reads a WAL store without writing to it."""
    rec = store.put(draft(0))
    before = sorted(p.name for p in store.root.iterdir())
    ro = ck.store.LocalStore(store.root, readonly=True)
    assert [r.id for r in ro.find()] == [rec.id]
    assert sorted(p.name for p in store.root.iterdir()) == before


def test_disk_full_leaves_no_temporary_files(store, monkeypatch):
    """A write that fails (ENOSPC) is a StoreError and leaves no tmp/ file and no record."""
    store.put(draft(0))
    before = snapshot(store)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    expect_error("store: damaged store", "disk full during put", lambda: store.put(draft(1)), "No space left", StoreError)
    monkeypatch.undo()
    assert snapshot(store) == before and list((store.root / "tmp").iterdir()) == []


def test_directories_where_files_should_be(store, tmp_path):
    """A directory in place of a blob, a tmp/ entry or tmp/ itself gives clear errors; gc copes."""
    area = "store: damaged store"
    rec = store.put(draft(0))
    blob = store._blob_path(rec.id)
    blob.unlink()
    blob.mkdir()
    expect_error(area, "directory where a blob should be: tensors", lambda: store.tensors(rec.id), rec.id[:12], StoreError)
    assert store.verify().corrupt == [rec.id]
    tally(area, "directory where a blob should be: verify names it")
    nxt = draft(1)
    target = store._blob_path(content_id(nxt))
    target.parent.mkdir(exist_ok=True)
    target.mkdir()
    expect_error(area, "directory where a new blob goes: put", lambda: store.put(nxt), "could not write", StoreError)
    assert list((store.root / "tmp").iterdir()) == []
    (store.root / "tmp" / "stray-dir").mkdir()
    (store.root / "tmp" / "stray-dir" / "x").write_bytes(b"x")
    store.gc()
    assert list((store.root / "tmp").iterdir()) == []
    tally(area, "directory inside tmp/: gc removes it")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "tmp").write_bytes(b"")
    expect_error(area, "tmp/ is a file", lambda: ck.open_store(tmp_path / "t"), "tmp/ is not a directory", StoreError)
    (tmp_path / "t2").mkdir()
    (tmp_path / "t2" / "index.sqlite").mkdir()
    expect_error(area, "index.sqlite is a directory", lambda: ck.open_store(tmp_path / "t2"), "index.sqlite is not a file", StoreError)


def test_put_of_same_content_repairs_a_missing_blob(store):
    """Putting content whose record lost its blob rewrites the blob instead of returning a broken record."""
    rec = store.put(draft(0))
    store._blob_path(rec.id).unlink()
    again = store.put(draft(0))
    assert again.id == rec.id and torch.equal(store.tensors(rec.id)["vector"], draft(0).tensors["vector"])
    assert store.verify().ok
    tally("store: put/rm race", "put repairs a record whose blob is missing")


# -- item 9: id prefixes are literal ---------------------------------------------------------------
def test_id_prefixes_are_matched_literally(store):
    """`%` and `_` in an id prefix are not SQL wildcards; nothing is deleted by them."""
    rec = store.put(draft(0))
    for prefix in ("%%%%", "____", rec.id[:3] + "%", rec.id[:2] + "__"):
        expect_error("store: id prefixes", f"rm {prefix!r}", lambda p=prefix: store.rm(p), "unknown record", UnknownNameError)
    assert rec.id in store


def test_ambiguous_prefix_is_refused(store):
    """A prefix that matches two records is refused, naming both; nothing is removed."""
    by_prefix: dict[str, RecordDraft] = {}
    for seed in range(5000):
        d = draft(seed)
        key = content_id(d)[:4]
        if key in by_prefix:
            a, b = store.put(by_prefix[key]), store.put(d)
            break
        by_prefix[key] = d
    expect_error("store: id prefixes", "ambiguous 4-character prefix", lambda: store.rm(a.id[:4]), "ambiguous", StoreError)
    assert a.id in store and b.id in store


# -- item 12 (store side): overflowing norms -----------------------------------------------------
def test_overflowing_norms_are_handled_in_float64(store):
    """An all-1e300 vector keeps a finite norm and scores cosine 1 with itself."""
    big = torch.full((16,), 1e300, dtype=torch.float64)
    rec = store.put(RecordDraft(tensors={"vector": big}, concept="huge"))
    assert rec.tensors["vector"].norm == pytest.approx(4e300)
    hits = store.similar(big, k=1)
    assert hits and hits[0].score == pytest.approx(1.0, abs=1e-6)
    tally("interop: overflowing norms", "all-1e300 vector: similar scores 1.0")
    expect_error("store: bad queries", "similar(k=-1)", lambda: store.similar(big, k=-1), "k=-1", StoreError)
    expect_error("store: bad queries", "similar(k=0)", lambda: store.similar(big, k=0), "k=0", StoreError)
