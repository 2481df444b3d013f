"""Answer scoring with teacher forcing: length-normalised probability and top-1 accuracy.

For a prompt and an answer, the answer's tokens are those of ``encode(prompt + answer)`` after
the first ``len(encode(prompt))`` tokens. The length-normalised probability is
``exp(mean log p(answer token | prefix))`` (the reference's ``test_prediction_prob``); top-1
accuracy means every answer token is the argmax (``test_prediction_acc`` over the whole answer).
For multiple choice the accuracy is whether the correct option letter beats the other letters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from conceptkit_rocr.templates import pad_id, pad_right


@dataclass
class Score:
    prob: float  # exp(mean log p) over the answer tokens
    top1: bool
    n_tokens: int


def _encode(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], int]:
    full = tokenizer(prompt + answer, add_special_tokens=True)["input_ids"]
    n = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    return list(full), n


def score_answers(
    model: Any,
    items: Sequence[tuple[str, str]],
    *,
    options: Sequence[Sequence[str] | None] | None = None,
    batch_size: int = 16,
    interventions: Sequence[Any] = (),
) -> list[Score]:
    """Scores of ``(prompt, answer)`` pairs; ``options[i]`` (answer strings) turns item i into a
    multiple-choice question whose accuracy compares the first token of each option."""
    tok = model.tokenizer
    encoded = [_encode(tok, p, a) for p, a in items]
    out: list[Score] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = pad_right([ids for ids, _ in chunk], pad_id(tok))
        logits = model.run(batch, interventions, reduce="all", batch_size=batch_size)  # [n_tokens, V]
        offset = 0
        for j, (ids, n_prompt) in enumerate(chunk):
            rows = logits[offset : offset + len(ids)]
            offset += len(ids)
            logp = torch.log_softmax(rows.double(), -1)
            targets = torch.tensor(ids[n_prompt:])
            pred = logp[n_prompt - 1 : len(ids) - 1]
            lp = pred.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            opts = options[start + j] if options is not None else None
            if opts:
                firsts = [_encode(tok, items[start + j][0], o)[0][n_prompt] for o in opts]
                top1 = int(pred[0, firsts].argmax()) == firsts.index(int(targets[0]))
            else:
                top1 = bool((pred.argmax(-1) == targets).all())
            out.append(Score(float(lp.mean().exp()), top1, int(len(targets))))
    return out


def kl_per_token(model: Any, texts: Sequence[str], edit_handle_factory: Any, *, batch_size: int = 16) -> float:
    """Mean KL(p_before || p_after) in nats per predicted token over ``texts``; the edit is
    applied by ``edit_handle_factory()`` (a callable returning a handle) for the second pass."""
    before = model.run(list(texts), reduce="all", batch_size=batch_size)
    with edit_handle_factory():
        after = model.run(list(texts), reduce="all", batch_size=batch_size)
    lp, lq = torch.log_softmax(before.double(), -1), torch.log_softmax(after.double(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return float(kl.mean())
