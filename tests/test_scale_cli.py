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
