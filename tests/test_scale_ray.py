"""The Ray executor on a local two-worker cluster with a tiny model (conceptkit.scale).

One module-scoped pool of two workers serves every test (Ray start-up is the slow part); the
method-facing calls (dataset_moments, dataset_capture, the erasure fit, SAE training rows) use
it through ``use_ray(pool=...)``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from conceptkit.activations import open_activations  # noqa: E402
from conceptkit.errors import InputError  # noqa: E402
from conceptkit.scale import (  # noqa: E402
    Moments,
    RayCapture,
    ShardFailedError,
    dataset_capture,
    dataset_moments,
    shard_plan,
    shard_ranges,
    use_ray,
)
from conceptkit.scale.ray_executor import _CHAOS_ENV  # noqa: E402

MODEL, BACKEND = "tiny-gpt2", "transformers"
SITE, SITE2 = "blocks.1.hook_resid_post", "blocks.0.hook_resid_mid"
TEXTS = [f"example {i} says {'word ' * (i % 5)}and ends" for i in range(22)]


@pytest.fixture(scope="module")
def chaos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("chaos")
    os.environ[_CHAOS_ENV] = str(d)
    yield d
    os.environ.pop(_CHAOS_ENV, None)


@pytest.fixture(scope="module")
def pool(chaos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RayCapture:
    worker_store = tmp_path_factory.mktemp("ws") / "worker-store"
    os.environ["CONCEPTKIT_STORE"] = str(worker_store)  # workers inherit it; they must never create it
    # 4 logical CPUs: the tiny pool holds 2, the SmolLM2 test starts 2 more
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    p = RayCapture(MODEL, BACKEND, workers=2)
    p.worker_store = worker_store  # type: ignore[attr-defined]
    yield p
    p.close()
    ray.shutdown()


@pytest.fixture(scope="module")
def local_model():
    import conceptkit as ck

    return ck.load_model(MODEL, backend=BACKEND)


def test_shard_ranges_align_to_batches() -> None:
    """Shards are contiguous, cover every example once and start on batch boundaries."""
    shards = shard_ranges(22, 4, 4)

    assert shards[0].start == 0 and shards[-1].stop == 22
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
    assert all(s.start % 4 == 0 for s in shards)
    assert len(shard_ranges(3, 8, 4)) == 1
    plan = shard_plan(22, 7, 4)  # shard_size rounds up to whole batches: 8, 8, 6
    assert [(s.start, s.stop) for s in plan] == [(0, 8), (8, 16), (16, 22)]


def test_moments_merge_equals_one_pass() -> None:
    """Moments merged from disjoint parts equal one pass over all rows (≤1e-12 relative)."""
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(50, 6, generator=g), torch.randn(50, 2, generator=g)
    whole = Moments.of(x, z)
    merged = Moments.merge_all([Moments.of(x[:7], z[:7]), Moments.of(x[7:30], z[7:30]), Moments.of(x[30:], z[30:])])
    assert merged.n == 50
    for a, b in [(whole.sxx, merged.sxx), (whole.sxz, merged.sxz), (whole.mean_x, merged.mean_x)]:
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert torch.allclose(merged.second_moment, (x.double().T @ x.double()) / 50, atol=1e-12)


def test_capture_equals_single_process_bitwise(pool: RayCapture, local_model) -> None:
    """Sharded capture (last and all) equals model.capture bit for bit; token_index is global."""
    for reduce in ("last", "all"):
        ref = local_model.capture(TEXTS, [SITE, SITE2], reduce, batch_size=4)
        got = pool.capture(TEXTS, [SITE, SITE2], reduce, batch_size=4, shards=4)
        for s in (SITE, SITE2):
            assert torch.equal(got[s], ref[s]), (reduce, s)
        if reduce == "all":
            assert torch.equal(got.token_index, ref.token_index)
            assert int(got.token_index[:, 0].max()) == len(TEXTS) - 1


def test_streamed_capture_written_by_driver(pool: RayCapture, local_model, tmp_path: Path) -> None:
    """stream_to: the driver writes shard files; reopened they equal the single-process capture."""
    ref = local_model.capture(TEXTS, SITE, "mean", batch_size=4)
    out = tmp_path / "acts"
    pool.capture(TEXTS, SITE, "mean", batch_size=4, shards=3, stream_to=out)
    assert torch.equal(open_activations(out)[SITE], ref[SITE])


def test_workers_never_open_the_store(pool: RayCapture) -> None:
    """Only the driver writes: a worker refuses to open the store and never created one."""
    msg = ray.get(pool._actors[0].try_open_store.remote())
    assert "only the driver writes" in msg
    assert not pool.worker_store.exists()  # type: ignore[attr-defined]


def test_moments_match_leace_fitter(pool: RayCapture, local_model) -> None:
    """Sharded moments merged on the driver equal LeaceFitter's single-process statistics (≤1e-6)."""
    leace = pytest.importorskip("conceptkit_erasure.leace")
    labels = torch.tensor([i % 2 for i in range(len(TEXTS))])
    m = pool.moments(TEXTS, SITE, "all", labels=labels, batch_size=4, shards=4)
    acts = local_model.capture(TEXTS, SITE, "all", batch_size=4)
    z = labels[acts.token_index[:, 0]]
    ref = leace.LeaceFitter.fit(acts[SITE], z)
    fitter = m.into(leace.LeaceFitter(ref.x_dim, ref.z_dim))
    assert fitter.n == ref.n
    assert torch.allclose(fitter.sigma_xx, ref.sigma_xx, rtol=1e-6, atol=1e-9)
    assert torch.allclose(fitter.sigma_xz, ref.sigma_xz, rtol=1e-6, atol=1e-9)


