"""The gradient-ascent baseline: weight gradients assembled from public activation gradients."""

from __future__ import annotations

import pytest
import torch

import conceptkit as ck
from conceptkit_rocr.baseline import _mlp_params, answer_nll_objective, gradient_ascent, mlp_weight_grads
from conceptkit_rocr.templates import pad_id, pad_right


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_weight_grads_equal_autograd(name):
    """Σ_t x_tᵀ ∂L/∂y_t from model.capture + model.grad equals autograd's parameter gradient
    (gated Llama MLP: in, gate, out; GPT-2 Conv1D: in, out) for a two-item batch."""
    model = ck.load_model(name, backend="transformers")
    tok = model.tokenizer
    items = [("The capital of France is", " Paris"), ("Two plus two is", " four")]
    rows = [list(tok(p + a)["input_ids"]) for p, a in items]
    n_prompt = [len(tok(p)["input_ids"]) for p, _ in items]
    batch = pad_right(rows, pad_id(tok))
    objective = answer_nll_objective(rows, n_prompt)
    where = _mlp_params(model)
    grads = mlp_weight_grads(model, batch, objective, where)
    params = [model.weights.parameter(r, l) for r, l in where]
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = model._forward(model.tokenize(batch))  # reference only: the private differentiable forward
            objective(logits, None).sum().backward()
        for (role, layer), p, g in zip(where, params, grads):
            ref = model.weights.in_out(role, p.grad).double()
            assert torch.allclose(g, ref, atol=1e-6, rtol=1e-4), (role, layer, float((g - ref).abs().max()))
    finally:
        for p in params:
            p.grad = None
            p.requires_grad_(False)


def test_gradient_ascent_raises_the_answer_nll_and_leaves_the_model_unchanged():
    """A few GA steps raise the training answer's NLL; the model's weights are untouched after
    training and after removing the applied edit."""
    model = ck.load_model("tiny-llama", backend="transformers")
    before = [model.weights.parameter(r, l).detach().clone() for r, l in _mlp_params(model)]
    ga = gradient_ascent(model, [("The capital of France is", " Paris")], lr=1e-2, steps=3)
    assert ga.nll_per_step[-1] > ga.nll_per_step[0]
    after = [model.weights.parameter(r, l) for r, l in _mlp_params(model)]
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    with ga.apply(model):
        assert not torch.equal(model.weights.parameter("out", 0), before[[w for w in _mlp_params(model)].index(("out", 0))])
    assert all(torch.equal(a, b) for a, b in zip(after, before))
