"""Sites beyond the residual stream: virtual sites, attention patterns, the norms' scales."""

from __future__ import annotations

import pytest
import torch

from conceptkit import interventions as iv
from conceptkit import objectives as ob
from conceptkit.errors import InputError
from conceptkit.testing import assert_no_hook_leak

TEXTS = ["hello world, a longer one here", "hi", "medium sized text", "z"]
BACKENDS = ["transformer_lens", "nnsight"]
BASE = "blocks.0.hook_resid_post"
DOUBLE = BASE + ".hook_double"


class Doubled:
    """A toy provider: ``<base>.hook_double`` is ``2 * x``; a replacement ``y`` writes back ``y / 2``."""

    base_site = BASE

    def __init__(self) -> None:
        self.calls = 0

    def names(self) -> list[str]:
        return [DOUBLE, BASE + ".hook_neg"]

    def run(self, x, taps):  # type: ignore[no-untyped-def]
        self.calls += 1
        out = None
        if DOUBLE in taps:
            new = taps[DOUBLE](2 * x)
            out = None if new is None else new / 2
        if BASE + ".hook_neg" in taps:
            cur = x if out is None else out
            new = taps[BASE + ".hook_neg"](-cur)
            out = out if new is None else -new
        return out


@pytest.fixture
def virtual(models):
    """A model with the toy provider added for the test, removed afterwards."""

    def make(backend: str):
        model = models("tiny-llama", backend)
        handle = model.add_virtual_sites(Doubled())
        request_handles.append(handle)
        return model

    request_handles: list = []
    yield make
    for h in request_handles:
        h.remove()


@pytest.mark.parametrize("backend", BACKENDS)
def test_virtual_names_are_sites_until_removed(models, backend):
    """Virtual names follow their base site in sites(); adding costs no hook; removing drops them."""
    model = models("tiny-llama", backend)
    before = model.hook_registry()
    handle = model.add_virtual_sites(Doubled())
    sites = model.sites()
    assert sites[sites.index(BASE) + 1] == DOUBLE
    assert model.hook_registry() == before  # no tap attached: nothing runs
    handle.remove()
    assert DOUBLE not in model.sites()
    with pytest.raises(KeyError):
        model.capture(["a"], [DOUBLE])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", ["last", "mean", "all", [0, -1]])
def test_virtual_site_captures_with_every_reduce(virtual, backend, reduce, tmp_path):
    """Capture at a virtual site equals the provider's function of the base capture, streamed or not."""
    model = virtual(backend)
    with assert_no_hook_leak(model):
        acts = model.capture(TEXTS, [BASE, DOUBLE], reduce=reduce, batch_size=3, padding_side="left")
        streamed = model.capture(TEXTS, [DOUBLE], reduce=reduce, batch_size=2, stream_to=tmp_path / "s", shard_mb=0.001)
    assert torch.equal(acts[DOUBLE], 2 * acts[BASE])
    assert torch.allclose(streamed[DOUBLE], acts[DOUBLE], atol=1e-5)  # other batching: float noise only


@pytest.mark.parametrize("backend", BACKENDS)
def test_virtual_site_interventions_and_gradients(virtual, backend):
    """An Add at the virtual site acts like Add(v/2) at the base; grads are the base's halved."""
    model = virtual(backend)
    torch.manual_seed(0)
    v = torch.randn(64)
    with assert_no_hook_leak(model):
        at_virtual = model.run(TEXTS, [iv.Add(site=DOUBLE, vector=v, positions="last")])
        at_base = model.run(TEXTS, [iv.Add(site=BASE, vector=v / 2, positions="last")])
        assert torch.allclose(at_virtual, at_base, atol=1e-5)
        objective = ob.LogitDiff(positive="a", negative="b")
        g_virtual, a_virtual = model.grad(TEXTS, DOUBLE, objective, return_activations=True)
        g_base, a_base = model.grad(TEXTS, BASE, objective, return_activations=True)
    assert torch.allclose(g_virtual, g_base / 2, atol=1e-5)
    assert torch.allclose(a_virtual, 2 * a_base)
    # Two names of one provider run in its order: Scale(3) at the double (6x) writes back 3x, negated.
    both = model.capture(TEXTS, [DOUBLE, BASE + ".hook_neg"], interventions=[iv.Scale(site=DOUBLE, factor=3.0)])
    assert torch.allclose(both[BASE + ".hook_neg"], -both[DOUBLE] / 2, atol=1e-5)


def test_virtual_site_names_must_be_new(models):
    """A provider may not reuse a real site, a raw address or another provider's names."""
    model = models("tiny-llama", "nnsight")

    class Clash(Doubled):
        def names(self) -> list[str]:
            return ["blocks.1.hook_resid_post"]

    with pytest.raises(InputError, match="'blocks.1.hook_resid_post' is already a site"):
        model.add_virtual_sites(Clash())
    handle = model.add_virtual_sites(Doubled())
    try:
        with pytest.raises(InputError, match="already a site"):
            model.add_virtual_sites(Doubled())
    finally:
        handle.remove()
    with pytest.raises(InputError, match="not a virtual-site provider"):
        model.add_virtual_sites(object())