def test_killed_worker_is_retried_exactly(pool: RayCapture, local_model, chaos_dir: Path) -> None:
    """A worker SIGKILLed mid-shard is replaced, the shard rerun, and the result is still exact."""
    (chaos_dir / "shard-1-a").touch()
    before = pool.restarts
    got = pool.capture(TEXTS, SITE, "last", batch_size=4, shards=4)
    assert pool.restarts == before + 1 and not list(chaos_dir.iterdir())
    assert torch.equal(got[SITE], local_model.capture(TEXTS, SITE, "last", batch_size=4)[SITE])


def test_shard_failing_twice_stops_and_writes_nothing(pool: RayCapture, tmp_path: Path, chaos_dir: Path) -> None:
    """A shard killed on both attempts raises ShardFailedError naming it; no output folder exists."""
    (chaos_dir / "shard-2-a").touch()
    (chaos_dir / "shard-2-b").touch()
    out = tmp_path / "acts"
    with pytest.raises(ShardFailedError, match=r"shard 2 \(examples 16\.\.19\) failed 2 times"):
        pool.capture(TEXTS, SITE, "last", batch_size=4, shards=4, stream_to=out)
    assert not out.exists() and not list(tmp_path.glob(".acts.partial-*"))


# -- the method-facing API: dataset_moments / dataset_capture ------------------------------------
def _token_labels(model, texts: list[str]) -> list[list[int]]:
    """One class id per token: 1 at every third position (deterministic, both classes present)."""
    idx = model.capture(texts, SITE, "all", batch_size=4).token_index
    return [[int(p % 3 == 0) for p in idx[idx[:, 0] == i, 1].tolist()] for i in range(len(texts))]


def _edit(model) -> object:
    import conceptkit as ck

    g = torch.Generator().manual_seed(0)
    d = model.d_model
    return ck.interventions.Affine(site=SITE2, weight=torch.eye(d) + 0.1 * torch.randn(d, d, generator=g), bias=torch.randn(d, generator=g))


