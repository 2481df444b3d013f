"""The gradient-ascent unlearning baseline (GA), trained on one form of the fact only.

GA maximises the negative log-likelihood of the answer given the training prompt (the
``fill_blank`` form) with Adam for a few steps over every MLP weight (``W_in``, ``W_gate``,
``W_out`` of every layer; the parameters ROCR also edits, and where facts are thought to live).
The paper's claim is that such training forgets its own form much more than other forms of the
same fact; :mod:`conceptkit_rocr.evaluate` measures exactly that. The trained weights are kept
as a reversible edit (the handle restores the exact bits).

Gradients come from the public model interface only: for a linear map ``y = x W`` (TL
``[in, out]`` layout, no bias term involved) the weight gradient is ``Σ_t x_tᵀ ∂L/∂y_t`` over the
real tokens, so ``model.capture`` of the inputs (``ln2.hook_out``, ``mlp.hook_post``) and
``model.grad`` of the objective at the outputs (``mlp.hook_pre`` / ``hook_pre_linear`` /
``hook_mlp_out``, recorded by a pass-through :class:`GradTap` intervention in one backward) give
it exactly: one forward for the inputs and one forward and backward per step.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from conceptkit.api import Handle, HandleGroup, InputError, Intervention
from conceptkit_rocr.scoring import score_answers
from conceptkit_rocr.templates import pad_id, pad_right

ROLES = ("in", "gate", "out")


def _sites(model: Any, role: str, layer: int, gated: bool) -> tuple[str, str]:
    """(input site, output site) of the MLP linear map ``role`` at ``layer``: ``y = x W``."""
    b = f"blocks.{layer}"
    if role == "out":
        return f"{b}.mlp.hook_post", f"{b}.hook_mlp_out"
    if role == "gate":
        return f"{b}.ln2.hook_out", f"{b}.mlp.hook_pre"
    if role == "in":
        return f"{b}.ln2.hook_out", f"{b}.mlp.hook_pre_linear" if gated else f"{b}.mlp.hook_pre"
    raise InputError(f"unknown MLP role {role!r}; known: {ROLES}")


def _mlp_params(model: Any) -> list[tuple[str, int]]:
    out = []
    for layer in range(model.n_layers):
        for role in ROLES:
            try:
                model.weights.parameter(role, layer)
            except Exception:  # noqa: BLE001 - e.g. no gate in GPT-2
                continue
            out.append((role, layer))
    return out


def answer_nll_objective(rows: list[list[int]], n_prompt: list[int]):
    """Objective ``(logits [B, T, V], batch) -> [B]``: each item's mean answer NLL divided by the
    number of items (so the batch sum is the mean over items, the loss GA ascends)."""

    def objective(out: torch.Tensor, batch: Any) -> torch.Tensor:
        logp = torch.log_softmax(out.float(), -1)
        vals = []
        for i, ids in enumerate(rows):
            t = torch.tensor(ids[n_prompt[i] :], device=out.device)
            vals.append(-logp[i, n_prompt[i] - 1 : len(ids) - 1].gather(-1, t.unsqueeze(-1)).mean() / len(rows))
        return torch.stack(vals)

    return objective


class GradTap(Intervention):
    """Leaves the site's activations as they are and records their gradient during a backward
    pass (a tensor hook), so that one ``model.grad`` call yields ``∂L/∂y`` at every tapped site.

    Process-local (the gradients go to an in-memory list keyed by ``tap``), so it is not
    registered as a named op: it is passed to ``model.grad`` as an object.
    """

    op: Literal["rocr_grad_tap"] = "rocr_grad_tap"
    tap: str

    def apply(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x.register_hook(lambda g, key=self.tap: _TAPS.setdefault(key, []).append(g.detach()))
        return x


_TAPS: dict[str, list[torch.Tensor]] = {}


def mlp_weight_grads(model: Any, batch: dict[str, torch.Tensor], objective: Any, where: list[tuple[str, int]]) -> list[torch.Tensor]:
    """``∂ objective.sum() / ∂W`` (TL ``[in, out]``) for each ``(role, layer)`` in ``where``.

    One ``model.capture`` of the inputs and one ``model.grad`` (gradient leaf at the first block's
    input, :class:`GradTap` at every output site) per call, so one forward and backward per step.
    """
    gated = any(r == "gate" for r, _ in where)
    pairs = [_sites(model, role, layer, gated) for role, layer in where]
    inputs = model.capture(batch, list(dict.fromkeys(i for i, _ in pairs)), reduce="all")
    outputs = list(dict.fromkeys(o for _, o in pairs))
    keys = {o: f"{id(batch)}:{o}" for o in outputs}
    try:
        model.grad(batch, "blocks.0.hook_resid_pre", objective, reduce="last", interventions=[GradTap(site=o, tap=keys[o]) for o in outputs])
        real = batch["attention_mask"].bool()
        out_grads = {}
        for o in outputs:
            taps = _TAPS.get(keys[o], [])
            if len(taps) != 1:
                raise InputError(f"expected one gradient at {o!r}, got {len(taps)}")
            out_grads[o] = taps[0][real.to(taps[0].device)].double().cpu()  # [n_tokens, out], real tokens in order
    finally:
        for k in keys.values():
            _TAPS.pop(k, None)
    return [inputs[site_in].double().T @ out_grads[site_out] for site_in, site_out in pairs]


def gradient_ascent(model: Any, items: list[tuple[str, str]], *, lr: float = 2e-5, steps: int = 5) -> "GAEdit":
    """Train by gradient ascent on ``(prompt, answer)`` pairs; returns the trained weights (the
    model itself is left unchanged)."""
    tok = model.tokenizer
    rows, n_prompt = [], []
    for prompt, answer in items:
        ids = list(tok(prompt + answer, add_special_tokens=True)["input_ids"])
        rows.append(ids)
        n_prompt.append(len(tok(prompt, add_special_tokens=True)["input_ids"]))
    batch = pad_right(rows, pad_id(tok))
    objective = answer_nll_objective(rows, n_prompt)
    where = _mlp_params(model)
    W = model.weights
    # TL-layout float32 copies are trained; the model's weights change only inside edit handles
    params = [W.in_out(role, W.parameter(role, layer)).detach().clone().float().requires_grad_(True) for role, layer in where]
    opt = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    for _ in range(steps):
        group = HandleGroup(description="gradient-ascent step")
        try:
            for (role, layer), p in zip(where, params):
                new = W.in_out(role, p.detach())
                group.add(W.edit(role, layer, lambda old, new=new: new.to(old.dtype).contiguous().clone()))
            nll = sum(-math.log(max(sc.prob, 1e-300)) for sc in score_answers(model, items)) / len(items)  # mean answer NLL, logged
            grads = mlp_weight_grads(model, batch, objective, where)
        finally:
            group.remove()
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad = (-g).to(p.dtype)  # ascend the answer's NLL = descend its negative
        opt.step()
        losses.append(nll)
    trained = [W.in_out(role, p.detach()).to(W.parameter(role, layer).dtype).contiguous().clone() for (role, layer), p in zip(where, params)]
    return GAEdit(where, trained, losses, lr, steps)


class GAEdit:
    """Trained MLP weights; ``apply(model)`` swaps them in, the handle restores the originals."""

    def __init__(self, where: list[tuple[str, int]], weights: list[torch.Tensor], nll_per_step: list[float], lr: float, steps: int) -> None:
        self.where, self.weights, self.nll_per_step, self.lr, self.steps = where, weights, nll_per_step, lr, steps

    def apply(self, model: Any) -> Handle:
        group = HandleGroup(description="gradient-ascent baseline")
        try:
            for (role, layer), w in zip(self.where, self.weights):
                group.add(model.weights.edit(role, layer, lambda _old, w=w: w.clone()))
        except BaseException:
            group.remove()
            raise
        return group
