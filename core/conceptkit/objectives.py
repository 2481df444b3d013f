"""Scalar objectives for gradients, as open data: one value per example, ``[B]``.

Built in: a token's logit (:class:`TokenLogit`), a logit difference (:class:`LogitDiff`), the LM
loss (:class:`NextTokenLoss`), a linear functional of the logits (:class:`LogitFunctional`, e.g.
an ObsProp observable) and a dot product with a direction at any site
(:class:`InnerSiteFunctional`). Objectives read the output at the last real token by default
(next-token prediction).

An objective is a pydantic model with a ``kind`` name and ``evaluate(model, output, batch,
acts)``; one that needs activations lists their sites in ``sites()`` and receives them (with
their graph) in ``acts``. Plugins add kinds through ``register_components``; ``model.grad``
accepts any of them, their dicts, or a plain callable ``(output, batch) -> [B]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Union

import pydantic
import torch

from conceptkit.data import Batch
from conceptkit.errors import InputError
from conceptkit.tensors import TensorField


def token_id(model: Any, token: int | str) -> int:
    """The id of ``token``; a string must encode to exactly one token (no special tokens)."""
    if isinstance(token, int):
        vocab = getattr(model, "vocab_size", None)
        if vocab is not None and not 0 <= token < vocab:
            raise InputError(f"token id {token} is out of range: the vocabulary has ids 0 to {vocab - 1}")
        return token
    ids = model.tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        pieces = model.tokenizer.convert_ids_to_tokens(ids)
        raise InputError(f"target token {token!r} is not a single token for {model.name!r}: it encodes to {pieces}")
    return int(ids[0])


def _at(out: torch.Tensor, batch: Batch, position: int = -1) -> torch.Tensor:
    """``out[b, position of example b]`` with positions counted over real tokens."""
    cols = batch.padded_index([position])[:, 0].to(out.device)
    return out[torch.arange(out.shape[0], device=out.device), cols]


def _last(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    return _at(out, batch, -1)


class Objective(pydantic.BaseModel):
    """Base of every objective: ``kind`` names it; ``evaluate`` gives one value per example."""

    model_config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    def __init__(self, **data: Any) -> None:
        from conceptkit.interventions import input_errors

        with input_errors(type(self).__name__):
            super().__init__(**data)

    def sites(self) -> list[str]:
        """Sites whose activations ``evaluate`` needs (with their graph) besides the output."""
        return []

    def check(self, model: Any) -> None:
        """Validate against ``model`` before any compute (tokens exist, widths match...)."""

    def evaluate(self, model: Any, output: torch.Tensor, batch: Batch, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


class TokenLogit(Objective):
    """The logit (or log-probability) of ``token`` at the last real position."""

    kind: Literal["token_logit"] = "token_logit"
    token: Union[int, str]
    log_prob: bool = False

    def check(self, model: Any) -> None:
        token_id(model, self.token)

    def evaluate(self, model: Any, output: torch.Tensor, batch: Batch, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        last = _last(output, batch)
        if self.log_prob:
            last = torch.log_softmax(last.float(), -1)
        return last[:, token_id(model, self.token)]


class LogitDiff(Objective):
    """``logit(positive) - logit(negative)`` at the last real position."""

    kind: Literal["logit_diff"] = "logit_diff"
    positive: Union[int, str]
    negative: Union[int, str]

    def check(self, model: Any) -> None:
        token_id(model, self.positive), token_id(model, self.negative)

    def evaluate(self, model: Any, output: torch.Tensor, batch: Batch, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        last = _last(output, batch)
        return last[:, token_id(model, self.positive)] - last[:, token_id(model, self.negative)]


class NextTokenLoss(Objective):
    """Mean next-token cross-entropy over the real tokens of each example (TF-style loss target)."""

    kind: Literal["loss"] = "loss"
    negate: bool = False

    def evaluate(self, model: Any, output: torch.Tensor, batch: Batch, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch.input_ids.to(output.device)
        mask = batch.attention_mask.to(output.device)
        logp = torch.log_softmax(output[:, :-1].float(), -1)
        nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        valid = (mask[:, 1:] * mask[:, :-1]).float()
        sign = -1.0 if self.negate else 1.0
        return sign * (nll * valid).sum(1) / valid.sum(1).clamp_min(1)


class LogitFunctional(Objective):
    """``Σ_v w_v · logit_v`` at one position: a linear observable of the output (ObsProp).

    ``weights`` is a vector over the vocabulary ``[V]`` or ``{token: weight}`` (tokens as ids or
    single-token strings). ``position`` is ``"last"`` or a position counted over real tokens
    (negative from the end). With ``log_prob`` the functional reads log-probabilities instead.
    """

    kind: Literal["logit_functional"] = "logit_functional"
    weights: Union[TensorField, dict[Union[int, str], float]]
    position: Union[Literal["last"], int] = "last"
    log_prob: bool = False

    @pydantic.field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        if isinstance(value, list) and value and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            value = {token: w for token, w in value}  # the JSON form: [[token, weight], ...]
        if isinstance(value, dict):
            if not value:
                raise ValueError("a LogitFunctional needs at least one token weight")
            for token, w in value.items():
                if not math.isfinite(float(w)):
                    raise ValueError(f"the weight of token {token!r} must be finite, got {w!r}")
        return value

    @pydantic.field_serializer("weights", when_used="json")
    def _dump_weights(self, weights: Any) -> Any:
        # JSON object keys are strings: pairs keep token ids and token strings apart.
        if isinstance(weights, dict):
            return [[token, w] for token, w in weights.items()]
        return weights.detach().cpu().tolist()

    def _vector(self, model: Any, width: int) -> torch.Tensor:
        if isinstance(self.weights, dict):
            vec = torch.zeros(width)
            for token, w in self.weights.items():
                vec[token_id(model, token)] += w
            return vec
        if self.weights.dim() != 1 or self.weights.shape[0] != width:
            raise InputError(f"LogitFunctional weights have shape {tuple(self.weights.shape)}; the output has {width} logits")
        return self.weights

    def check(self, model: Any) -> None:
        width = getattr(model, "vocab_size", None)
        if width is not None:
            self._vector(model, width)

    def evaluate(self, model: Any, output: torch.Tensor, batch: Batch, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        row = _at(output, batch, -1 if self.position == "last" else int(self.position))
        if self.log_prob:
            row = torch.log_softmax(row.float(), -1)
        return row @ self._vector(model, row.shape[-1]).to(row)


class InnerSiteFunctional(Objective):
    """``direction · x`` at ``site``, over ``positions``, summed (or averaged) per example.

    ``direction`` has the shape of one token's activation (``[d]``, or ``[H, d_head]`` at a head
    site); ``positions`` is ``"last"``, ``"all"`` (real tokens) or positions over real tokens.
    """

    kind: Literal["inner_site_functional"] = "inner_site_functional"
    site: str
    direction: TensorField
    positions: Union[Literal["last", "first", "all"], list[int]] = "last"
    reduce: Literal["sum", "mean"] = "sum"

    def sites(self) -> list[str]:
        return [self.site]

    def check(self, model: Any) -> None:
        model.resolve_site(self.site)

    def evaluate(self, model: Any, output: torch.Tensor, batch: Batch, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        x = acts[self.site]
        if x.shape[:2] != batch.attention_mask.shape:
            raise InputError(f"InnerSiteFunctional needs a [B, T, ...] site; {self.site!r} has shape {tuple(x.shape)}")
        direction = self.direction.to(x)
        if tuple(direction.shape) != tuple(x.shape[2:]):
            raise InputError(
                f"InnerSiteFunctional direction has shape {tuple(direction.shape)}; activations at "
                f"{self.site!r} have shape {tuple(x.shape[2:])} per token"
            )
        values = (x * direction).flatten(2).sum(-1)  # [B, T]
        mask = batch.position_mask(self.positions).to(values.device).to(values.dtype)
        total = (values * mask).sum(1)
        return total / mask.sum(1).clamp_min(1) if self.reduce == "mean" else total


#: The objectives that ship with conceptkit (registered through ``_builtin.register_components``).
BUILTIN: tuple[type[Objective], ...] = (TokenLogit, LogitDiff, NextTokenLoss, LogitFunctional, InnerSiteFunctional)


class BoundObjective:
    """An objective bound to a model: ``fn(output, batch[, acts]) -> [B]``; ``sites`` it reads."""

    def __init__(self, objective: Objective, model: Any) -> None:
        self.objective, self.model = objective, model
        self.sites = list(objective.sites())

    def __call__(self, output: torch.Tensor, batch: Batch, acts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.objective.evaluate(self.model, output, batch, acts or {})


def parse(value: Any) -> Objective:
    """An objective from a dict (any registered ``kind``) or an objective object."""
    if isinstance(value, Objective):
        return value
    from conceptkit import components

    return components.parse("objective", value, Objective)


def as_objective(objective: Any, model: Any) -> Callable[..., torch.Tensor]:
    """A callable ``(output, batch[, acts]) -> [B]`` for an objective object, dict or callable,
    validated against ``model`` (tokens exist, sites exist) before any compute."""
    if isinstance(objective, BoundObjective):
        return objective
    if callable(objective) and not isinstance(objective, pydantic.BaseModel):
        return objective
    if not isinstance(objective, (dict, pydantic.BaseModel)):
        raise InputError(f"not an objective: {objective!r}")
    parsed = parse(objective)
    parsed.check(model)
    return BoundObjective(parsed, model)