def test_dataset_moments_over_ray_equal_local_and_leace(pool: RayCapture, local_model) -> None:
    """dataset_moments inside use_ray equals the local pass bit for bit (fixed shards); with
    per-token labels and an intervention upstream, m.into(LeaceFitter) equals the one-pass fit ≤1e-6."""
    leace = pytest.importorskip("conceptkit_erasure.leace")
    labels, edit = _token_labels(local_model, TEXTS), _edit(local_model)
    local = dataset_moments(local_model, TEXTS, SITE, labels=labels, interventions=[edit], batch_size=4, shard_size=8)
    with use_ray(pool=pool):
        remote = dataset_moments(local_model, TEXTS, SITE, labels=labels, interventions=[edit], batch_size=4, shard_size=8)
    for name in ("mean_x", "sxx", "mean_z", "sxz"):
        assert torch.equal(getattr(local, name), getattr(remote, name)), name
    acts = local_model.capture(TEXTS, SITE, "all", batch_size=4, interventions=[edit])
    z = torch.tensor([c for row in labels for c in row])
    ref = leace.LeaceFitter.fit(acts[SITE], z)
    fitter = remote.into(leace.LeaceFitter(ref.x_dim, ref.z_dim))
    assert fitter.n == ref.n == acts[SITE].shape[0]
    assert torch.allclose(fitter.sigma_xx, ref.sigma_xx, rtol=1e-6, atol=1e-9)
    assert torch.allclose(fitter.sigma_xz, ref.sigma_xz, rtol=1e-6, atol=1e-9)
    x = acts[SITE].double()
    assert torch.allclose(fitter.eraser(x), ref.eraser(x), rtol=1e-6, atol=1e-6)
    x64 = x.reshape(-1, x.shape[-1])
    assert torch.allclose(remote.second_moment, x64.T @ x64 / x64.shape[0], rtol=1e-9, atol=1e-9)


def test_dataset_capture_and_sae_rows_over_ray_bitwise(pool: RayCapture, local_model) -> None:
    """dataset_capture of token ids over Ray equals model.capture; the SAE training rows
    (chunk_rows, short last chunk given first) equal the local rows bit for bit."""
    from conceptkit.sae.training_data import chunk_rows

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, local_model.tokenizer.vocab_size, (20, 12), generator=g)
    windows = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ref = local_model.capture(windows, [SITE, SITE2], "all", batch_size=4)
    with use_ray(pool=pool):
        got = dataset_capture(local_model, windows, [SITE, SITE2], "all", batch_size=4)
        remote_rows = {i: r for i, r, _ in chunk_rows(local_model, windows, SITE, [2, 0, 1], chunk=8, batch_size=4)}
    assert torch.equal(got[SITE], ref[SITE]) and torch.equal(got[SITE2], ref[SITE2])
    assert torch.equal(got.token_index, ref.token_index)
    local_rows = {i: r for i, r, _ in chunk_rows(local_model, windows, SITE, [2, 0, 1], chunk=8, batch_size=4)}
    assert sorted(remote_rows) == [0, 1, 2]
    for i in local_rows:
        assert torch.equal(remote_rows[i], local_rows[i]), i
    assert sum(r.shape[0] for r in local_rows.values()) == 20 * 11  # position 0 skipped, no sinks in a random model


def test_erasure_fit_over_ray_equals_local(pool: RayCapture, local_model, tmp_path: Path) -> None:
    """The erasure method inside use_ray fits its LEACE erasers from Ray moments: equal to the
    local streamed fit bit for bit and to a one-pass LeaceFitter ≤1e-6; only the driver stores."""
    import conceptkit as ck

    scrub = pytest.importorskip("conceptkit_erasure.scrub")
    from conceptkit_erasure.corpus import digit_corpus, token_labels
    from conceptkit_erasure.leace import LeaceFitter

    texts = digit_corpus(20, seed=1)
    labels = token_labels(local_model, texts, "digit")
    sites = scrub.default_sites(local_model)
    local = scrub.fit_scrubber(local_model, texts, labels, sites, batch_size=4, one_pass_max_texts=0)
    store = ck.open_store(tmp_path / "store")
    cfg = {"texts": texts, "labels": labels, "sites": sites, "batch_size": 4, "random_baseline": False, "report_sites": 2}
    erasure = ck.method("erasure")
    with use_ray(pool=pool):
        remote = erasure.fit(local_model, cfg)  # every text: comparable with `local`
        result = erasure.run(local_model, cfg, store=store)  # train split; the record is written here
    for site in sites:
        for name in ("proj_left", "proj_right", "bias"):
            assert torch.equal(getattr(remote.erasers[site], name), getattr(local.erasers[site], name)), (site, name)
    z = torch.tensor([c for row in labels for c in row])
    first = local_model.capture(texts, sites[0], "all", batch_size=4)[sites[0]]
    ref = LeaceFitter.fit(first, z).eraser
    assert torch.allclose(local.erasers[sites[0]].P, ref.P, atol=1e-6)
    assert len(result.record_ids) == 1 and store.get(result.record_ids[0]) is not None
    assert not pool.worker_store.exists()  # type: ignore[attr-defined]


