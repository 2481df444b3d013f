"""The concept-vector store: round trips, crash safety, concurrency, corruption, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

import conceptkit as ck
from conceptkit.errors import StoreError
from conceptkit.store import RecordDraft
from conceptkit.store.bundle import export_bundle, import_bundle
from conceptkit.store.record import MethodInfo

ROOT = Path(__file__).resolve().parents[1]


def draft(seed: int = 0, concept: str = "positive sentiment", width: int = 16, **kw) -> RecordDraft:
    g = torch.Generator().manual_seed(seed)
    return RecordDraft(tensors={"vector": torch.randn(width, generator=g)}, concept=concept, **kw)


def snapshot(store) -> tuple:
    files = sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file() and "index.sqlite" not in p.name)
    return len(store), [r.id for r in store.find()], files


def test_round_trip_is_bit_identical_and_manifest_equal(ck_store):
    """put -> get returns bit-identical tensors (every dtype) and an equal manifest."""
    tensors = {
        "f32": torch.randn(7),
        "f64": torch.randn(3, 4, dtype=torch.float64),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(5).bfloat16(),
        "i64": torch.arange(4),
    }
    rec = ck_store.put(RecordDraft(
        tensors=tensors, concept="c", description="d", kind="vector_set", site="blocks.3.hook_resid_post",
        reduction="last", metrics={"accuracy": 0.9, "p": float("nan")}, tags=["x", "a"],
        method=MethodInfo(name="tcav", plugin="tcav", config={"k": [1, 2]}), model={"name": "m", "backend": "nnsight"},
    ))
    back, loaded = ck_store.load(rec.id)
    assert back == rec
    assert back.metrics["p"] is None and back.tags == ["a", "x"]
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t)
    assert back.tensors["f64"].shape == [3, 4] and back.tensors["f16"].dtype == "float16"


def test_same_content_twice_is_one_record(ck_store):
    """Ids are content hashes: storing the same result again returns the same record."""
    a = ck_store.put(draft(1, tags=["b", "a"]))
    b = ck_store.put(draft(1, tags=["a", "b"]))
    assert a.id == b.id and len(ck_store) == 1
    assert ck_store.put(draft(2)).id != a.id and len(ck_store) == 2


def test_find_filters_and_similar(ck_store):
    """find filters by concept/model/site/method/tag; similar ranks by cosine within a width."""
    base = torch.randn(32)
    for i in range(5):
        ck_store.put(RecordDraft(tensors={"vector": base + 0.1 * i * torch.randn(32)}, concept=f"c{i}",
                                 site="s1" if i % 2 else "s2", tags=["even"] if i % 2 == 0 else [],
                                 model={"name": "m1" if i < 3 else "m2"}, method=MethodInfo(name="tcav" if i else "other")))
    ck_store.put(draft(9, concept="other width", width=8))
    assert {r.concept for r in ck_store.find(site="s1")} == {"c1", "c3"}
    assert {r.concept for r in ck_store.find(tag="even", model="m1")} == {"c0", "c2"}
    assert [r.concept for r in ck_store.find(method="other")] == ["c0"]
    hits = ck_store.similar(base, k=3)
    assert hits[0].record.concept == "c0" and hits[0].score > 0.999 and len(hits) == 3
    assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
    assert {h.record.concept for h in ck_store.similar(base, k=10, site="s2")} == {"c0", "c2", "c4"}
    by_id = ck_store.similar(hits[0].record.id, k=10)
    assert hits[0].record.id not in {h.record.id for h in by_id} and len(by_id) == 4  # itself excluded, width 8 skipped


def test_flipped_byte_is_reported_by_verify_and_get(ck_store):
    """A corrupted blob is named by verify and refused by get, never returned as garbage."""
    rec = ck_store.put(draft(3))
    path = ck_store._blob_path(rec.id)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    report = ck_store.verify()
    assert report.corrupt == [rec.id] and not report.ok
    with pytest.raises(StoreError, match=f"record {rec.id[:12]}.*corrupt"):
        ck_store.tensors(rec.id)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: {"tensors": {"vector": torch.tensor([1.0, float("nan")])}, "concept": "c"}, "NaN or Inf"),
        (lambda: {"tensors": {"vector": torch.tensor([1.0, float("inf")])}, "concept": "c"}, "NaN or Inf"),
        (lambda: {"tensors": {"vector": torch.tensor([True, False])}, "concept": "c"}, "dtype bool"),
        (lambda: {"tensors": {"vector": torch.ones(2, dtype=torch.complex64)}, "concept": "c"}, "dtype complex64"),
        (lambda: {"tensors": {"vector": torch.ones(2)}, "concept": "  "}, "concept name must not be empty"),
        (lambda: {"tensors": {}, "concept": "c"}, "at least one tensor"),
    ],
)
def test_bad_records_are_refused_and_store_unchanged(ck_store, make, needle):
    """NaN/Inf, wrong dtypes, empty concept names: refused with a message naming the problem."""
    ck_store.put(draft(0))
    before = snapshot(ck_store)
    with pytest.raises(StoreError, match=needle):
        ck_store.put(make())
    assert snapshot(ck_store) == before


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_bundle_round_trip(ck_store, tmp_path):
    """export -> import into another store recreates every record with the same ids and bytes."""
    ids = sorted(ck_store.put(draft(i, concept=f"c{i}")).id for i in range(3))
    assert export_bundle(ck_store, tmp_path / "b.tar") == 3
    other = ck.open_store(tmp_path / "other")
    assert sorted(import_bundle(other, tmp_path / "b.tar")) == ids
    for rid in ids:
        assert torch.equal(other.tensors(rid)["vector"], ck_store.tensors(rid)["vector"])


def test_bundles_with_unsafe_members_or_unknown_schema_are_refused(ck_store, tmp_path):
    """`..` paths, absolute paths, symlinks and unknown schema versions: refused, store unchanged."""
    rid = ck_store.put(draft(5)).id
    export_bundle(ck_store, tmp_path / "good.tar")
    target = ck.open_store(tmp_path / "target")
    target.put(draft(6))
    before = snapshot(target)

    link = tarfile.TarInfo("records/x/tensors.safetensors")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    header = json.dumps({"format": "conceptkit-bundle", "version": 1, "records": [rid]}).encode()
    with tarfile.open(tmp_path / "good.tar") as tar:
        manifest = json.loads(tar.extractfile(f"records/{rid}/manifest.json").read())
        blob = tar.extractfile(f"records/{rid}/tensors.safetensors").read()
    manifest["schema_version"] = 99
    cases = {
        "dotdot.tar": ([_file("../evil.txt", b"x"), _file("bundle.json", header)], "contains '..'"),
        "absolute.tar": ([_file("/tmp/evil.txt", b"x"), _file("bundle.json", header)], "absolute path"),
        "link.tar": ([(link, None), _file("bundle.json", header)], "is a link"),
        "schema.tar": ([_file("bundle.json", header), _file(f"records/{rid}/manifest.json", json.dumps(manifest).encode()),
                        _file(f"records/{rid}/tensors.safetensors", blob)], "unknown schema_version 99"),
    }
    for name, (members, needle) in cases.items():
        with pytest.raises(StoreError, match=needle):
            import_bundle(target, _tar(tmp_path / name, members))
        assert snapshot(target) == before, name
    assert not (tmp_path / "evil.txt").exists()


def test_rm_and_gc_of_orphans(ck_store):
    """rm deletes index row and blob; gc removes blobs and temp files of interrupted writes."""
    rec = ck_store.put(draft(7))
    ck_store.rm(rec.id[:10])
    assert rec.id not in ck_store and not ck_store._blob_path(rec.id).exists()
    orphan = ck_store._blob_path("ab" + "0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"half")
    (ck_store.root / "tmp" / "x.tmp").write_bytes(b"partial")
    report = ck_store.verify()
    assert report.ok and len(report.orphans) == 1 and len(report.temporary) == 1
    assert len(ck_store.gc()) == 2 and not ck_store.verify().orphans


def test_record_of_uninstalled_plugin_loads_with_a_warning(ck_store):
    """Inspecting a record whose plugin is not installed warns instead of failing."""
    rec = ck_store.put(draft(8, method=MethodInfo(name="ghost", plugin="ghost-plugin")))
    with pytest.warns(RuntimeWarning, match="ghost-plugin"):
        assert ck_store.get(rec.id).method.name == "ghost"


WRITER = textwrap.dedent(
    """
    import sys, torch
    from conceptkit.store import open_store, RecordDraft
    store = open_store(sys.argv[1])
    offset, count = int(sys.argv[2]), int(sys.argv[3])
    for i in range(offset, offset + count):
        rec = store.put(RecordDraft(tensors={"v": torch.full((64,), float(i))}, concept=f"c{i}"))
        print(rec.id, flush=True)
    """
)


def test_sigkill_during_writes_loses_no_acknowledged_record(tmp_path):
    """Kill -9 a writer mid-stream: acknowledged records survive, verify is clean, writes go on."""
    path = tmp_path / "store"
    ck.open_store(path).close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "0", "100000"], stdout=subprocess.PIPE, text=True)
    acked = []
    deadline = time.time() + 60
    while len(acked) < 150 and time.time() < deadline:
        acked.append(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
    store = ck.open_store(path)
    assert len(acked) >= 150
    for rid in acked:
        assert store.tensors(rid)["v"].shape == (64,)
    report = store.verify()
    assert report.ok, report.lines()
    assert len(report.orphans) + len(report.temporary) <= 1  # at most the write in flight
    assert store.put(draft(123)).id in store


def test_two_processes_write_500_records_each(tmp_path):
    """Concurrent writers: 1,000 records, no error, no loss."""
    path = tmp_path / "store"
    ck.open_store(path).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(o), "500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for o in (0, 500)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    store = ck.open_store(path)
    assert len(store) == 1000 and store.verify().ok
    assert sum(len(o[0].split()) for o in outs) == 1000


def test_gguf_control_vector_export_is_readable(ck_store, tmp_path):
    """A per-layer vector set exports to the llama.cpp/repeng GGUF layout and reads back."""
    from conceptkit.store.interop import export_control_vector, read_control_vector

    vectors = {f"blocks.{l}.hook_resid_post": torch.randn(576) for l in (3, 10, 11)}
    rec = ck_store.put(RecordDraft(tensors=vectors, concept="honesty", kind="vector_set", model={"name": "smollm2-135m", "architecture": "LlamaForCausalLM"}))
    path = export_control_vector(ck_store, rec.id, tmp_path / "honesty.gguf")
    meta, directions = read_control_vector(path)
    assert meta == {"controlvector.model_hint": "llama", "controlvector.layer_count": 3}
    assert sorted(directions) == [3, 10, 11]
    assert torch.equal(directions[10], vectors["blocks.10.hook_resid_post"])


def test_saelens_folder_imports_as_a_dictionary_record(ck_store, tmp_path):
    """SAELens cfg.json + sae_weights.safetensors round-trips into a `sae` record."""
    from conceptkit.store.interop import import_saelens, read_saelens, write_saelens

    sae = {"W_enc": torch.randn(16, 40), "b_enc": torch.randn(40), "W_dec": torch.randn(40, 16), "b_dec": torch.randn(16)}
    write_saelens(tmp_path / "sae", sae, {"hook_name": "blocks.3.hook_resid_post", "model_name": "tiny-llama"})
    cfg, loaded = read_saelens(tmp_path / "sae")
    assert cfg["d_sae"] == 40 and all(torch.equal(loaded[k], sae[k]) for k in sae)
    rec = import_saelens(ck_store, tmp_path / "sae")
    assert rec.kind == "sae" and rec.site == "blocks.3.hook_resid_post" and rec.model["name"] == "tiny-llama"
    assert torch.equal(ck_store.tensors(rec.id)["W_dec"], sae["W_dec"])
    bad = dict(sae, W_dec=torch.randn(16, 40))
    write_saelens(tmp_path / "bad", bad, {})
    with pytest.raises(StoreError, match="W_dec has shape"):
        read_saelens(tmp_path / "bad")


def test_store_cli_commands(tmp_path, capsys):
    """`conceptkit store ls/show/similar/verify/export/import/rm/gc` work on a store."""
    from conceptkit.cli import main

    store = ck.open_store(tmp_path / "s")
    ids = [store.put(draft(i, concept=f"c{i}")).id for i in range(3)]

    def cli(*args):
        with pytest.raises(SystemExit) as exc:
            main(["store", *args, "--store", str(tmp_path / "s")])
            raise SystemExit(0)
        return exc.value.code or 0, capsys.readouterr().out

    assert {r["id"] for r in json.loads(cli("ls", "--json")[1])} == set(ids)
    assert json.loads(cli("show", ids[0][:8])[1])["id"] == ids[0]
    assert cli("similar", ids[0])[0] == 0
    assert cli("verify")[1].startswith("checked 3 record(s)")
    assert cli("export", str(tmp_path / "b.tar"))[0] == 0
    assert cli("rm", ids[0])[0] == 0 and len(store) == 2
    assert "imported 3" in cli("import", str(tmp_path / "b.tar"))[1] and len(store) == 3
    assert cli("gc")[0] == 0


def test_default_location_and_overrides(tmp_path, monkeypatch):
    """The default store lives in the platform's user data folder unless CONCEPTKIT_STORE says otherwise."""
    import platformdirs

    from conceptkit.store import default_path

    monkeypatch.delenv("CONCEPTKIT_STORE", raising=False)
    assert default_path() == Path(platformdirs.user_data_dir("conceptkit")) / "store"
    monkeypatch.setenv("CONCEPTKIT_STORE", str(tmp_path / "env-store"))
    assert ck.open_store().root == tmp_path / "env-store"
    assert ck.open_store(tmp_path / "explicit").root == tmp_path / "explicit"
