"""``conceptkit capture`` (one process, and the --ray wiring)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conceptkit.activations import open_activations
from conceptkit.cli import main

SITE = "blocks.1.hook_resid_post"


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    f = tmp_path / "texts.txt"
    f.write_text("the cat sat\n\na dog ran far away\nbirds fly\n")
    return f


def test_capture_one_process_writes_out(texts: Path, tmp_path: Path, ck_tiny_model) -> None:
    """capture writes reopenable shards equal to model.capture of the file's non-empty lines."""
    out = tmp_path / "acts"
    main(["capture", "--model", "tiny-gpt2", "--backend", "transformers", "--site", SITE, "--texts", str(texts),
          "--out", str(out), "--reduce", "all"])
    got = open_activations(out)
    ref = ck_tiny_model("tiny-gpt2", "transformers").capture(["the cat sat", "a dog ran far away", "birds fly"], SITE, "all")
    assert torch.equal(got[SITE], ref[SITE]) and torch.equal(got.token_index, ref.token_index)


def test_capture_ray_flag_is_wired(texts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--ray (bare or with an ADDRESS) and --workers reach ray_capture; only --out is written."""
    import conceptkit.scale as scale
    from conceptkit.activations import Activations

    calls: list[dict] = []

    def fake(model, texts, sites, reduce, **kw):  # noqa: ANN001, ANN003
        calls.append(dict(model=model, n=len(texts), sites=sites, reduce=reduce, **kw))
        return Activations(sites, reduce, tensors={s: torch.zeros(len(texts), 4) for s in sites})

    monkeypatch.setattr(scale, "ray_capture", fake)
    main(["capture", "--model", "m", "--site", SITE, "--texts", str(texts), "--out", str(tmp_path / "a"), "--ray", "--workers", "3"])
    main(["capture", "--model", "m", "--site", SITE, "--texts", str(texts), "--out", str(tmp_path / "b"), "--ray", "auto"])
    assert calls[0]["address"] is None and calls[0]["workers"] == 3 and calls[0]["n"] == 3
    assert calls[1]["address"] == "auto" and calls[1]["stream_to"] == tmp_path / "b"


def test_capture_refuses_nonempty_out(texts: Path, tmp_path: Path) -> None:
    """A non-empty --out is refused before any model is loaded (nothing is overwritten)."""
    out = tmp_path / "acts"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(SystemExit):
        main(["capture", "--model", "no-such-model", "--site", SITE, "--texts", str(texts), "--out", str(out)])
    assert (out / "keep").read_text() == "x"


def test_run_ray_refused_for_methods_without_dataset_scale_work(capsys: pytest.CaptureFixture[str]) -> None:
    """`conceptkit run METHOD --ray` on a method without supports_ray is an error before any
    work: the bogus model name is never looked up."""
    with pytest.raises(SystemExit) as exc:
        main(["run", "tcav", "--model", "no-such-model", "--no-store", "--ray"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "does not run over Ray" in err and "erasure" in err and "no-such-model" not in err


def test_run_ray_enters_use_ray_around_the_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """`conceptkit run erasure --ray ADDRESS --workers N` runs the method inside use_ray(ADDRESS, workers=N)."""
    import contextlib

    import conceptkit as ck
    import conceptkit.models
    import conceptkit.scale as scale

    seen: list[tuple] = []
    inside: list[bool] = []

    @contextlib.contextmanager
    def fake_use_ray(address=None, *, workers=2):  # noqa: ANN001, ANN202
        seen.append((address, workers))
        inside.append(True)
        yield
        inside.append(False)

    def fake_run(self, model, config=None, store=None):  # noqa: ANN001, ANN202
        assert inside and inside[-1], "the method must run inside use_ray"
        return ck.Result()

    erasure_cls = type(ck.method("erasure"))
    monkeypatch.setattr(scale, "use_ray", fake_use_ray)
    monkeypatch.setattr(conceptkit.models, "load_model", lambda name, backend="transformer_lens", **kw: object())
    monkeypatch.setattr(erasure_cls, "run", fake_run)
    main(["run", "erasure", "--model", "m", "--no-store", "-q", "--ray", "ray://head:10001", "--workers", "3"])
    main(["run", "erasure", "--model", "m", "--no-store", "-q", "--ray"])
    assert seen == [("ray://head:10001", 3), (None, 2)] and inside[-1] is False


def test_method_run_inside_use_ray_needs_supports_ray() -> None:
    """From Python, a method without supports_ray refuses to run inside use_ray (it would
    silently run locally); outside the block it runs. No Ray is started for this."""
    import conceptkit as ck
    from conceptkit.scale import active_ray, use_ray

    class Local(ck.Method):
        name = "local-only"
        needs_model = False

        def compute(self, model, config, store):  # noqa: ANN001, ANN202
            return ck.Result()

    assert Local().run().method == "local-only"
    with use_ray(workers=2):
        assert active_ray() is not None
        with pytest.raises(ck.InputError, match="'local-only' does not run over Ray"):
            Local().run()
    assert active_ray() is None


def test_sae_train_ray_flag_enters_use_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`conceptkit sae train --ray --workers 3` builds the SAE inside use_ray (the training rows go through the workers)."""
    import contextlib

    import conceptkit.sae.builtin as builtin
    import conceptkit.scale as scale

    seen: list[tuple] = []

    @contextlib.contextmanager
    def fake_use_ray(address=None, *, workers=2):  # noqa: ANN001, ANN202
        seen.append((address, workers))
        yield

    def fake_load_sae(name, site, *, store=None, recipe=None, **kw):  # noqa: ANN001, ANN202, ANN003
        assert seen, "load_sae must run inside use_ray"
        raise SystemExit(0)  # stop before writing anything

    monkeypatch.setattr(scale, "use_ray", fake_use_ray)
    monkeypatch.setattr(builtin, "load_sae", fake_load_sae)
    with pytest.raises(SystemExit):
        main(["sae", "train", "--site", SITE, "--store", str(tmp_path / "s"), "--ray", "--workers", "3"])
    assert seen == [(None, 3)]
