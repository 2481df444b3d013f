"""The gradient-ascent unlearning baseline (GA), trained on one form of the fact only.

GA maximises the negative log-likelihood of the answer given the training prompt (the
``fill_blank`` form) with Adam for a few steps over every MLP weight (``W_in``, ``W_gate``,
``W_out`` of every layer; the parameters ROCR also edits, and where facts are thought to live).
The paper's claim is that such training forgets its own form much more than other forms of the
same fact; :mod:`conceptkit_rocr.evaluate` measures exactly that. The trained weights are kept
as a reversible edit (the handle restores the exact bits).
"""

from __future__ import annotations

from typing import Any

import torch

from conceptkit.api import Handle, HandleGroup
from conceptkit_rocr.templates import pad_right

ROLES = ("in", "gate", "out")


def _mlp_params(model: Any) -> list[tuple[str, int, torch.nn.Parameter]]:
    out = []
    for layer in range(model.n_layers):
        for role in ROLES:
            try:
                out.append((role, layer, model.weights.parameter(role, layer)))
            except Exception:  # noqa: BLE001 - e.g. no gate in GPT-2
                continue
    return out


def gradient_ascent(model: Any, items: list[tuple[str, str]], *, lr: float = 2e-5, steps: int = 5) -> "GAEdit":
    """Train by gradient ascent on ``(prompt, answer)`` pairs; returns the trained weights (the
    model itself is left unchanged)."""
    tok = model.tokenizer
    rows, n_prompt = [], []
    for prompt, answer in items:
        ids = list(tok(prompt + answer, add_special_tokens=True)["input_ids"])
        rows.append(ids)
        n_prompt.append(len(tok(prompt, add_special_tokens=True)["input_ids"]))
    enc = pad_right(rows, 0)
    params = _mlp_params(model)
    originals = [p.detach().clone() for _, _, p in params]
    flags = [p.requires_grad for _, _, p in params]
    batch = model.tokenize(enc)
    opt = torch.optim.Adam([p for _, _, p in params], lr=lr)
    losses = []
    try:
        for p in (p for _, _, p in params):
            p.requires_grad_(True)
        for _ in range(steps):
            opt.zero_grad()
            with torch.enable_grad():
                logits = model._forward(batch).float()  # TODO(public-surface): a differentiable forward
                logp = torch.log_softmax(logits[:, :-1], -1)
                nll = []
                for i, ids in enumerate(rows):
                    t = torch.tensor(ids[n_prompt[i] :])
                    nll.append(-logp[i, n_prompt[i] - 1 : len(ids) - 1].gather(-1, t.unsqueeze(-1)).mean())
                loss = -torch.stack(nll).mean()  # ascend the answer's NLL
                loss.backward()
            opt.step()
            losses.append(float(-loss))
        trained = [p.detach().clone() for _, _, p in params]
    finally:
        with torch.no_grad():
            for (_, _, p), orig, flag in zip(params, originals, flags):
                p.copy_(orig)
                p.grad = None
                p.requires_grad_(flag)
    return GAEdit([(r, l) for r, l, _ in params], trained, losses, lr, steps)


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
