"""The nnsight trace executor (plans compiled into nn_model.trace, remote="local") vs the hook executor."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit.errors import CapabilityError
from conceptkit.interventions import Add, Affine, ProjectOut, Replace, Scale

TEXTS = ["the cat sat on the mat", "a dog ran", "birds fly south in winter"]
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"]


@pytest.fixture(scope="module")
def models():
    m = ck.load_model("tiny-gpt2", backend="nnsight")
    return m, m.with_executor("trace", remote="local")


def test_capture_every_reduction_equals_hooks(models) -> None:
    """capture under remote="local" equals the hook executor for last/first/mean/all/positions (≤1e-5)."""
    hooks, trace = models
    for reduce in ("last", "first", "mean", "all", [0, -1]):
        a = hooks.capture(TEXTS, SITES, reduce, batch_size=2)
        b = trace.capture(TEXTS, SITES, reduce, batch_size=2)
        for s in SITES:
            assert torch.allclose(a[s], b[s], atol=1e-5, rtol=0), (reduce, s)
        if reduce == "all":
            assert torch.equal(a.token_index, b.token_index)


def test_run_with_interventions_equals_hooks(models) -> None:
    """run with add/scale/replace/affine/project_out (positions too) under remote="local" equals hooks (≤1e-5)."""
    hooks, trace = models
    g = torch.Generator().manual_seed(0)
    d = hooks.d_model
    ivs = [
        Add(site="blocks.0.hook_resid_post", vector=torch.randn(d, generator=g), coeff=2.0, positions="last"),
        Scale(site="blocks.1.hook_resid_mid", factor=0.5),
        ProjectOut(site="blocks.1.hook_resid_mid", directions=torch.randn(2, d, generator=g)),
        Affine(site="blocks.1.hook_mlp_out", weight=torch.randn(d, d, generator=g) / d**0.5, bias=torch.randn(d, generator=g)),
        Replace(site="blocks.0.hook_attn_out", value=torch.randn(d, generator=g), positions=[0]),
    ]
    a = hooks.run(TEXTS, interventions=ivs, batch_size=2)
    b = trace.run(TEXTS, interventions=ivs, batch_size=2)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    base = hooks.run(TEXTS, batch_size=2)
    assert not torch.allclose(a, base, atol=1e-3)
    ca = hooks.capture(TEXTS, "blocks.1.hook_resid_post", "mean", interventions=ivs[:2])
    cb = trace.capture(TEXTS, "blocks.1.hook_resid_post", "mean", interventions=ivs[:2])
    assert torch.allclose(ca["blocks.1.hook_resid_post"], cb["blocks.1.hook_resid_post"], atol=1e-5, rtol=0)


def test_grad_linear_objectives_equal_hooks(models) -> None:
    """grad of token_logit / logit_diff / logit_functional under remote="local" equals hooks (≤1e-5), interventions too."""
    hooks, trace = models
    site = "blocks.0.hook_resid_post"
    ivs = [Scale(site="blocks.0.hook_attn_out", factor=0.7)]
    for obj in ({"kind": "token_logit", "token": 3}, {"kind": "logit_diff", "positive": 5, "negative": 7},
                {"kind": "logit_functional", "weights": {3: 1.0, 9: -0.5}}):
        for reduce in ("last", "mean"):
            a = hooks.grad(TEXTS, site, obj, reduce=reduce, interventions=ivs, batch_size=2)
            b = trace.grad(TEXTS, site, obj, reduce=reduce, interventions=ivs, batch_size=2)
            a, b = (getattr(a, "grads", a), getattr(b, "grads", b))
            assert torch.allclose(a, b, atol=1e-5, rtol=0), (obj, reduce)


def test_inexpressible_plans_refused_before_sending(models, monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-linear objectives, callables, view sites and non-nnsight models raise CapabilityError before any trace."""
    import conceptkit.scale.nnsight_trace as nt

    hooks, trace = models

    def boom(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("a trace was sent")

    monkeypatch.setattr(nt, "_trace_body", boom)
    with pytest.raises(CapabilityError, match="objective kind 'loss'"):
        trace.grad(TEXTS[:1], "blocks.0.hook_resid_post", {"kind": "loss"})
    with pytest.raises(CapabilityError, match="Python callable"):
        trace.grad(TEXTS[:1], "blocks.0.hook_resid_post", lambda out, batch: out[:, -1, 0])
    with pytest.raises(CapabilityError, match="view"):
        trace.capture(TEXTS[:1], "blocks.0.attn.hook_pattern")
    with pytest.raises(CapabilityError, match="trace executor needs"):
        nt.TraceExecutor(ck.load_model("tiny-gpt2", backend="transformers"))


def test_hook_executor_stays_default(models) -> None:
    """Loading with backend="nnsight" keeps the hook executor; with_executor("hooks") returns to it."""
    hooks, trace = models
    assert hooks._trace_executor is None and trace._trace_executor is not None
    assert trace.with_executor("hooks")._trace_executor is None


def test_nll_equals_hooks(models) -> None:
    """nll (a logits plan) under remote="local" equals the hook executor, with an intervention too."""
    hooks, trace = models
    iv = [Scale(site="blocks.0.hook_resid_post", factor=1.5)]
    for ivs in ([], iv):
        (a, na), (b, nb) = hooks.nll(TEXTS, ivs, batch_size=2), trace.nll(TEXTS, ivs, batch_size=2)
        assert torch.equal(na, nb) and torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_smollm2_trace_capture_and_run_equal_hooks() -> None:
    """On SmolLM2, remote="local" capture (mean) and run with a steering Add equal the hook executor (≤1e-5)."""
    m = ck.load_model("smollm2-135m", backend="nnsight")
    t = m.with_executor("trace", remote="local")
    site = "blocks.9.hook_resid_post"
    a, b = m.capture(TEXTS, site, "mean"), t.capture(TEXTS, site, "mean")
    assert torch.allclose(a[site], b[site], atol=1e-5, rtol=0)
    iv = [Add(site="blocks.3.hook_resid_post", vector=torch.ones(m.d_model), coeff=2.0)]
    assert torch.allclose(m.run(TEXTS, interventions=iv), t.run(TEXTS, interventions=iv), atol=1e-5, rtol=0)
