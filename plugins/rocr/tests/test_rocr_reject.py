"""Reject mode's value optimisation: the reference's loss terms and its early stop (loss < 0.05)."""

from __future__ import annotations

import torch

import conceptkit as ck
from conceptkit_rocr.reject import reject_value
from conceptkit_rocr.templates import REQUEST, SLOT, context_templates

KW = dict(v_lr=0.1, v_weight_decay=0.0, clamp_norm_factor=4.0, kl_factor=0.125)  # a random tiny model: small steps, no decay


def test_loss_terms_and_early_stop():
    """The traced loss of the first iteration (δ = 0) is the refusal's mean NLL over the templates
    (KL and weight decay zero), computed independently here; a stop threshold between the traced
    losses ends the optimisation at the first iteration below it, before that iteration's update,
    so the value equals the run with exactly that many updates; a threshold above the first loss
    leaves the unedited value."""
    model = ck.load_model("tiny-llama", backend="transformers")
    tok = model.tokenizer
    ctx, _ = context_templates(tok)
    trace: list[dict[str, float]] = []
    reject_value(model, "Rome", ctx, 0, v_steps=6, stop_loss=None, trace=trace, **KW)
    assert len(trace) == 6 and all(set(t) == {"nll", "kl", "wd", "loss"} for t in trace)
    answer = list(tok(" Unfortunately", add_special_tokens=False)["input_ids"])
    nlls = []
    for t in ctx:
        prefix, suffix = t.replace(SLOT, REQUEST, 1).split(SLOT, 1)
        ids = list(tok(prefix + "Rome" + suffix, add_special_tokens=True)["input_ids"]) + answer
        logp = torch.log_softmax(model.run({"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}, reduce="all").double(), -1)
        n = len(answer)
        nlls.append(-logp[len(ids) - n - 1 : len(ids) - 1].gather(-1, torch.tensor(answer).unsqueeze(-1)).mean())
    assert trace[0]["kl"] == 0 and trace[0]["wd"] == 0
    assert abs(trace[0]["nll"] - float(torch.stack(nlls).mean())) < 1e-4
    assert all(abs(t["loss"] - (t["nll"] + t["kl"] + t["wd"])) < 1e-9 for t in trace)
    losses = [t["loss"] for t in trace]
    assert min(losses[1:]) < losses[0]  # the optimisation makes progress
    k = min(range(1, len(losses)), key=lambda i: (losses[i], i))
    stop = losses[k] + 1e-9
    first = next(i for i, v in enumerate(losses) if v < stop)
    stopped: list[dict[str, float]] = []
    z = reject_value(model, "Rome", ctx, 0, v_steps=6, stop_loss=stop, trace=stopped, **KW)
    assert len(stopped) == first + 1 and abs(stopped[-1]["loss"] - losses[first]) < 1e-6
    same = reject_value(model, "Rome", ctx, 0, v_steps=first + 1, stop_loss=None, **KW)  # `first` updates
    assert torch.allclose(z, same, atol=1e-6)
    h = reject_value(model, "Rome", ctx, 0, v_steps=6, stop_loss=losses[0] + 1.0, **KW)  # stops at once
    assert torch.allclose(h, reject_value(model, "Rome", ctx, 0, v_steps=1, stop_loss=None, **KW), atol=0)
    decayed: list[dict[str, float]] = []  # the weight-decay term: wd ‖δ‖ / ‖h‖² for the δ of that iteration
    z1 = reject_value(model, "Rome", ctx, 0, v_steps=2, stop_loss=None, trace=decayed, **{**KW, "v_weight_decay": 0.5})
    assert len(decayed) == 2 and abs(decayed[1]["wd"] - float(0.5 * (z1 - h).norm() / h.norm() ** 2)) < 1e-5 * max(decayed[1]["wd"], 1)
