"""ROCR's preserved-key statistics over Ray equal the single-process ones (tiny model, local Ray)."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit_rocr.stats import second_moments

ray = pytest.importorskip("ray")

TEXTS = [f"text number {i} talks about {'things ' * (i % 4)}and stops." for i in range(12)]


def test_ray_second_moments_equal_single_process(monkeypatch):
    """second_moments(ray=True) (the core's dataset_moments on two local Ray workers) equals the
    local streamed pass within 1e-6 (relative to the largest entry), with the same token count;
    the workers start once for all layers (not once per layer)."""
    from conceptkit.scale import dataset

    started = []

    class CountingPool(dataset.RayCapture):
        def __init__(self, *args, **kwargs):
            started.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(dataset, "RayCapture", CountingPool)
    model = ck.load_model("tiny-gpt2", backend="transformers")
    layers = [0, 1]
    local, n_local = second_moments(model, TEXTS, layers)
    try:
        remote, n_remote = second_moments(model, TEXTS, layers, ray=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert n_remote == n_local > len(TEXTS) and len(started) == 1
    for layer in layers:
        scale = float(local[layer].abs().max())
        assert float((remote[layer] - local[layer]).abs().max()) <= 1e-6 * scale
        assert remote[layer].dtype == torch.float64
