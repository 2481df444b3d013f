"""Tokenised batches and padding-aware token reduction.

One place decides which token rows an operation reads or writes, from the attention mask and
never from token ids (a pad id can be a real token, e.g. SmolLM2's ``<|im_end|>``). Positions are
always given relative to the *unpadded* sequence, so results do not depend on padding side.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch

from conceptkit.errors import InputError

Reduce = Union[Literal["last", "mean", "first", "all", "flatten"], Sequence[int]]
PaddingSide = Literal["left", "right"]


@dataclass
class Batch:
    """Token ids and the attention mask of one batch, plus where each example came from."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] 0/1
    padding_side: PaddingSide
    index: torch.Tensor | None = None  # [B] positions of these examples in the full input

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions counted over real tokens only, so left padding does not shift them."""
        return (self.attention_mask.cumsum(1) - 1).clamp_min(0)

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def padded_index(self, positions: Sequence[int]) -> torch.Tensor:
        """Padded column of each unpadded ``position`` per example: ``[B, len(positions)]``.

        Negative positions count from the end of each example. Out-of-range positions are an
        error naming the position and the example's length.
        """
        lengths = self.lengths
        T = self.input_ids.shape[1]
        pos = torch.as_tensor(list(positions), dtype=torch.long).unsqueeze(0).expand(len(self), -1)
        resolved = torch.where(pos < 0, pos + lengths.unsqueeze(1), pos)
        bad = (resolved < 0) | (resolved >= lengths.unsqueeze(1))
        if bad.any():
            row, col = (int(i) for i in bad.nonzero()[0])
            raise InputError(
                f"token position {int(pos[row, col])} is out of range for an input of "
                f"{int(lengths[row])} tokens (example {row} of the batch)"
            )
        if self.padding_side == "left":
            resolved = resolved + (T - lengths).unsqueeze(1)
        return resolved

    def position_mask(self, positions: "Reduce | Literal['all']") -> torch.Tensor:
        """Boolean ``[B, T]`` mask of the token rows an intervention touches."""
        mask = self.attention_mask.bool()
        if positions == "all":
            return mask
        out = torch.zeros_like(mask)
        if positions == "last":
            cols = self.padded_index([-1])
        elif positions == "first":
            cols = self.padded_index([0])
        else:
            cols = self.padded_index(list(positions))  # type: ignore[arg-type]
        out.scatter_(1, cols, True)
        return out


def reduce_tokens(acts: torch.Tensor, batch: Batch, reduce: Reduce) -> torch.Tensor:
    """Reduce ``[B, T, ...]`` activations over tokens using the attention mask.

    ``last``/``first`` take the last/first real token, ``mean`` averages real tokens, a list of
    positions gives ``[B, P, ...]``, and ``all`` returns the real tokens flattened to
    ``[n_tokens, ...]`` in example order (padding dropped).
    """
    if acts.shape[0] == 1 and len(batch) > 1 and acts.shape[1] == batch.attention_mask.shape[1]:
        acts = acts.expand(len(batch), *acts.shape[1:])  # e.g. GPT-2 position embeddings [1, T, d]
    if acts.shape[:2] != batch.attention_mask.shape:
        raise InputError(
            f"activations of shape {tuple(acts.shape)} do not have one row per token of the "
            f"batch {tuple(batch.attention_mask.shape)}; token reduction needs a [B, T, ...] site"
        )
    mask = batch.attention_mask.to(acts.device)
    if reduce == "flatten":
        # captum/TF convention: the whole [T, ...] block as one vector; needs equal lengths.
        if not bool(mask.bool().all()):
            raise InputError("reduce='flatten' needs inputs of equal length (no padding); use last or mean")
        return acts.reshape(acts.shape[0], -1)
    if reduce == "all":
        return acts[mask.bool()]
    if reduce == "mean":
        weights = mask.to(acts.dtype).reshape(*mask.shape, *([1] * (acts.dim() - 2)))
        return (acts * weights).sum(1) / weights.sum(1).clamp_min(1)
    if reduce in ("last", "first"):
        cols = batch.padded_index([-1 if reduce == "last" else 0])[:, 0].to(acts.device)
        return acts[torch.arange(acts.shape[0], device=acts.device), cols]
    if isinstance(reduce, str):
        raise InputError(f"unknown token reduction {reduce!r}; use last, mean, first, all or a list of positions")
    cols = batch.padded_index(list(reduce)).to(acts.device)
    return acts[torch.arange(acts.shape[0], device=acts.device).unsqueeze(1), cols]


def scatter_grad_reduction(grad: torch.Tensor, batch: Batch, reduce: Reduce) -> torch.Tensor:
    """Reduce a gradient ``[B, T, ...]`` so that ``result · v`` is the directional derivative.

    For ``last``/``first``/positions this is the gradient at those tokens. For ``mean`` it is
    the *sum* over real tokens: moving the mean-pooled activation by ``eps * v`` means moving
    every real token by ``eps * v``, and the derivative of that is ``sum_t g_t · v``.
    """
    if reduce == "mean":
        mask = batch.attention_mask.to(grad.dtype).to(grad.device)
        return (grad * mask.reshape(*mask.shape, *([1] * (grad.dim() - 2)))).sum(1)
    return reduce_tokens(grad, batch, reduce)


def fingerprint(examples: Sequence[str] | Sequence[Sequence[str]]) -> str:
    """Content fingerprint of example texts (order-sensitive), stored with concept vectors."""
    blob = json.dumps(list(examples), ensure_ascii=False, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()
