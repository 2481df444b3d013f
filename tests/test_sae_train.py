"""The TopK trainer: learns a planted dictionary, is seeded, resumes exactly, has a sparse backward."""

from __future__ import annotations

import pytest
import torch

from conceptkit.sae.train import TopKTrainer, TrainConfig, sparse_code


def planted(n: int, d: int = 32, m: int = 64, active: int = 3, seed: int = 0) -> torch.Tensor:
    atoms = torch.randn(m, d, generator=torch.Generator().manual_seed(1234))  # the same dictionary for every seed
    g = torch.Generator().manual_seed(seed)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(m, generator=g)[:active] for _ in range(n)])
    coef = torch.rand(n, active, generator=g) + 0.5
    return torch.einsum("na,nad->nd", coef, atoms[idx]) + 0.3


def chunks(x: torch.Tensor, size: int = 700):
    return [x[i : i + size] for i in range(0, x.shape[0], size)]


CFG = dict(d_sae=128, k=4, batch_size=128, shuffle_buffer=2048, lr=1e-2, lr_warmup_steps=5, dead_tokens=2000)


def test_learns_planted_dictionary() -> None:
    """On sparse planted data the trainer reaches FVE > 0.9 on fresh rows of the same source."""
    trainer = TopKTrainer(32, TrainConfig(**CFG))
    sae = trainer.fit(chunks(planted(20_000)), progress=False)
    test = planted(2000, seed=99)
    fve = 1 - (sae.forward(test) - test).pow(2).sum() / (test - test.mean(0)).pow(2).sum()
    assert fve > 0.9, float(fve)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)


def test_seeded_and_resumes_exactly(tmp_path) -> None:
    """Same seed, same stream: identical weights; stopping at a checkpoint and resuming changes nothing."""
    data = chunks(planted(6000, seed=1))
    cfg = TrainConfig(**{**CFG, "checkpoint_every": 5})
    full = TopKTrainer(32, cfg).fit(data, progress=False)
    again = TopKTrainer(32, cfg).fit(data, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(full.tensors().values(), again.tensors().values()))
    first = TopKTrainer(32, cfg)
    first.fit(data, max_steps=10, checkpoint_dir=tmp_path, progress=False)
    resumed = TopKTrainer.from_checkpoint(tmp_path)
    assert resumed.step == 10
    out = resumed.fit(data, progress=False)
    for name, t in full.tensors().items():
        assert torch.equal(t, out.tensors()[name]), name


def test_sparse_backward_matches_dense() -> None:
    """The sparse encode-decode backward equals autograd through the dense computation."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, generator=g, requires_grad=True)
    W = torch.randn(20, 8, generator=g, requires_grad=True)
    b = torch.randn(20, generator=g, requires_grad=True)
    D = torch.randn(20, 8, generator=g, requires_grad=True)
    idx = torch.stack([torch.randperm(20, generator=g)[:3] for _ in range(5)])
    pre = (x @ W.T + b).detach()
    target = torch.randn(5, 8, generator=g)
    (sparse_code(x, W, b, D, idx, pre) - target).pow(2).sum().backward()
    grads = [t.grad.clone() for t in (x, W, b, D)]
    for t in (x, W, b, D):
        t.grad = None
    h = (x @ W.T + b).gather(1, idx)
    dense = torch.zeros(5, 20).scatter(1, idx, torch.relu(h))
    (dense @ D - target).pow(2).sum().backward()
    for got, want in zip(grads, (x.grad, W.grad, b.grad, D.grad)):
        torch.testing.assert_close(got, want)


def test_auxk_trains_only_dead_latents_that_topk_ignores() -> None:
    """A latent outside every row's top-k gets a gradient only through AuxK, and only when it is dead."""
    x = planted(256, seed=2)
    changed = {}
    for alpha, dead in ((0.0, True), (1 / 32, False), (1 / 32, True)):
        t = TopKTrainer(32, TrainConfig(**{**CFG, "auxk_alpha": alpha, "lr_warmup_steps": 0}))
        with torch.no_grad():
            t.W_encT[7] = 0.0
            t.b_enc[7] = 1e-3  # latent 7 is weakly positive everywhere, never in the top k
        if dead:
            t.since_fired[7] = 10**9
        before = t.W_encT[7].detach().clone(), t.W_dec[7].detach().clone()
        t.train_step(x)
        changed[(alpha, dead)] = not torch.allclose(before[0], t.W_encT[7], atol=1e-6) or not torch.allclose(before[1], t.W_dec[7], atol=1e-6)
    assert changed == {(0.0, True): False, (1 / 32, False): False, (1 / 32, True): True}, changed


def test_same_trajectory_as_sparsify() -> None:
    """From the same seed and rows, the trainer follows eai-sparsify's SparseCoder step (Adam, no dead latents)."""
    pytest.importorskip("sparsify")
    import math
    import os

    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    from sparsify import SparseCoder, SparseCoderConfig

    x = planted(2048, seed=4) * 3
    cfg = TrainConfig(d_sae=96, k=6, batch_size=256, lr_warmup_steps=0, lr=1e-3, seed=0, shuffle_buffer=0)
    ours = TopKTrainer(32, cfg)
    torch.manual_seed(0)  # sparsify initialises nn.Linear from the global generator
    ref = SparseCoder(32, SparseCoderConfig(num_latents=96, k=6))
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, eps=6.25e-10)
    assert torch.equal(ours.W_encT, ref.encoder.weight) and math.isclose(float(ours.W_dec.detach().norm()), float(ref.W_dec.detach().norm()), rel_tol=1e-6)
    for step, batch in enumerate(x.split(256)):
        ours.train_step(batch)
        if step == 0:
            ref.b_dec.data = batch.mean(0)
        ref.set_decoder_norm_to_unit_norm()
        ref(batch).fvu.backward()
        ref.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    ref.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(ours.W_dec.detach(), ref.W_dec.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.W_encT.detach(), ref.encoder.weight.detach(), atol=1e-4, rtol=0)
