"""Plans and executors: the operations build plans; a plugin backend can execute them without hooks."""

from __future__ import annotations

import json

import pytest
import torch

import conceptkit as ck
from conceptkit import interventions as iv
from conceptkit import objectives as ob
from conceptkit.backends import module_hooks
from conceptkit.data import Batch, reduce_tokens, scatter_grad_reduction
from conceptkit.plans import LocalExecutor, Plan, PlanOutput, Read  # TODO(public-surface)

SITES = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
V, D = 50, 8


class Net(torch.nn.Module):
    """Embedding, two residual tanh blocks, unembedding; an identity module marks each site."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(V, D)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(D, D) for _ in range(2)])
        self.unembed = torch.nn.Linear(D, V)
        self.taps = torch.nn.ModuleList([torch.nn.Identity() for _ in SITES])

    def stages(self):  # type: ignore[no-untyped-def]
        yield SITES[0], lambda ids: self.embed(ids)
        for i, block in enumerate(self.blocks):
            yield SITES[i + 1], lambda h, block=block: h + torch.tanh(block(h))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = ids
        for i, (_, stage) in enumerate(self.stages()):
            h = self.taps[i](stage(h))
        return self.unembed(h)


class _Base(ck.Model):
    capabilities = frozenset({ck.Capability.GRADIENTS})

    def __init__(self, net: Net, name: str) -> None:
        super().__init__(tokenizer=None, name=name)
        self.net = net

    def native_sites(self) -> list[str]:
        return list(SITES)

    @property
    def vocab_size(self) -> int:
        return V

    @property
    def ref(self) -> ck.ModelRef:
        return ck.ModelRef(name=self.name, backend=self.backend_name)


class HookedModel(_Base):
    """The reference: the local hook engine over identity modules."""

    backend_name = "toy-hooks"

    def _attach(self, site, fn):  # type: ignore[no-untyped-def]
        return module_hooks.attach(self.net.taps[SITES.index(site)], "output", fn)

    def _forward(self, batch: Batch) -> torch.Tensor:
        return self.net(batch.input_ids)

    def hook_registry(self):  # type: ignore[no-untyped-def]
        return module_hooks.hook_registry(self.net)


class PlannedModel(_Base):
    """A backend that executes plans itself, stage by stage, and never registers a hook."""

    backend_name = "toy-plans"

    def __init__(self, net: Net) -> None:
        super().__init__(net, "planned")
        self.plans: list[dict] = []

    def execute(self, plan: Plan) -> PlanOutput:
        self.plans.append(json.loads(json.dumps(plan.describe())))
        batch, out = plan.batch, PlanOutput()
        objective = ob.as_objective(plan.grad.objective, self) if plan.grad else None
        inner, leaf = {}, None
        with torch.enable_grad() if objective else torch.no_grad():
            h = batch.input_ids
            for site, stage in self.net.stages():
                h = stage(h)
                for item in plan.interventions:
                    if item.site == site:
                        h = item.apply(h, batch.position_mask(item.positions))
                if plan.grad and plan.grad.site == site:
                    h = leaf = h.detach().requires_grad_(True)
                if site in getattr(objective, "sites", ()):
                    inner[site] = h
                for read in plan.reads:
                    if read.site == site:
                        out.reads[site] = reduce_tokens(h.detach(), batch, read.reduce).to(plan.read_dtype)
            logits = self.net.unembed(h)
            if objective is not None:
                values = objective(logits, batch, inner) if inner else objective(logits, batch)
                (g,) = torch.autograd.grad(values.sum(), leaf)
                out.grads = scatter_grad_reduction(g, batch, plan.grad.reduce)
                if plan.grad.return_activations:
                    out.grad_activations = reduce_tokens(leaf.detach(), batch, plan.grad.reduce)
        if plan.output == "logits":
            out.output = logits.detach()
        elif plan.output == "reduced":
            out.output = reduce_tokens(logits.detach(), batch, plan.output_reduce).float()
        return out


class ToyObject:
    """What a user holds before wrapping: the plugin backend recognises it."""

    def __init__(self) -> None:
        self.net = Net()


class ToyBackend:
    def recognises(self, obj):  # type: ignore[no-untyped-def]
        return isinstance(obj, ToyObject)

    def wrap(self, obj, **kwargs):  # type: ignore[no-untyped-def]
        return PlannedModel(obj.net)


class BackendPlugin:
    @ck.hookimpl
    def register_backends(self, register):  # type: ignore[no-untyped-def]
        register("toy-plans", ToyBackend())


def _inputs() -> dict:
    torch.manual_seed(1)
    ids = torch.randint(0, V, (5, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def pair():
    with ck.registered_plugin(BackendPlugin(), name="toy-backend"):
        obj = ToyObject()
        planned = ck.wrap(obj)
        assert isinstance(planned, PlannedModel)
        yield HookedModel(obj.net, "hooked"), planned


def test_plugin_backend_executes_capture_and_run(pair):
    """Capture (every reduce, with interventions) and run agree between hooks and a plan executor."""
    hooked, planned = pair
    inputs = _inputs()
    ivs = [iv.Add(site=SITES[1], vector=torch.ones(D), positions="last"), {"op": "scale", "site": SITES[2], "factor": 0.5}]
    for reduce in ("last", "mean", "all", [0, 1]):
        a = hooked.capture(inputs, SITES, reduce=reduce, interventions=ivs, batch_size=2)
        b = planned.capture(inputs, SITES, reduce=reduce, interventions=ivs, batch_size=2)
        for site in SITES:
            assert torch.allclose(a[site], b[site], atol=1e-6), (reduce, site)
    assert torch.allclose(hooked.run(inputs, ivs, reduce="mean"), planned.run(inputs, ivs, reduce="mean"), atol=1e-6)
    capture_plan = planned.plans[0]
    assert capture_plan["stop_after_reads"] and [r["site"] for r in capture_plan["reads"]] == SITES
    assert capture_plan["interventions"][1] == {"site": SITES[2], "positions": "all", "op": "scale", "factor": 0.5}
    assert planned.plans[-1]["output"] == "reduced"


def test_plugin_backend_executes_grad_and_nll(pair):
    """grad (logit, inner-site objective, with activations) and nll agree with the hook engine."""
    hooked, planned = pair
    inputs = _inputs()
    for objective in (ob.TokenLogit(token=3), {"kind": "inner_site_functional", "site": SITES[2], "direction": torch.ones(D).tolist(), "positions": "all"}):
        for reduce in ("last", "mean"):
            ga, aa = hooked.grad(inputs, SITES[1], objective, reduce=reduce, return_activations=True)
            gb, ab = planned.grad(inputs, SITES[1], objective, reduce=reduce, return_activations=True)
            assert torch.allclose(ga, gb, atol=1e-6) and torch.allclose(aa, ab, atol=1e-6)
    grad_plan = planned.plans[-1]
    assert grad_plan["grad"]["objective"]["kind"] == "inner_site_functional"
    na, ca = hooked.nll(inputs)
    nb, cb = planned.nll(inputs)
    assert torch.allclose(na, nb, atol=1e-6) and torch.equal(ca, cb)
    assert module_hooks.hook_registry(planned.net) == []  # the plan executor registered no hook


def test_local_executor_runs_plans_on_a_real_model(models):
    """A plan executed locally gives exactly what capture and run give."""
    model = models("tiny-llama", "nnsight")
    batch = model.tokenize(["hello world", "hi"])
    plan = Plan(batch, reads=[Read("blocks.1.hook_resid_post", "mean")], output="reduced", output_reduce="last")
    out = LocalExecutor(model).execute(plan)
    assert torch.equal(out.reads["blocks.1.hook_resid_post"], model.capture(batch, ["blocks.1.hook_resid_post"], reduce="mean")["blocks.1.hook_resid_post"])
    assert torch.equal(out.output, model.run(batch))
    assert model.execute(Plan(batch, reads=[Read("blocks.0.hook_resid_post")], stop_after_reads=True)).output is None


def test_the_plugin_author_guide_plan_example_runs(capsys):
    """The plans example in docs/plugin-authors.md runs as written through capture, run and nll."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "plugin-authors.md").read_text()
    code = text.split("## 8. Plans and executors", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "plugin-authors.md", "exec", dont_inherit=True), namespace)
    assert "torch.Size([2, 4])" in capsys.readouterr().out
    assert namespace["model"].nll(namespace["ids"])[1].tolist() == [2, 1]
