"""Hostile or careless model inputs (issue 10 item 11): each a clear InputError naming value and limit."""

from __future__ import annotations

import pytest
import torch

from conceptkit import interventions as iv
from conceptkit import objectives as ob
from conceptkit.errors import InputError
from tests.adversarial.tally import expect_error

AREA = "model inputs"
SITE = "blocks.0.hook_resid_post"
BACKENDS = ["transformer_lens", "nnsight"]


def _ids(ids, mask=None):  # type: ignore[no-untyped-def]
    ids = torch.as_tensor(ids)
    return {"input_ids": ids, "attention_mask": torch.ones(ids.shape, dtype=torch.long) if mask is None else torch.as_tensor(mask)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_inputs_are_checked(models, backend):
    """Batch sizes, token ids and attention masks a model cannot run are refused before the forward."""
    model = models("tiny-llama", backend)
    cases = [
        ("capture(batch_size=0)", lambda: model.capture(["a"], [SITE], batch_size=0), r"batch_size must be an integer >= 1, got 0"),
        ("capture(batch_size=-3)", lambda: model.capture(["a"], [SITE], batch_size=-3), r"got -3"),
        ("out-of-vocabulary id", lambda: model.capture(_ids([[1, 2, 100]]), [SITE]), r"token id 100 is out of range: the vocabulary has ids 0 to 99"),
        ("negative id", lambda: model.run(_ids([[-1, 2]])), r"token id -1 is out of range"),
        ("float ids", lambda: model.capture(_ids(torch.tensor([[1.0, 2.5]])), [SITE]), r"token ids must be integers, got a tensor of dtype float32"),
        ("mask with a hole", lambda: model.capture(_ids([[1, 2, 3]], [[1, 0, 1]]), [SITE]), r"attention_mask row 0 is \[1, 0, 1\]: padding must all be on the"),
        ("mask of the wrong shape", lambda: model.capture(_ids([[1, 2, 3]], [[1, 1]]), [SITE]), r"attention_mask has shape \(1, 2\) but the token ids have shape \(1, 3\)"),
        ("mask with values other than 0/1", lambda: model.run(_ids([[1, 2]], [[1, 2]])), r"attention_mask values must be 0 or 1, got 2"),
        ("an all-padding example", lambda: model.run(_ids([[1, 2], [3, 4]], [[1, 1], [0, 0]])), r"example 1 has no real tokens"),
        ("3-D ids", lambda: model.run(_ids(torch.ones(1, 2, 3, dtype=torch.long))), r"token ids must have shape \[batch, tokens\], got shape \(1, 2, 3\)"),
    ]
    for label, fn, match in cases:
        expect_error(AREA, f"{backend}: {label}", fn, match, InputError)
    # Left padding is not a hole; the same ids then run.
    assert model.run(_ids([[0, 1, 2], [3, 4, 5]], [[0, 1, 1], [1, 1, 1]])).shape == (2, 100)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_prompts_longer_than_the_context_are_refused(models, name, backend):
    """A RoPE model (llama) and a learned-position model (GPT-2) both refuse inputs beyond their context."""
    model = models(name, backend)
    assert model.max_context == 128
    long_text = "a b " * 200
    expect_error(AREA, f"{name}/{backend}: text past the context", lambda: model.capture([long_text, "short"], [SITE]), r"tokens long; model '.*' takes at most 128 tokens")
    expect_error(AREA, f"{name}/{backend}: ids past the context", lambda: model.run(_ids(torch.ones(1, 129, dtype=torch.long))), r"example 0 is 129 tokens long; the model takes at most 128 tokens")
    expect_error(AREA, f"{name}/{backend}: grad past the context", lambda: model.grad(_ids(torch.ones(1, 200, dtype=torch.long)), SITE, ob.TokenLogit(token=1)), r"at most 128 tokens")
    assert model.run(_ids(torch.ones(1, 128, dtype=torch.long))).shape == (1, 100)  # exactly the context is fine


@pytest.mark.parametrize("backend", BACKENDS)
def test_interventions_that_cannot_apply_are_refused(models, backend):
    """Vectors of the wrong rank or shape, width-changing maps and non-finite numbers name value and limit."""
    model = models("tiny-llama", backend)
    cases = [
        ("0-d Add vector", lambda: iv.Add(site=SITE, vector=torch.tensor(2.0)), r"the Add vector must be a vector, got a 0-d tensor"),
        ("2-D Add vector", lambda: model.run(["a"], [iv.Add(site=SITE, vector=torch.zeros(2, 64))]), r"the vector has shape \(2, 64\) but each token's activation has shape \(64,\)"),
        ("Add vector of another width", lambda: model.run(["a"], [iv.Add(site=SITE, vector=torch.zeros(5))]), r"width 5 but the site's activations have width 64"),
        ("Affine that changes the width", lambda: iv.Affine(site=SITE, weight=torch.zeros(32, 64)), r"must be square \[d, d\] \(it may not change the width\), got shape \(32, 64\)"),
        ("Affine of another width", lambda: model.run(["a"], [iv.Affine(site=SITE, weight=torch.eye(8))]), r"width 8 but the site's activations have width 64"),
        ("Affine bias of another shape", lambda: iv.Affine(site=SITE, weight=torch.eye(4), bias=torch.zeros(3)), r"bias must have shape \(4,\), got \(3,\)"),
        ("Replace of the wrong shape", lambda: model.run(["a"], [iv.Replace(site=SITE, value=torch.zeros(3, 64))]), r"the value has shape \(3, 64\) but each token's activation has shape \(64,\)"),
        ("0-d Replace value", lambda: iv.Replace(site=SITE, value=torch.tensor(0.0)), r"must be a vector, got a 0-d tensor"),
        ("NaN coefficient", lambda: iv.Add(site=SITE, vector=torch.zeros(64), coeff=float("nan")), r"coeff must be a finite number, got nan"),
        ("infinite scale factor", lambda: model.run(["a"], [{"op": "scale", "site": SITE, "factor": "inf"}]), r"factor must be a finite number, got inf"),
        ("NaN in a vector", lambda: iv.Add(site=SITE, vector=[0.0, float("nan")]), r"NaN or Inf"),
        ("non-finite logit weight", lambda: ob.LogitFunctional(weights={"a": float("inf")}), r"weight of token 'a' must be finite"),
        ("logit target out of vocabulary", lambda: model.grad(["a"], SITE, ob.TokenLogit(token=1000)), r"token id 1000 is out of range: the vocabulary has ids 0 to 99"),
        ("position out of range", lambda: model.run(["ab"], [iv.Scale(site=SITE, factor=2.0, positions=[40])]), r"token position 40 is out of range for an input of \d+ tokens"),
    ]
    before = model.hook_registry()
    for label, fn, match in cases:
        expect_error(AREA, f"{backend}: {label}", fn, match, InputError)
    assert model.hook_registry() == before
