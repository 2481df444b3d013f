"""Scalar objectives for gradients: a token's logit, a logit difference, the LM loss.

Objectives read the model output at the last real token by default (next-token prediction);
each returns one value per example, ``[B]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Union

import pydantic
import torch

from conceptkit.data import Batch
from conceptkit.errors import InputError


def token_id(model: Any, token: int | str) -> int:
    """The id of ``token``; a string must encode to exactly one token (no special tokens)."""
    if isinstance(token, int):
        return token
    ids = model.tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        pieces = model.tokenizer.convert_ids_to_tokens(ids)
        raise InputError(f"target token {token!r} is not a single token for {model.name!r}: it encodes to {pieces}")
    return int(ids[0])


class TokenLogit(pydantic.BaseModel):
    """The logit (or log-probability) of ``token`` at the last real position."""

    kind: Literal["token_logit"] = "token_logit"
    token: Union[int, str]
    log_prob: bool = False


class LogitDiff(pydantic.BaseModel):
    """``logit(positive) - logit(negative)`` at the last real position."""

    kind: Literal["logit_diff"] = "logit_diff"
    positive: Union[int, str]
    negative: Union[int, str]


class NextTokenLoss(pydantic.BaseModel):
    """Mean next-token cross-entropy over the real tokens of each example (TF-style loss target)."""

    kind: Literal["loss"] = "loss"
    negate: bool = False


Objective = Union[TokenLogit, LogitDiff, NextTokenLoss]


def _last(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    cols = batch.padded_index([-1])[:, 0].to(out.device)
    return out[torch.arange(out.shape[0], device=out.device), cols]


def as_objective(objective: Any, model: Any) -> Callable[[torch.Tensor, Batch], torch.Tensor]:
    """A callable ``(output, batch) -> [B]`` for an objective object, dict or callable."""
    if callable(objective) and not isinstance(objective, pydantic.BaseModel):
        return objective
    if isinstance(objective, dict):
        kind = objective.get("kind")
        cls = {"token_logit": TokenLogit, "logit_diff": LogitDiff, "loss": NextTokenLoss}.get(kind)  # type: ignore[arg-type]
        if cls is None:
            raise InputError(f"unknown objective kind {kind!r}; use token_logit, logit_diff or loss")
        objective = cls.model_validate(objective)
    if isinstance(objective, TokenLogit):
        tid = token_id(model, objective.token)

        def fn(out: torch.Tensor, batch: Batch) -> torch.Tensor:
            last = _last(out, batch)
            if objective.log_prob:
                last = torch.log_softmax(last.float(), -1)
            return last[:, tid]

        return fn
    if isinstance(objective, LogitDiff):
        pos, neg = token_id(model, objective.positive), token_id(model, objective.negative)
        return lambda out, batch: (_last(out, batch)[:, pos] - _last(out, batch)[:, neg])
    if isinstance(objective, NextTokenLoss):
        sign = -1.0 if objective.negate else 1.0

        def loss(out: torch.Tensor, batch: Batch) -> torch.Tensor:
            ids = batch.input_ids.to(out.device)
            mask = batch.attention_mask.to(out.device)
            logp = torch.log_softmax(out[:, :-1].float(), -1)
            nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            valid = (mask[:, 1:] * mask[:, :-1]).float()
            return sign * (nll * valid).sum(1) / valid.sum(1).clamp_min(1)

        return loss
    raise InputError(f"not an objective: {objective!r}")
