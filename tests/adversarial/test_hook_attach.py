"""A failure while attaching the 2nd of several hooks leaves none registered (issue 10 item 10)."""

from __future__ import annotations

import pytest
import torch

from conceptkit import interventions as iv
from conceptkit import objectives as ob
from tests.adversarial.tally import tally

AREA = "hooks: attach failures"
TEXTS = ["hello world, a longer one", "hi"]
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
BACKENDS = ["transformer_lens", "nnsight", "transformers"]


class Doubled:
    """A toy virtual-site provider on ``blocks.0.hook_resid_post``."""

    base_site = SITES[0]

    def names(self) -> list[str]:
        return [SITES[0] + ".hook_double"]

    def run(self, x, taps):  # type: ignore[no-untyped-def]
        new = taps[self.names()[0]](2 * x)
        return None if new is None else new / 2


def _operations(model):  # type: ignore[no-untyped-def]
    """Operations that attach at least two hooks in one go."""
    v = torch.zeros(model.d_model)
    return {
        "capture of two sites": lambda: model.capture(TEXTS, SITES),
        "run with two interventions": lambda: model.run(TEXTS, [iv.Add(site=s, vector=v) for s in SITES]),
        "intervene with two interventions": lambda: model.intervene([iv.Scale(site=s, factor=1.0) for s in SITES]).remove(),
        "grad with an inner-site objective": lambda: model.grad(TEXTS, SITES[0], ob.InnerSiteFunctional(site=SITES[1], direction=v)),
        "capture of a virtual and a real site": lambda: model.capture(TEXTS, [SITES[0] + ".hook_double", SITES[1]]),
        "capture of an attention pattern": lambda: model.capture(TEXTS, ["blocks.1.attn.hook_pattern", SITES[1]]),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_second_attach_failing_leaves_no_hook(models, backend, error):
    """Whatever raises on the 2nd attach (even KeyboardInterrupt), no hook stays and later calls work."""
    model = models("tiny-llama", backend)
    handle = model.add_virtual_sites(Doubled())
    try:
        before = model.hook_registry()
        expected = model.capture(TEXTS, SITES)
        real = model._attach
        for label, operation in _operations(model).items():
            calls = 0

            def flaky(site, fn):  # type: ignore[no-untyped-def]
                nonlocal calls
                calls += 1
                if calls == 2:
                    raise error("interrupted while attaching")
                return real(site, fn)

            model._attach = flaky
            try:
                with pytest.raises(error, match="interrupted while attaching"):
                    operation()
            finally:
                del model._attach
            clean = model.hook_registry() == before
            tally(AREA, f"{backend}: {error.__name__} during {label}", "clear" if clean else "silent")
            assert clean, label
        again = model.capture(TEXTS, SITES)
        assert all(torch.equal(again[s], expected[s]) for s in SITES)
    finally:
        handle.remove()


@pytest.mark.parametrize("backend", BACKENDS)
def test_framework_refusing_a_hook_leaves_no_hook(models, backend, monkeypatch):
    """The framework's own registration raising on its 2nd call (torch or TransformerLens) leaks nothing."""
    model = models("tiny-llama", backend)
    before = model.hook_registry()
    calls = 0
    if backend == "transformer_lens":
        from transformer_lens.hook_points import HookPoint

        target, name = HookPoint, "add_hook"
    else:
        target, name = torch.nn.Module, "register_forward_hook"
    real = getattr(target, name)

    def flaky(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt("interrupted inside the framework")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    with pytest.raises(KeyboardInterrupt):
        model.capture(TEXTS, SITES)
    monkeypatch.undo()
    clean = model.hook_registry() == before
    tally(AREA, f"{backend}: KeyboardInterrupt inside {name}", "clear" if clean else "silent")
    assert clean
    assert model.capture(TEXTS, SITES)[SITES[1]].shape == (2, 64)
