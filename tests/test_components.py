"""Components: plugin-registered interventions, objectives and virtual sites, used end to end."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch

import conceptkit as ck
from conceptkit import components
from conceptkit import interventions as iv
from conceptkit import objectives as ob
from conceptkit.errors import InputError, UnknownNameError
from conceptkit.sae import SAE
from conceptkit.sae.interventions import SAEFeatures
from conceptkit.virtual_sites import VirtualSiteSpec

SITE = "blocks.0.hook_resid_post"
TEXTS = ["hello world, a longer one here", "hi", "medium sized text"]


class Clip(iv.Intervention):
    """Clamp every coordinate to ``[-bound, bound]``."""

    op: Literal["clip"] = "clip"
    bound: float

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-self.bound, self.bound)


class NegLogit(ob.Objective):
    """Minus the logit of ``token`` at the last real position."""

    kind: Literal["neg_logit"] = "neg_logit"
    token: int

    def evaluate(self, model, output, batch, acts):  # type: ignore[no-untyped-def]
        return -ob._last(output, batch)[:, self.token]


class Tripled(VirtualSiteSpec):
    """``<site>.hook_triple`` is ``3 x``."""

    kind: Literal["tripled"] = "tripled"
    site: str

    def build(self, model):  # type: ignore[no-untyped-def]
        site = self.site

        class Provider:
            base_site = site

            def names(self) -> list[str]:
                return [site + ".hook_triple"]

            def run(self, x, taps):  # type: ignore[no-untyped-def]
                new = taps[site + ".hook_triple"](3 * x)
                return None if new is None else new / 3

        return Provider()


class ComponentsPlugin:
    @ck.hookimpl
    def register_components(self, register):  # type: ignore[no-untyped-def]
        register("intervention", Clip)
        register("objective", NegLogit)
        register("virtual_site", Tripled)


@pytest.fixture
def plugin():
    with ck.registered_plugin(ComponentsPlugin(), name="components-plugin"):
        yield


def _json(obj):  # type: ignore[no-untyped-def]
    return json.loads(json.dumps(components.dump(obj)))


def test_plugin_intervention_runs_from_json(models, plugin):
    """A registered op is parsed by name from JSON and acts like the hand-written hook."""
    model = models("tiny-llama", "nnsight")
    clip = _json(Clip(site=SITE, bound=0.05))
    assert clip == {"site": SITE, "positions": "all", "op": "clip", "bound": 0.05}
    assert "clip" in components.kinds("intervention") and components.plugin_of("intervention", "clip") == "components-plugin"
    steered = model.run(TEXTS, [clip])
    with model.add_hook(SITE, lambda t: t.clamp(-0.05, 0.05)):
        by_hand = model.run(TEXTS)
    assert torch.equal(steered, by_hand)
    assert iv.parse(clip) == Clip(site=SITE, bound=0.05)


def test_plugin_objective_gradient(models, plugin):
    """A registered objective given as a dict drives model.grad (here: minus a token logit)."""
    model = models("tiny-llama", "transformer_lens")
    g = model.grad(TEXTS, SITE, {"kind": "neg_logit", "token": 7})
    assert torch.allclose(g, -model.grad(TEXTS, SITE, ob.TokenLogit(token=7)), atol=1e-6)


def test_plugin_virtual_site_from_data(models, plugin):
    """A registered virtual-site kind, added from its dict, is captured and intervened on."""
    model = models("tiny-llama", "transformer_lens")
    assert components.parse("virtual_site", _json(Tripled(site=SITE))) == Tripled(site=SITE)
    assert components.parse("objective", _json(NegLogit(token=7))) == NegLogit(token=7)
    with model.add_virtual_sites({"kind": "tripled", "site": SITE}):
        name = SITE + ".hook_triple"
        assert name in model.sites()
        acts = model.capture(TEXTS, [SITE, name], reduce="mean")
        assert torch.allclose(acts[name], 3 * acts[SITE], atol=1e-6)
        a = model.run(TEXTS, [iv.Scale(site=name, factor=0.5)])
        b = model.run(TEXTS, [iv.Scale(site=SITE, factor=0.5)])
        assert torch.allclose(a, b, atol=1e-5)
    assert name not in model.sites()


def test_builtin_components_round_trip_through_json():
    """Every built-in intervention op and objective kind survives JSON unchanged."""
    examples = [
        iv.Add(site=SITE, vector=[1.0, 2.0], coeff=0.5, positions=[0, -1]),
        iv.Scale(site=SITE, factor=2.0, positions="last"),
        iv.ProjectOut(site=SITE, directions=torch.eye(2)),
        iv.Affine(site=SITE, weight=torch.eye(2), bias=[0.0, 1.0]),
        iv.Replace(site=SITE, value=[0.5, 0.5]),
        SAEFeatures(site=SITE, sae=SAE(torch.ones(2, 3), torch.zeros(3), torch.ones(3, 2), torch.zeros(2)), features=[1], mode="scale", value=0.5),
        ob.TokenLogit(token="a", log_prob=True),
        ob.LogitDiff(positive=3, negative="b"),
        ob.NextTokenLoss(negate=True),
        ob.LogitFunctional(weights={5: 1.0, "5": -1.0}, position=-2),
        ob.LogitFunctional(weights=torch.arange(4.0)),
        ob.InnerSiteFunctional(site=SITE, direction=[1.0, 0.0], positions=[0, 1], reduce="mean"),
    ]
    core = {f: {k for k in components.kinds(f) if components.plugin_of(f, k) == "conceptkit"} for f in ("intervention", "objective")}
    assert {e.op for e in examples if isinstance(e, iv.Intervention)} == core["intervention"]
    assert {e.kind for e in examples if isinstance(e, ob.Objective)} == core["objective"]
    for example in examples:
        family = "intervention" if isinstance(example, iv.Intervention) else "objective"
        back = components.parse(family, _json(example))
        assert type(back) is type(example) and components.dump(back) == components.dump(example)
    # Token ids and token strings stay apart through JSON.
    assert components.parse("objective", _json(examples[9])).weights == {5: 1.0, "5": -1.0}


def test_bad_components_are_reported_by_plugin():
    """A class without a Literal name, or a name already taken, is a plugin failure naming both."""

    class NoName(iv.Intervention):
        bound: float

    class Dup(iv.Intervention):
        op: Literal["add"] = "add"

    class Bad:
        @ck.hookimpl
        def register_components(self, register):  # type: ignore[no-untyped-def]
            register("intervention", Dup)

    class Worse:
        @ck.hookimpl
        def register_components(self, register):  # type: ignore[no-untyped-def]
            register("intervention", NoName)

    with ck.registered_plugin(Bad(), name="dup-plugin"), ck.registered_plugin(Worse(), name="noname-plugin"):
        with pytest.warns(RuntimeWarning):
            assert components.get("intervention", "add") is iv.Add
        reasons = {f.plugin: f.reason for f in ck.plugin_failures() if f.stage == "register_components"}
    assert "'add' is already registered by plugin 'conceptkit'" in reasons["dup-plugin"]
    assert "needs a field op: Literal['<name>']" in reasons["noname-plugin"]
    with pytest.raises(UnknownNameError, match="unknown intervention op 'clipp'"):
        iv.parse({"op": "clipp", "site": SITE})
    with pytest.raises(InputError, match="needs 'kind'"):
        ob.parse({"token": 3})


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_logit_functional_equals_logit_diff(models, backend):
    """LogitFunctional({a: 1, b: -1}) and the same vector over the vocabulary give LogitDiff's gradient."""
    model = models("tiny-llama", backend)
    a, b = ob.token_id(model, "a"), ob.token_id(model, "b")
    diff = model.grad(TEXTS, SITE, ob.LogitDiff(positive="a", negative="b"))
    weights = torch.zeros(model.vocab_size)
    weights[a], weights[b] = 1.0, -1.0
    assert torch.allclose(model.grad(TEXTS, SITE, ob.LogitFunctional(weights={"a": 1.0, "b": -1.0})), diff, atol=1e-6)
    assert torch.allclose(model.grad(TEXTS, SITE, {"kind": "logit_functional", "weights": weights}), diff, atol=1e-6)
    with pytest.raises(InputError, match="weights have shape \\(3,\\); the output has 100 logits"):
        model.grad(TEXTS, SITE, ob.LogitFunctional(weights=torch.ones(3)))


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_inner_site_functional_identities(models, backend):
    """d(v·x_last)/dx_last = v exactly; summed over all tokens, the mean-reduced gradient is n·v."""
    model = models("tiny-llama", backend)
    torch.manual_seed(0)
    v = torch.randn(64)
    last = model.grad(TEXTS, SITE, ob.InnerSiteFunctional(site=SITE, direction=v))
    assert torch.equal(last, v.expand(len(TEXTS), -1))
    total = model.grad(TEXTS, SITE, ob.InnerSiteFunctional(site=SITE, direction=v, positions="all"), reduce="mean")
    n = model.tokenize(TEXTS).lengths.float()
    assert torch.allclose(total, n[:, None] * v, atol=1e-5)
    # Downstream site: the gradient is a real directional derivative (finite differences).
    objective = ob.InnerSiteFunctional(site="blocks.1.hook_resid_post", direction=v, reduce="mean", positions="all")
    g = model.grad(TEXTS[:1], SITE, objective, reduce="last")
    u, eps = torch.randn(64), 1e-3

    def value(c: float) -> torch.Tensor:
        acts = model.capture(TEXTS[:1], ["blocks.1.hook_resid_post"], reduce="mean", interventions=[iv.Add(site=SITE, vector=u, coeff=c, positions="last")])
        return acts["blocks.1.hook_resid_post"] @ v

    fd = (value(eps) - value(-eps)) / (2 * eps)
    assert torch.allclose(fd, g @ u, rtol=2e-2, atol=1e-3)
    with pytest.raises(InputError, match="does not depend on site 'blocks.1.hook_resid_post'"):
        model.grad(TEXTS, "blocks.1.hook_resid_post", ob.InnerSiteFunctional(site=SITE, direction=v))


def test_the_plugin_author_guide_components_example_runs(capsys):
    """The components example in docs/plugin-authors.md runs as written: a plugin op and a virtual site."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "plugin-authors.md").read_text()
    code = text.split("## 9. Components", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "plugin-authors.md", "exec", dont_inherit=True), namespace)
    assert torch.allclose(namespace["acts"][SITE + ".hook_unit"].norm(dim=-1), torch.ones(1), atol=1e-5)
    assert namespace["clipped"].shape[0] == 1 and "clip" not in components.kinds("intervention")
