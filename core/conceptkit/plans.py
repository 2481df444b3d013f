"""Plans: what one forward pass over one batch must do, as data; executors carry them out.

``capture``, ``run``, ``grad`` and ``nll`` keep their signatures and build one :class:`Plan` per
batch: the batch, the sites to read with their token reduction, the interventions, an optional
gradient request with its objective, whether to stop once every read has fired, and what output
to return. A backend executes plans through one method, ``Model.execute(plan) -> PlanOutput``.
The default is :class:`LocalExecutor`, the hook engine: hooks on the in-process module tree
through the backend's ``_attach`` and ``_forward``. A backend that runs models elsewhere (an
nnsight trace, a remote service, a cluster) overrides ``execute`` and never sees a hook.

Example:
    >>> plan = Plan(batch, reads=[Read("blocks.3.hook_resid_post", "last")], stop_after_reads=True)  # doctest: +SKIP
    >>> model.execute(plan).reads["blocks.3.hook_resid_post"].shape  # doctest: +SKIP
    torch.Size([4, 64])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from conceptkit.data import Batch, Reduce, reduce_site, scatter_grad_reduction
from conceptkit.errors import InputError
from conceptkit.handles import HandleGroup

if TYPE_CHECKING:
    from conceptkit.backends.base import Model
    from conceptkit.interventions import Intervention

Output = Literal["none", "logits", "reduced"]


@dataclass(frozen=True)
class Read:
    """Read ``site`` and reduce it over tokens (``last``, ``mean``, ``all``, positions...)."""

    site: str
    reduce: Reduce = "last"


@dataclass(frozen=True)
class GradRequest:
    """The gradient of ``objective`` (summed over the batch) w.r.t. the activations at ``site``.

    ``objective`` is objective data (a component such as ``TokenLogit``, or its dict) or a
    callable ``(output [B,T,V], batch) -> [B]``. The gradient is reduced with
    :func:`conceptkit.data.scatter_grad_reduction`, so ``g · v`` is a directional derivative.
    """

    site: str
    objective: Any
    reduce: Reduce = "last"
    return_activations: bool = False


@dataclass
class Plan:
    """One forward pass over one batch (see the module docstring). Reads are keyed by site:
    one read per site. Interventions apply in order, before the reads at the same site."""

    batch: Batch
    reads: list[Read] = field(default_factory=list)
    interventions: list["Intervention"] = field(default_factory=list)
    grad: GradRequest | None = None
    stop_after_reads: bool = False  # the rest of the forward is not needed once reads fired
    output: Output = "none"  # "logits": [B, T, V] as the model gives them; "reduced": token-reduced, float32
    output_reduce: Reduce = "last"
    read_dtype: torch.dtype = torch.float32

    def describe(self) -> dict[str, Any]:
        """A JSON-safe summary (for logs and for executors that ship plans elsewhere)."""
        from conceptkit.interventions import dump

        grad = None
        if self.grad is not None:
            obj = self.grad.objective
            grad = {
                "site": self.grad.site,
                "objective": obj.model_dump(mode="json") if hasattr(obj, "model_dump") else repr(obj),
                "reduce": _jsonable(self.grad.reduce),
            }
        return {
            "batch": list(self.batch.input_ids.shape),
            "reads": [{"site": r.site, "reduce": _jsonable(r.reduce)} for r in self.reads],
            "interventions": dump(self.interventions),
            "grad": grad,
            "stop_after_reads": self.stop_after_reads,
            "output": self.output,
        }


@dataclass
class PlanOutput:
    """What an executor returns: reduced reads (detached, on CPU), the output, the gradient."""

    reads: dict[str, torch.Tensor] = field(default_factory=dict)
    output: torch.Tensor | None = None
    grads: torch.Tensor | None = None
    grad_activations: torch.Tensor | None = None


class _StopForward(Exception):
    """Raised by read hooks once every requested site has fired: the rest of the forward pass
    is not needed (capturing layer 12 of 30 costs 12 layers, not 30)."""


class _GradLeaf:
    """Replaces the site's tensor by a leaf that requires grad (the first firing only)."""

    def __init__(self) -> None:
        self.leaves: list[torch.Tensor] = []

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        leaf = t.detach().requires_grad_(True)
        self.leaves.append(leaf)
        return leaf


