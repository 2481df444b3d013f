"""Embedded SAEs trained once into the cache, stored as records; corpus determinism; the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import conceptkit as ck
from conceptkit.sae import corpus as C
from conceptkit.sae.builtin import Recipe, _folder, load_sae

QUICK = Recipe(model="tiny-llama", default_site="blocks.1.hook_resid_post", d_sae=64, k=4, train_tokens=2048, epochs=2,
               batch_size=256, quick_eval_tokens=512, context=64, sources=("project",))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_corpus_is_deterministic_and_split_stably() -> None:
    """Building twice gives the same fingerprint and documents; the held-out split is by name hash."""
    a, b = C.build(("project",), cache=False), C._build.__wrapped__(("project",))
    assert a.fingerprint == b.fingerprint and [d.text for d in a.documents] == [d.text for d in b.documents]
    assert {d.name for d in a.split("held_out")}.isdisjoint({d.name for d in a.split("train")})
    st = C.stats(a)
    assert st["documents"] == len(a.documents) and st["sources"]["project"]["words"] > 1000


def test_prose_filter_keeps_prose_and_drops_code() -> None:
    """Paragraphs of prose pass the filter; code, tables and short lines do not."""
    text = ("This paragraph explains, in plain words, how the store keeps vectors and why ids are hashes.\n\n"
            ">>> import conceptkit as ck\n>>> ck.open_store()\n\n| a | b |\n|---|---|\n\nShort line.\n\n"
            "def f(x):\n    return {x: [x]}\n")
    assert list(C._paragraphs(text)) == [text.split("\n\n")[0]]


def test_token_windows_are_seeded() -> None:
    """Windows are full-length, seeded, and differ between seeds."""
    model = ck.load_model("tiny-llama", backend="transformers")
    corpus = C.build(("project",), cache=False)
    a = C.token_windows(corpus, model.tokenizer, "train", 32, max_tokens=320, seed=0)
    b = C.token_windows(corpus, model.tokenizer, "train", 32, max_tokens=320, seed=0)
    c = C.token_windows(corpus, model.tokenizer, "train", 32, max_tokens=320, seed=1)
    assert a["input_ids"].shape == (10, 32) and torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["input_ids"], c["input_ids"])


def test_load_sae_builds_once_then_reads_the_cache(cache, tmp_path) -> None:
    """The first load trains and stores a record with provenance; the second reads the cache, same SAE and id."""
    store = ck.open_store(tmp_path / "store")
    first = load_sae("tiny-llama", store=store, recipe=QUICK, progress=False)
    folder = _folder("tiny-llama", QUICK.default_site, QUICK)
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["corpus"]["fingerprint"] == C.build(("project",), cache=False).fingerprint
    assert C.cached(prov["corpus"]["fingerprint"][:12]).fingerprint == prov["corpus"]["fingerprint"]
    assert first.metadata["corpus_fingerprint"] == prov["corpus"]["fingerprint"]
    record = store.get(first.record_id)
    assert record.kind == "sae" and record.examples_fingerprint == prov["corpus"]["fingerprint"]
    assert record.method.config["recipe"]["d_sae"] == 64 and 0 <= record.metrics["quick_fve"] <= 1
    mtime = (folder / "sae_weights.safetensors").stat().st_mtime_ns
    second = load_sae("tiny-llama", store=store, recipe=QUICK, progress=False)
    assert (folder / "sae_weights.safetensors").stat().st_mtime_ns == mtime
    assert second.fingerprint() == first.fingerprint() and second.record_id == first.record_id
    from conceptkit.sae.records import from_record

    assert from_record(store, first.record_id).fingerprint() == first.fingerprint()


def test_sae_records_travel_in_bundles_and_find_latents(cache, tmp_path) -> None:
    """An SAE record survives export/import; similar_latents finds the latent planted along a stored vector."""
    from conceptkit.sae.records import from_record, similar_latents, to_draft
    from tests.test_sae_attach import tiny_sae

    store = ck.open_store(tmp_path / "a")
    sae = tiny_sae("jumprelu")
    rec = store.put(to_draft(sae))
    cav = store.put(ck.RecordDraft(tensors={"vector": sae.W_dec[17] * 3 + 0.01}, concept="planted"))
    assert similar_latents(rec.id, cav.id, k=3, store=store)[0].latent == 17
    from conceptkit.store.bundle import export_bundle, import_bundle

    bundle = tmp_path / "b.tar"
    export_bundle(store, bundle, [rec.id])
    other = ck.open_store(tmp_path / "c")
    import_bundle(other, bundle)
    assert from_record(other, rec.id).fingerprint() == sae.fingerprint()


def test_cli_import_eval_similar(cache, tmp_path) -> None:
    """conceptkit sae import stores a folder; sae similar lists latents; errors are one line."""
    from conceptkit.cli import cli
    from tests.test_sae_attach import tiny_sae

    sae = tiny_sae("topk")
    folder = sae.save(str(tmp_path / "f"))
    store = tmp_path / "s"
    runner = CliRunner()
    out = runner.invoke(cli, ["sae", "import", str(folder), "--store", str(store)])
    assert out.exit_code == 0, out.output
    rid = out.output.strip().splitlines()[-1]
    cav = ck.open_store(store).put(ck.RecordDraft(tensors={"vector": sae.W_dec[5]}, concept="c"))
    out = runner.invoke(cli, ["sae", "similar", rid, cav.id, "--k", "2", "--store", str(store)])
    assert out.exit_code == 0 and " 5 " in out.output, out.output


def test_cli_eval_and_features_on_a_tiny_model(cache, tmp_path) -> None:
    """sae eval reports FVE/L0/dead/CE on held-out text; sae features highlights each context's top token."""
    from conceptkit.cli import cli
    from conceptkit.sae import SAE

    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 64, generator=g)
    sae = SAE(W.T.contiguous() / 8, torch.zeros(64), W / W.norm(dim=1, keepdim=True), torch.zeros(64),
              architecture="topk", k=6, site="blocks.1.hook_resid_post", model_name="tiny-llama")
    folder = sae.save(str(tmp_path / "sae"))
    runner = CliRunner()
    out = runner.invoke(cli, ["sae", "eval", str(folder), "--sources", "project", "--tokens", "1500", "--ce-tokens", "256", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output[out.output.index("{"):])
    assert res["l0"] <= 6 and res["n_tokens"] >= 1000 and res["ce_clean"] > 0 and 0 <= res["dead_fraction"] <= 1
    html_path = tmp_path / "f.html"
    out = runner.invoke(cli, ["sae", "features", str(folder), "--latents", "0,1", "--sources", "project", "--tokens", "1024",
                              "--top", "3", "--html", str(html_path)])
    assert out.exit_code == 0, out.output
    page = html_path.read_text()
    assert "latent 0" in page and "latent 1" in page and ("<mark>" in page or "never fires" in page)


def test_concurrent_corpus_builds_do_not_clobber_each_other(cache, monkeypatch) -> None:
    """Several processes (xdist workers, Ray workers) building the cached corpus at once each write
    their own temporary file and rename it into place: every reader gets a whole corpus and no
    temporary file is left behind."""
    import threading
    import time

    real = C._build.__wrapped__(("project",))

    def slow_build(sources):
        time.sleep(0.2)  # all writers are inside the build together
        return real

    monkeypatch.setattr(C, "_build", slow_build)
    results, errors = [], []

    def worker() -> None:
        try:
            results.append(C.build(("project",)))
        except Exception as exc:  # pragma: no cover - the failure this test guards against
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6 and all(r.fingerprint == real.fingerprint for r in results)
    files = list((cache / "sae").iterdir())
    assert [f.suffix for f in files] == [".json"]
    assert C.build(("project",)).fingerprint == real.fingerprint  # read back from the cache file