def test_models_the_workers_cannot_load_are_refused(pool: RayCapture) -> None:
    """A model wrapped from memory is refused by name; one edited after loading is refused by
    the workers' weights-hash check; both before any shard runs."""
    import conceptkit as ck
    import transformers

    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64))
    wrapped = ck.wrap(hf, tokenizer=ck.load_model(MODEL, backend=BACKEND).tokenizer)
    with pytest.raises(InputError, match="wrapped from an in-memory object"):
        dataset_moments(wrapped, TEXTS, SITE, ray=True)
    edited = ck.load_model(MODEL, backend=BACKEND)  # a fresh copy: the shared one stays intact
    with torch.no_grad():
        next(edited.hf.parameters()).add_(1.0)
    with use_ray(pool=pool), pytest.raises(InputError, match="can only load a model by name"):
        dataset_moments(edited, TEXTS, SITE)
    read_first = ck.load_model(MODEL, backend=BACKEND)
    assert read_first.ref.weights_hash  # cached before the edit: edits make it stale, so it is recomputed
    delta = torch.full_like(read_first.weights.W_out(0), 1e-2)
    with read_first.apply_edit(ck.WeightEdit.dense(delta, role="out", layer=0)), use_ray(pool=pool), \
            pytest.raises(InputError, match="can only load a model by name"):
        dataset_moments(read_first, TEXTS, SITE)


def test_dataset_moments_killed_worker_retried_exactly(pool: RayCapture, local_model, chaos_dir: Path) -> None:
    """A worker SIGKILLed during a dataset_moments shard is replaced and the moments are exact."""
    ref = dataset_moments(local_model, TEXTS, SITE, batch_size=4, shard_size=8)
    (chaos_dir / "shard-1-m").touch()
    before = pool.restarts
    with use_ray(pool=pool):
        got = dataset_moments(local_model, TEXTS, SITE, batch_size=4, shard_size=8)
    assert pool.restarts == before + 1 and not list(chaos_dir.iterdir())
    assert torch.equal(got.sxx, ref.sxx) and torch.equal(got.mean_x, ref.mean_x) and got.n == ref.n


def test_method_shard_failing_twice_stores_nothing(pool: RayCapture, local_model, chaos_dir: Path, tmp_path: Path) -> None:
    """A moments shard killed on both attempts stops the erasure run with ShardFailedError
    naming the shard; the store gets no record."""
    import conceptkit as ck
    from conceptkit_erasure.corpus import digit_corpus, token_labels

    texts = digit_corpus(20, seed=1)
    cfg = {"texts": texts, "labels": token_labels(local_model, texts, "digit"), "batch_size": 4, "random_baseline": False}
    (chaos_dir / "shard-0-a").touch()
    (chaos_dir / "shard-0-b").touch()
    store = ck.open_store(tmp_path / "store")
    with use_ray(pool=pool), pytest.raises(ShardFailedError, match=r"shard 0 \(examples 0\.\.12\) failed 2 times"):
        ck.method("erasure").run(local_model, cfg, store=store)
    assert store.find() == [] and not list(chaos_dir.iterdir())


@pytest.mark.slow
def test_smollm2_dataset_moments_over_ray_equal_local() -> None:
    """SmolLM2-135M, 32 texts, two workers: Ray moments (per-token labels) equal the local pass
    bit for bit, and Ray last-token captures equal model.capture bit for bit."""
    import conceptkit as ck
    from conceptkit_erasure.corpus import digit_corpus, token_labels

    model = ck.load_model("smollm2-135m", backend="transformers")
    texts, site = digit_corpus(32, seed=3), "blocks.12.hook_resid_post"
    labels = token_labels(model, texts, "digit")
    local = dataset_moments(model, texts, site, labels=labels, batch_size=8, shard_size=8)
    ref = model.capture(texts, site, "last", batch_size=8)
    with use_ray(workers=2):
        remote = dataset_moments(model, texts, site, labels=labels, batch_size=8, shard_size=8)
        got = dataset_capture(model, texts, site, "last", batch_size=8)
    assert remote.n == local.n == sum(map(len, labels))
    assert torch.equal(remote.sxx, local.sxx) and torch.equal(remote.sxz, local.sxz)
    assert torch.equal(got[site], ref[site])
