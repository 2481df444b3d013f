"""The ``reject`` value (ROME/MEMIT-style ``compute_z``): ``z = h + δ`` at the target's last token,
optimised so that every context template followed by the target outputs a refusal.

Adam on ``δ`` with the reference's loss: the refusal's NLL averaged over the templates, plus
``kl_factor · KL(p_δ ‖ p_0)`` of the next-token distribution at the subject's last token of
``"<subject> is a"`` (which keeps the subject's other predictions; ``δ`` is added there too), plus
the weight decay ``wd ‖δ‖ / ‖h‖²``; then the norm clamp ``‖δ‖ ≤ clamp_norm_factor ‖h‖``. As in the
reference the last of ``v_steps`` iterations stops before its update (``v_steps - 1`` updates at
most), and an iteration whose total loss (computed for the current ``δ``, before its update) is
below ``stop_loss`` (reference 0.05) ends the optimisation there. Gradients come from
``model.grad`` with ``δ`` added as an intervention at that token; the loss terms are the
objectives' values recorded during those same forward passes (no extra pass).
"""

from __future__ import annotations

from typing import Any

import torch

from conceptkit.api import Add
from conceptkit_rocr.templates import REQUEST, SLOT, subject_prefix_ids


def reject_value(
    model: Any,
    target: str,
    templates: list[str],
    z_layer: int,
    *,
    reject_target: str = " Unfortunately",
    v_lr: float = 0.1,
    v_steps: int = 25,
    v_weight_decay: float = 0.5,
    clamp_norm_factor: float = 1.0,
    kl_factor: float = 0.125,
    stop_loss: float | None = 5e-2,
    trace: list[dict[str, float]] | None = None,
) -> torch.Tensor:
    """The optimised value ``z = h + δ``; ``trace`` (a list) receives each iteration's loss terms
    (``nll``, ``kl``, ``wd``, ``loss``) as computed before that iteration's update."""
    tok = model.tokenizer
    site = f"blocks.{z_layer}.hook_resid_post"
    answer = list(tok(reject_target, add_special_tokens=False)["input_ids"])
    prompts = []
    for t in templates:
        context = t.replace(SLOT, REQUEST, 1)
        prefix, suffix = context.split(SLOT, 1)
        ids = list(tok(prefix + target + suffix, add_special_tokens=True)["input_ids"]) + answer
        idx = len(subject_prefix_ids(tok, t, target)) - 1
        prompts.append((ids, idx))
    n_ans = len(answer)

    last: dict[str, torch.Tensor] = {}  # the objectives' latest values, recorded as the gradients are taken

    def objective(out: torch.Tensor, batch: Any) -> torch.Tensor:
        logp = torch.log_softmax(out[:, -n_ans - 1 : -1].float(), -1)
        value = logp.gather(-1, torch.tensor(answer, device=out.device).reshape(1, -1, 1)).squeeze(-1).mean(-1)
        last["nll"] = value.detach().double().cpu()
        return value

    def recorded(key: str) -> torch.Tensor:
        if key not in last:  # objectives given as callables always run in this process
            raise RuntimeError(f"the {key} objective's value was not recorded by model.grad")
        return last.pop(key)

    from conceptkit_rocr.edit import read_at_subject

    init = read_at_subject(model, templates[:1], target, site)[0]  # the unedited value, first template
    # KL prompt "<subject> is a": the distribution at the subject's last token, before any change
    kl_ids = list(tok(target, add_special_tokens=True)["input_ids"])  # "<subject> is a" cut after the subject (causal)
    kl_idx = len(kl_ids) - 1
    kl_batch = {"input_ids": torch.tensor([kl_ids]), "attention_mask": torch.ones(1, len(kl_ids), dtype=torch.long)}
    kl_init = torch.log_softmax(model.run(kl_batch, reduce=[kl_idx])[0, 0].double(), -1)

    def kl_objective(out: torch.Tensor, batch: Any) -> torch.Tensor:
        lp = torch.log_softmax(out[:, kl_idx].double(), -1)  # [1, V]
        value = (lp.exp() * (lp - kl_init.to(lp.device))).sum(-1).float()  # KL(p_delta || p_0), as kl_div(init, cur, log_target)
        last["kl"] = value.detach().double().cpu()
        return value

    delta = torch.zeros(model.d_model, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=v_lr)
    for it in range(v_steps):
        if it == v_steps - 1 and stop_loss is None and trace is None:
            break  # the reference computes the last iteration's loss and stops before updating
        grad = torch.zeros(model.d_model)
        nlls = []
        for ids, idx in prompts:
            batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
            add = Add(site=site, vector=delta.detach().clone(), positions=[idx])
            g = model.grad(batch, site, objective, reduce=[idx], interventions=[add])
            grad -= g[0, 0] / len(prompts)  # minimise the negative log-likelihood
            nlls.append(-recorded("nll"))
        if kl_factor:
            add = Add(site=site, vector=delta.detach().clone(), positions=[kl_idx])
            grad += kl_factor * model.grad(kl_batch, site, kl_objective, reduce=[kl_idx], interventions=[add])[0, 0]
            kl = float(recorded("kl").sum())
        norm = delta.detach().norm()
        terms = dict(nll=float(torch.cat(nlls).mean()), kl=kl_factor * kl if kl_factor else 0.0, wd=float(v_weight_decay * norm / init.norm() ** 2))
        terms["loss"] = terms["nll"] + terms["kl"] + terms["wd"]
        if trace is not None:
            trace.append(terms)
        if stop_loss is not None and terms["loss"] < stop_loss:
            break  # the reference's early stop: the loss of the current delta is small enough
        if it == v_steps - 1:
            break  # the last iteration's loss is computed, then the reference stops before updating
        opt.zero_grad()
        wd = v_weight_decay * delta.detach() / (norm.clamp_min(1e-12) * init.norm() ** 2) if norm > 0 else torch.zeros_like(grad)
        delta.grad = grad + wd.float()
        opt.step()
        with torch.no_grad():
            limit = clamp_norm_factor * init.norm()
            if delta.norm() > limit:
                delta.mul_(limit / delta.norm())
    return init + delta.detach().double()
