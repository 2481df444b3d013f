"""UCE on a tiny random UNet: limits of the closed form, an independent solve, reversibility."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit.errors import InputError
from conceptkit_erasure.uce import uce_edit, uce_solve


@pytest.fixture(scope="module")
def unet():
    return ck.load_model("tiny-unet", backend="diffusers")


def embeddings(n: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_small_lambda_maps_concept_to_guide_and_keeps_preserved(unet):
    """λ -> 0 with fewer concept embeddings than the width: erased tokens' K/V equal the guide's,
    preserved concepts' outputs are unchanged (<= 1e-4 relative)."""
    edit, guide, preserve = embeddings(3, seed=1), embeddings(3, seed=2), embeddings(5, seed=3)
    old = {s: m.weight.detach().clone() for s, m in unet.cross_attention_projections().items()}
    handle, new = uce_edit(unet, edit, guide, preserve, lamb=1e-6)
    try:
        for site, module in unet.cross_attention_projections().items():
            W = module.weight.detach()
            assert rel(edit @ W.T, guide @ old[site].T) <= 1e-4, site
            assert rel(preserve @ W.T, preserve @ old[site].T) <= 1e-4, site
    finally:
        handle.remove()
    for site, module in unet.cross_attention_projections().items():
        assert torch.equal(module.weight, old[site])  # undo restores the exact bits


def test_larger_lambda_equals_an_independent_least_squares_solve():
    """For λ = 0.5 the closed form equals a direct least-squares solve of the same objective."""
    g = torch.Generator().manual_seed(0)
    W_old = torch.randn(24, 32, generator=g, dtype=torch.float64)
    C, Pk = torch.randn(4, 32, generator=g, dtype=torch.float64), torch.randn(6, 32, generator=g, dtype=torch.float64)
    V = torch.randn(4, 24, generator=g, dtype=torch.float64)
    lamb, se, sp = 0.5, 1.0, 0.7
    W = uce_solve(W_old, C, V, Pk, lamb=lamb, erase_scale=se, preserve_scale=sp)
    # Stack the objective as one linear least-squares problem in W (row by row):
    # rows: sqrt(se) c_e -> sqrt(se) v_e ; sqrt(sp) c_p -> sqrt(sp) W_old c_p ; sqrt(λ) e_j -> sqrt(λ) W_old[:, j]
    A = torch.cat([se**0.5 * C, sp**0.5 * Pk, lamb**0.5 * torch.eye(32, dtype=torch.float64)])
    B = torch.cat([se**0.5 * V, sp**0.5 * Pk @ W_old.T, lamb**0.5 * W_old.T])
    W_ls = torch.linalg.lstsq(A, B).solution.T
    assert torch.allclose(W, W_ls, atol=1e-10)
    # and the gradient of the objective vanishes there
    grad = 2 * se * (W @ C.T - V.T) @ C + 2 * sp * (W - W_old) @ Pk.T @ Pk + 2 * lamb * (W - W_old)
    assert grad.abs().max() < 1e-10


def test_empty_edit_is_identity():
    """No edit and no preserve concepts leave the weights unchanged."""
    W_old = torch.randn(8, 16, dtype=torch.float64)
    assert torch.allclose(uce_solve(W_old, torch.zeros(0, 16), torch.zeros(0, 8)), W_old)


def test_edit_changes_cross_attention_for_the_erased_prompt_only(unet):
    """The UNet output for the erased embedding moves to the guide's; a preserved one stays put."""
    edit, guide, preserve = embeddings(1, seed=4), embeddings(1, seed=5), embeddings(4, seed=6)
    torch.manual_seed(0)
    sample = torch.randn(1, 4, 8, 8)

    def out(e):
        with torch.no_grad():
            return unet.unet(sample, 10, encoder_hidden_states=e[None]).sample

    base_edit, base_guide, base_keep = out(edit), out(guide), out(preserve)
    with uce_edit(unet, edit, guide, preserve, lamb=1e-6)[0]:
        assert rel(out(edit), base_guide) < 1e-3
        assert rel(out(preserve), base_keep) < 1e-3
    assert torch.equal(out(edit), base_edit)


