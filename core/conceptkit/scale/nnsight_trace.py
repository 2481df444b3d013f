"""The nnsight trace executor: a Plan compiled into one ``nn_model.trace(...)``.

The hook executor (the default) runs torch hooks on the in-process module. This one expresses a
plan in nnsight's own terms, so it can run where nnsight runs: ``remote=False`` (here, through
nnsight's interleaver), ``remote="local"`` (nnsight serialises the trace exactly as for NDIF,
deserialises it with non-installed modules hidden and runs it here) and ``remote=True`` (NDIF).

How a plan becomes a trace: every read and intervention site maps to a module's input or output
(``Tap`` with the identity view); the steps are ordered as the modules run; at each step the
trace body (:func:`_trace_body`, plain torch and nnsight, no conceptkit code, so a server can run
it) applies the interventions (``add``, ``scale``, ``replace``, ``affine``, ``project_out``, each
as ``torch.where(mask, new, x)`` with the token mask computed on the client), writes the value
back through nnsight's assignment (``envoy.output = ...``), and ``.save()``s the value for reads.
Token reductions happen on the client from the saved ``[B, T, ...]`` values, with the same
function as the hook executor, so results agree (≤1e-5; in practice bit for bit on CPU).

What cannot be expressed is refused before anything is sent (:class:`~conceptkit.errors.CapabilityError`):
gradient plans whose objective is not linear in the logits (loss, log-probabilities, inner-site
functionals, Python callables), plugin intervention ops, virtual sites (SAE latents), sites read through a view
(attention heads, patterns, norm scales). Select it with ``model.with_executor("trace", remote=...)``
on an nnsight model.

Generation: fixed interventions run inside ``nn_model.generate`` (:mod:`conceptkit.scale.trace_generate`);
a :class:`~conceptkit.generation.GenerationPolicy` runs as one trace per step and prompt (the plan
path of :mod:`conceptkit.generation`, the prefix recomputed each step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from conceptkit.data import reduce_site
from conceptkit.errors import CapabilityError
from conceptkit.plans import Plan, PlanOutput

if TYPE_CHECKING:
    from conceptkit.backends.hf import HFModel

_EXPRESSIBLE = ("add", "scale", "replace", "affine", "project_out")


@dataclass
class _Step:
    path: str
    io: str
    ops: list[tuple[str, torch.Tensor, Any, Any]] = field(default_factory=list)
    read: bool = False
    grad: bool = False  # the gradient is taken w.r.t. this value (after the interventions here)

    def as_tuple(self) -> tuple[str, str, list, bool, bool]:
        return (self.path, self.io, self.ops, self.read, self.grad)


def _trace_body(nn_model: Any, inputs: dict[str, torch.Tensor], steps: list, want: str, remote: Any,
                objective: Any = None, stop: bool = False) -> tuple[list, Any, Any]:
    """The trace nnsight compiles and (for remote runs) ships: torch and nnsight only.

    ``objective`` (gradient plans): ``(b, t, v, w)`` index tensors and weights of a linear
    functional of the logits, ``Σ w · logits[b, t, v]``; its gradient w.r.t. the value marked
    ``grad`` is read with nnsight's ``.grad`` inside ``loss.backward()``."""
    saved = []
    result = None
    grad = None
    leaf = None
    with nn_model.trace(inputs, remote=remote) as tracer:
        for path, io, ops, read, wants_grad in steps:
            env = nn_model.get(path)
            val = env.output if io == "output" else env.input
            x = val[0] if isinstance(val, tuple) else val
            for kind, mask, a, b in ops:
                if kind == "add":
                    new = x + a.to(x.dtype)
                elif kind == "scale":
                    new = x * a
                elif kind == "replace":
                    new = a.to(x.dtype).expand_as(x)
                elif kind == "affine":
                    new = x @ a.to(x.dtype).T
                    if b is not None:
                        new = new + b.to(x.dtype)
                else:  # project_out: a = orthonormal basis [d, k]
                    q = a.to(x.dtype)
                    new = x - (x @ q) @ q.T
                m = mask.reshape(mask.shape[0], mask.shape[1], *([1] * (x.dim() - 2)))
                x = torch.where(m, new, x)
            if wants_grad:
                x = x.detach().requires_grad_(True)
                leaf = x
            if ops or wants_grad:
                if io == "output":
                    env.output = (x, *val[1:]) if isinstance(val, tuple) else x
                else:
                    env.input = x
            if read:
                saved.append(x.save())
        if stop:
            tracer.stop()  # every read fired and nothing later is needed: skip the rest of the forward
        if want != "none" or objective is not None:
            out = nn_model.output
            full = out["logits"] if want != "last_hidden_state" else out["last_hidden_state"]
            if want != "none":
                result = full.save()
            if objective is not None:
                b, t, v, w = objective
                loss = (full[b, t, v] * w.to(full.dtype)).sum()
                with loss.backward():
                    grad = leaf.grad.save()
    return saved, result, grad