class LocalExecutor:
    """Executes plans with hooks on the in-process module tree (the backend's ``_attach`` and
    ``_forward``); virtual sites are attached through the model's own dispatch."""

    def __init__(self, model: "Model") -> None:
        self.model = model

    def execute(self, plan: Plan) -> PlanOutput:
        if plan.grad is not None:
            return self._execute_grad(plan)
        model, batch = self.model, plan.batch
        captured: dict[str, torch.Tensor] = {}
        n_reads = len({r.site for r in plan.reads})
        stop = plan.stop_after_reads and plan.output == "none" and n_reads > 0
        out = PlanOutput(reads=captured)
        with model._running(batch, plan.interventions), HandleGroup(description="reads") as group:
            for read in plan.reads:
                group.add(model._hook_at(read.site, self._reader(read, batch, captured, plan.read_dtype, n_reads if stop else 0)))
            with torch.inference_mode():
                try:
                    result = model._forward(batch)
                except _StopForward:
                    return out
        if plan.output == "logits":
            out.output = result
        elif plan.output == "reduced":
            out.output = reduce_site(result, batch, plan.output_reduce).float().cpu()
        return out

    @staticmethod
    def _reader(read: Read, batch: Batch, captured: dict[str, torch.Tensor], dtype: torch.dtype, stop_at: int) -> Callable[[torch.Tensor], None]:
        def hook(t: torch.Tensor) -> None:
            captured[read.site] = reduce_site(t.detach(), batch, read.reduce, read.site).to("cpu", dtype).clone()
            if stop_at and len(captured) == stop_at:
                raise _StopForward

        return hook

    def _execute_grad(self, plan: Plan) -> PlanOutput:
        from conceptkit.objectives import as_objective

        model, batch, request = self.model, plan.batch, plan.grad
        assert request is not None
        objective = as_objective(request.objective, model)
        inner_sites = list(getattr(objective, "sites", ()))
        inner: dict[str, torch.Tensor] = {}
        captured: dict[str, torch.Tensor] = {}
        leaf = _GradLeaf()

        def keep(site: str) -> Callable[[torch.Tensor], None]:
            def hook(t: torch.Tensor) -> None:
                inner.setdefault(site, t)

            return hook

        with model._running(batch, plan.interventions), HandleGroup(description="grad") as group:
            group.add(model._hook_at(request.site, leaf))
            for site in inner_sites:
                group.add(model._hook_at(site, keep(site)))
            for read in plan.reads:
                group.add(model._hook_at(read.site, self._reader(read, batch, captured, plan.read_dtype, 0)))
            with torch.enable_grad():
                result = model._forward(batch)
                if not leaf.leaves:
                    raise InputError(f"site {request.site!r} did not fire during the forward pass")
                missing = [s for s in inner_sites if s not in inner]
                if missing:
                    raise InputError(f"the objective's site {missing[0]!r} did not fire during the forward pass")
                values = objective(result, batch, inner) if inner_sites else objective(result, batch)
                (g,) = torch.autograd.grad(values.sum(), leaf.leaves[0], allow_unused=True)
        if g is None:
            raise InputError(
                f"the objective does not depend on site {request.site!r} (it reads a site computed before it)"
            )
        out = PlanOutput(reads=captured, grads=scatter_grad_reduction(g, batch, request.reduce, request.site).float().cpu())
        if request.return_activations:
            out.grad_activations = reduce_site(leaf.leaves[0].detach(), batch, request.reduce, request.site).float().cpu()
        if plan.output == "logits":
            out.output = result.detach()
        elif plan.output == "reduced":
            out.output = reduce_site(result.detach(), batch, plan.output_reduce).float().cpu()
        return out


def _jsonable(reduce: Reduce) -> Any:
    return reduce if isinstance(reduce, str) else list(reduce)
