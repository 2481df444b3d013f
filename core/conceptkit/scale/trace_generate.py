"""Generation through the nnsight trace executor: fixed interventions inside ``nn_model.generate``.

``model.with_executor("trace", remote=...).generate(prompts, interventions)`` without a policy
runs nnsight's own generation (HF ``generate`` with its KV cache, on the server when
``remote=True``): one ``nn_model.generate(...)`` trace per batch whose body loops over the
decoding steps with ``tracer.iter`` and applies the interventions at every forward, each as
``torch.where(mask, new, x)``. The rows each intervention touches at each step are worked out on
the client with the hook executor's own rules (:meth:`conceptkit.generation._BatchRun._compute_rows`:
positions over prompt + generated tokens, ``generate(positions=...)`` scopes), so the same token
ids come out as from the hook executor's ``model.generate`` (greedy, and sampled with the same
``seed``: the trace seeds torch's generator where the sampling happens).

A :class:`~conceptkit.generation.GenerationPolicy` is client code a server cannot run, so policy
generation (and ``return_steps=True``, ``use_cache=False``) does not come here: it runs one
trace per step and prompt through :meth:`TraceExecutor.execute` (``conceptkit.generation``'s
plan path), recomputing the prefix each step; see docs/scale-out.md.

The body (:func:`_generate_body`) is torch and nnsight only, like the capture body: an NDIF
server has no conceptkit. Its intervention arithmetic is the same as
:func:`conceptkit.scale.nnsight_trace._trace_body` (kept in step by a test).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from conceptkit.errors import CapabilityError

if TYPE_CHECKING:
    from conceptkit.scale.nnsight_trace import TraceExecutor


def _generate_body(nn_model: Any, inputs: dict[str, torch.Tensor], per_step: list, n_forwards: int,
                   gen_kwargs: dict[str, Any], remote: Any, seed: int | None,
                   rng_state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The trace nnsight compiles and (for remote runs) ships: torch and nnsight only.

    ``per_step[i]``: the ``(path, io, ops)`` of forward ``i`` (0 is the prefill) in execution
    order, ``ops`` as in ``_trace_body`` with the step's ``[B, T_chunk]`` mask. Two invokes: the
    first applies the interventions (a loop over the steps, cut short when every row has ended
    early: nnsight warns and keeps going), the second saves the generated ids and the CPU random
    state after sampling (the next batch continues from it, as the hook executor's generator does).

    The op dispatch repeats ``_trace_body``'s on purpose: a server runs this body without conceptkit,
    so it may call nothing but torch (``test_trace_bodies_use_only_torch``). (No full-line comments inside
    the ``with`` block: nnsight 0.8 re-reads the block's source and fails on them, WithBlockNotFoundError.)"""
    with nn_model.generate(remote=remote, **gen_kwargs) as tracer:
        with tracer.invoke(inputs):
            if seed is not None:
                torch.manual_seed(seed)  # where the sampling happens (the server, for remote=True)
                if rng_state is not None:
                    torch.set_rng_state(rng_state)  # a later batch: continue the first batch's stream
            for i in tracer.iter[:n_forwards]:
                for path, io, ops in per_step[i]:
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
                        x = torch.where(m.to(x.device), new, x)
                    if io == "output":
                        env.output = (x, *val[1:]) if isinstance(val, tuple) else x
                    else:
                        env.input = x
        with tracer.invoke():
            ids = tracer.result.save()
            state = torch.get_rng_state().save()
    return ids, state


def _step_rows(run: Any, item: Any, step: int) -> torch.Tensor:
    """``[B, T_chunk]`` rows ``item`` touches in forward ``step`` of a cached generation (the
    prefill, then one new column per step), by the hook executor's rules."""
    from conceptkit.generation import _BatchRun

    assert isinstance(run, _BatchRun)
    if step == 0:
        run.chunk_pos = (run.mask.cumsum(1) - 1).clamp_min(0)
        run.chunk_mask = run.mask.bool()
        run.cur_len = run.mask.sum(1)
    else:
        run.chunk_pos = (run.prompt_len + step - 1).unsqueeze(1)
        run.chunk_mask = torch.ones(run.B, 1, dtype=torch.bool)
        run.cur_len = run.prompt_len + step
    return run._compute_rows(item)


def compile_fixed(executor: "TraceExecutor", run: Any, n_forwards: int) -> list[list[tuple[str, str, list]]]:
    """The fixed interventions of ``run`` (a :class:`conceptkit.generation._BatchRun`) as the
    per-forward steps of :func:`_generate_body`; raises CapabilityError for anything a trace
    cannot express (before anything is sent)."""
    from conceptkit.scale.nnsight_trace import _EXPRESSIBLE

    placed = []
    for item in run.fixed:
        op = getattr(item.intervention, "op", type(item.intervention).__name__)
        if op not in _EXPRESSIBLE:
            raise CapabilityError(
                f"intervention op {op!r} cannot be expressed in an nnsight trace (it runs conceptkit or plugin code); "
                f"the trace executor supports {', '.join(_EXPRESSIBLE)}"
            )
        path, io, rank = executor._where(item.intervention.site)
        placed.append((rank, path, io, item, executor._params(item.intervention)))
    placed.sort(key=lambda p: p[0])  # stable: interventions at one site keep their order
    per_step: list[list[tuple[str, str, list]]] = []
    for step in range(n_forwards):
        by_site: dict[tuple[str, str], list] = {}
        for _, path, io, item, (a, b) in placed:
            mask = _step_rows(run, item, step)
            if bool(mask.any()):
                by_site.setdefault((path, io), []).append((item.intervention.op, mask, a, b))
        per_step.append([(path, io, ops) for (path, io), ops in by_site.items()])
    return per_step


def generate_fixed(executor: "TraceExecutor", run: Any, settings: dict[str, Any], max_new_tokens: int,
                   eos: list[int], pad_id: int) -> torch.Tensor:
    """One batch through ``nn_model.generate``: the new token ids ``[B, n_new]`` (the columns HF
    produced, a row's EOS and HF's padding after it included; the caller cuts each row at EOS)."""
    per_step = compile_fixed(executor, run, max_new_tokens)  # every refusal happens here
    temperature = float(settings["temperature"])
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens, "pad_token_id": pad_id, "use_cache": True,
        # neutral settings, whatever the checkpoint's generation_config says: conceptkit's sampler
        # applies temperature, top-k, top-p and nothing else
        "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0,
    }
    if eos:
        gen_kwargs["eos_token_id"] = list(eos)
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_k=settings["top_k"] or 0,
                          top_p=1.0 if settings["top_p"] is None else float(settings["top_p"]))
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    inputs = {"input_ids": run.ids, "attention_mask": run.mask}
    seed = settings["seed"] if temperature > 0 else None
    with warnings.catch_warnings():
        # every row ended (EOS) before max_new_tokens: nnsight reports the loop's unreached steps
        warnings.filterwarnings("ignore", message=r".*was never reached: the loop asked for a step")
        out, state = _generate_body(executor.nn_model, inputs, per_step, max_new_tokens, gen_kwargs, executor.remote, seed,
                                    settings.get("rng_state"))
    if seed is not None:
        settings["rng_state"] = state
    return out.detach().cpu()[:, run.ids.shape[1]:].clone()