class TraceExecutor:
    """Executes plans as nnsight traces on an nnsight-backed model (see the module docstring)."""

    def __init__(self, model: "HFModel", remote: bool | str = False) -> None:
        nn_model = getattr(model, "nnsight_model", None)
        if nn_model is None:
            raise CapabilityError(
                f"the trace executor needs a model loaded with backend='nnsight', got backend {model.backend_name!r}"
            )
        if remote not in (False, True, "local"):
            raise CapabilityError(f"remote must be False, True or 'local', got {remote!r}")
        self.model, self.nn_model, self.remote = model, nn_model, remote

    # -- compiling ---------------------------------------------------------------------------------
    def _where(self, site: str) -> tuple[str, str, int]:
        """(module path, io, execution rank) of a site; refuses sites a trace cannot reach."""
        model = self.model
        if site in model._virtual_sites:
            raise CapabilityError(f"site {site!r} is a virtual site (computed by conceptkit code); the trace executor cannot run it")
        order = self._order()
        if site in model._sites:
            from conceptkit.sites import parse

            parsed = parse(site)
            tap = model.family.taps[parsed.kind]
            if tap.view != "identity":
                raise CapabilityError(
                    f"site {site!r} is read through a {tap.view!r} view, which the trace executor does not express; "
                    "use the hook executor"
                )
            path = model._path(parsed.kind, parsed.layer)
            io = tap.io
        else:
            path, _, io = site.partition(":")
            io = io or "output"
            if path not in model._modules or io not in ("input", "output"):
                raise CapabilityError(f"site {site!r} is not a module input/output the trace executor can reach")
        assert path is not None
        return path, io, order[(path, io)]

    def _order(self) -> dict[tuple[str, str], int]:
        """Rank of each module input and output in a forward: a module's input comes before its
        children's, its output after theirs (children in registration order, which is how the
        HF transformer families call them)."""
        if getattr(self, "_ranks", None) is None:
            ranks: dict[tuple[str, str], int] = {}

            def walk(module: torch.nn.Module, path: str) -> None:
                ranks[(path, "input")] = len(ranks)
                for name, child in module.named_children():
                    walk(child, f"{path}.{name}" if path else name)
                ranks[(path, "output")] = len(ranks)

            walk(self.model.hf, "")
            self._ranks = ranks
        return self._ranks

    def compile(self, plan: Plan) -> list[_Step]:
        """The plan as ordered trace steps; raises CapabilityError for anything not expressible."""
        steps: dict[tuple[str, str], tuple[int, _Step]] = {}

        def step(site: str) -> _Step:
            path, io, rank = self._where(site)
            if (path, io) not in steps:
                steps[(path, io)] = (rank, _Step(path, io))
            return steps[(path, io)][1]

        for item in plan.interventions:
            op = getattr(item, "op", type(item).__name__)
            if op not in _EXPRESSIBLE:
                raise CapabilityError(
                    f"intervention op {op!r} cannot be expressed in an nnsight trace (it runs conceptkit or plugin code); "
                    f"the trace executor supports {', '.join(_EXPRESSIBLE)}"
                )
            mask = plan.batch.position_mask(item.positions)
            step(item.site).ops.append((op, mask, *self._params(item)))
        for read in plan.reads:
            step(read.site).read = True
        if plan.grad is not None:
            step(plan.grad.site).grad = True
        return [s for _, s in sorted(steps.values(), key=lambda rs: rs[0])]

    @staticmethod
    def _params(item: Any) -> tuple[Any, Any]:
        op = item.op
        if op == "add":
            return item.coeff * item.vector, None
        if op == "scale":
            return float(item.factor), None
        if op == "replace":
            return item.value, None
        if op == "affine":
            return item.weight, item.bias
        dirs = item.directions.reshape(-1, item.directions.shape[-1])
        q, _ = torch.linalg.qr(dirs.to(torch.float64).T)
        return q, None

    def _linear_objective(self, plan: Plan) -> tuple[torch.Tensor, ...]:
        """The objective as ``Σ w · logits[b, t, v]``: found on the client as the gradient of the
        objective at zero logits. Only objectives linear in the logits qualify (token logits,
        logit differences, logit functionals without log-probabilities); others are refused."""
        from conceptkit.objectives import as_objective

        request = plan.grad
        assert request is not None
        if request.return_activations:
            raise CapabilityError("return_activations is not supported by the trace executor; use the hook executor")
        obj = request.objective
        kind = obj.get("kind") if isinstance(obj, dict) else getattr(obj, "kind", None)
        if kind not in ("token_logit", "logit_diff", "logit_functional") or (
            getattr(obj, "log_prob", False) if not isinstance(obj, dict) else obj.get("log_prob", False)
        ):
            what = f"objective kind {kind!r}" if kind else "a Python callable objective"
            raise CapabilityError(
                f"{what} cannot be expressed in an nnsight trace; the trace executor takes objectives linear in the "
                "logits (token_logit, logit_diff, logit_functional without log_prob); use the hook executor"
            )
        model, batch = self.model, plan.batch
        if model.is_encoder:
            raise CapabilityError("the trace executor takes gradients of language-model logits only")
        fn = as_objective(obj, model)
        B, T = batch.input_ids.shape
        V = model.hf.get_output_embeddings().weight.shape[0]
        zeros = torch.zeros(B, T, V, requires_grad=True)
        (w,) = torch.autograd.grad(fn(zeros, batch).sum(), zeros)
        b, t, v = w.nonzero(as_tuple=True)
        return b, t, v, w[b, t, v]

    # -- running -----------------------------------------------------------------------------------
    def generate_batch(self, run: Any, settings: dict[str, Any], max_new_tokens: int, eos: list[int], pad_id: int) -> torch.Tensor:
        """One left-padded batch of ``conceptkit.generation`` (fixed interventions, no policy)
        through ``nn_model.generate``; see :mod:`conceptkit.scale.trace_generate`."""
        from conceptkit.scale.trace_generate import generate_fixed

        return generate_fixed(self, run, settings, max_new_tokens, eos, pad_id)

    def execute(self, plan: Plan) -> PlanOutput:
        steps = self.compile(plan)  # every refusal happens here, before anything is sent
        objective = self._linear_objective(plan) if plan.grad is not None else None
        batch, model = plan.batch, self.model
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
        want = "none"
        if plan.output != "none":
            want = "logits" if not model.is_encoder else "last_hidden_state"
        stop = plan.stop_after_reads and plan.output == "none" and objective is None and bool(plan.reads)
        saved, result, grad = _trace_body(self.nn_model, inputs, [s.as_tuple() for s in steps], want, self.remote, objective, stop)
        values = iter(saved)
        by_path = {}
        for s in steps:
            if s.read:
                by_path[(s.path, s.io)] = next(values)
        out = PlanOutput()
        for read in plan.reads:
            path, io, _ = self._where(read.site)
            t = by_path[(path, io)]
            out.reads[read.site] = reduce_site(t.detach(), batch, read.reduce, read.site).to("cpu", plan.read_dtype).clone()
        if plan.grad is not None:
            from conceptkit.data import scatter_grad_reduction

            if grad is None:
                raise CapabilityError(f"no gradient reached site {plan.grad.site!r} (is it computed after the logits?)")
            out.grads = scatter_grad_reduction(grad, batch, plan.grad.reduce, plan.grad.site).float().cpu()
        if plan.output == "logits":
            out.output = result.detach()
        elif plan.output == "reduced":
            out.output = reduce_site(result.detach(), batch, plan.output_reduce).float().cpu()
        return out