def test_bad_input(unet):
    """Mismatched shapes, wrong widths and NaNs are refused before any weight changes."""
    before = {s: m.weight.detach().clone() for s, m in unet.cross_attention_projections().items()}
    with pytest.raises(InputError, match="same shape"):
        uce_edit(unet, embeddings(2), embeddings(3))
    with pytest.raises(InputError, match="width 32, the edit embeddings have width 16"):
        uce_edit(unet, embeddings(2, d=16), embeddings(2, d=16))
    with pytest.raises(InputError, match="NaN"):
        uce_edit(unet, torch.full((1, 32), float("nan")), embeddings(1))
    assert all(torch.equal(m.weight, before[s]) for s, m in unet.cross_attention_projections().items())


def test_edit_is_storable_and_reapplied_from_the_store(unet, ck_store):
    """UCE edits are stored as a weight-edit record under the registered method `erasure` and,
    re-applied by id, reproduce the edit exactly; removing restores the original bits."""
    from conceptkit_erasure.uce import uce_draft

    old = {s: m.weight.detach().clone() for s, m in unet.cross_attention_projections().items()}
    handle, edits = uce_edit(unet, embeddings(2, seed=7), embeddings(2, seed=8), lamb=0.5)
    new = {s: m.weight.detach().clone() for s, m in unet.cross_attention_projections().items()}
    handle.remove()
    record = ck_store.put(uce_draft(edits, "toy concept", unet, {"lamb": 0.5}))
    assert record.kind == "weight_edit" and record.model["backend"] == "diffusers"
    assert (record.method.name, record.method.plugin, record.method.distribution) == ("erasure", "erasure", "conceptkit-erasure")
    with ck.edits.load(ck_store, record.id).apply(unet):
        for site, module in unet.cross_attention_projections().items():
            assert torch.equal(module.weight, new[site])
    assert all(torch.equal(m.weight, old[s]) for s, m in unet.cross_attention_projections().items())


def test_edit_command_applies_a_stored_uce_edit(unet, ck_store, capsys):
    """`conceptkit edit apply|show RECORD` serve a UCE record on the record's own model and backend."""
    from conceptkit.cli import main
    from conceptkit_erasure.uce import uce_draft, uce_edits

    edits = uce_edits(unet, embeddings(1, seed=9), embeddings(1, seed=10))
    record = ck_store.put(uce_draft(edits, "cli concept", unet))
    main(["edit", "show", record.id[:10], "--store", str(ck_store.root)])
    assert "dense" in capsys.readouterr().out
    main(["edit", "apply", record.id[:10], "--store", str(ck_store.root)])
    out = capsys.readouterr().out
    assert "applied to tiny-unet (diffusers)" in out and "to_k.weight" in out


def test_uce_edit_on_other_weights_is_refused(unet):
    """A UCE edit computed on other weights is refused by hash, and nothing changes."""
    from conceptkit_erasure.uce import uce_edits

    edits = uce_edits(unet, embeddings(1, seed=1), embeddings(1, seed=2))
    other = ck.load_model("tiny-unet", backend="diffusers", seed=1)
    before = {s: m.weight.detach().clone() for s, m in other.cross_attention_projections().items()}
    with pytest.raises(InputError, match="was computed on weights"):
        other.apply_edit(edits)
    assert all(torch.equal(m.weight, before[s]) for s, m in other.cross_attention_projections().items())


def test_concept_embeddings_come_from_the_pipeline_text_encoder(unet):
    """With a pipeline, a concept's key is the text encoder's state at the last word token."""
    from types import SimpleNamespace

    from transformers import CLIPTextConfig, CLIPTextModel

    from conceptkit.backends.diffusers import DiffusersModel
    from conceptkit.models import char_tokenizer
    from conceptkit_erasure.uce import concept_embedding

    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, max_position_embeddings=77, pad_token_id=0, eos_token_id=2)).eval()
    tok = char_tokenizer()
    model = DiffusersModel(SimpleNamespace(unet=unet.unet, text_encoder=encoder, tokenizer=tok))
    emb = concept_embedding(model, "van gogh")
    ids = tok(["van gogh"], return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(input_ids=ids.input_ids)[0]
    assert torch.allclose(emb, hidden[0, len("van gogh") - 2], atol=1e-5)
    handle, _ = uce_edit(model, emb[None], concept_embedding(model, "a painting")[None], lamb=0.1)
    handle.remove()
