"""The Ray executor on a local two-worker cluster with a tiny model (conceptkit.scale)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from conceptkit.activations import open_activations  # noqa: E402
from conceptkit.scale import Moments, RayCapture, ShardFailedError, shard_ranges  # noqa: E402
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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
