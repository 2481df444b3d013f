"""A quick SAE on the real SmolLM2 (looser bars than the embedded one: 6k training tokens)."""

from __future__ import annotations

import pytest
import torch

from conceptkit import interventions as iv
from conceptkit.sae.builtin import Recipe, load_sae
from conceptkit.sae.evaluate import ce_recovered
from tests.conftest import load_cached

pytestmark = pytest.mark.slow

SITE = "blocks.12.hook_resid_post"
QUICK = Recipe(model="smollm2-135m", default_site=SITE, d_sae=1152, k=32, train_tokens=6144, epochs=6, batch_size=512,
               quick_eval_tokens=2048, sources=("pydoc", "project"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import os

    old = os.environ.get("CONCEPTKIT_CACHE")
    os.environ["CONCEPTKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        model = load_cached("smollm2-135m", "transformers")
        yield model, load_sae("smollm2-135m", store=False, recipe=QUICK, model=model, progress=False)
    finally:
        if old is None:
            os.environ.pop("CONCEPTKIT_CACHE", None)
        else:
            os.environ["CONCEPTKIT_CACHE"] = old


def test_quick_sae_explains_held_out_variance(built) -> None:
    """Stated loose bars for the quick SAE: held-out FVE >= 0.6 and L0 <= k (the embedded SAE aims at 0.8)."""
    model, sae = built
    import json

    from conceptkit.sae.builtin import _folder

    metrics = json.loads((_folder("smollm2-135m", SITE, QUICK) / "provenance.json").read_text())["metrics"]
    assert metrics["quick_fve"] >= 0.6, metrics
    assert metrics["quick_l0"] <= 32


def test_splice_is_exact_on_smollm2(built) -> None:
    """Reconstruction + error spliced in leaves SmolLM2's logits bit-identical."""
    model, sae = built
    texts = ["The capital of France is", "Sparse autoencoders find features."]
    plain = model.run(texts, reduce="all")
    with model.attach_sae(sae):
        spliced = model.run(texts, [iv.Scale(site=f"{SITE}.hook_sae_error", factor=1.0)], reduce="all")
    assert torch.equal(spliced, plain)


def test_reconstruction_beats_zero_ablation(built) -> None:
    """Splicing the pure reconstruction costs far less loss than zero-ablating the site (recovered > 0.5)."""
    model, sae = built
    from conceptkit.sae import corpus as C

    windows = C.token_windows(C.build(("pydoc", "project")), model.tokenizer, "held_out", 128, max_tokens=512)
    out = ce_recovered(model, sae, windows)
    assert out["ce_clean"] < out["ce_sae"] < out["ce_zero"] and out["ce_recovered"] > 0.5, out
