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
from conceptkit.sites import is_pattern_site

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


def query_major(pattern: torch.Tensor, batch: Batch) -> torch.Tensor:
    """An attention pattern ``[B, H, Tq, Tk]`` as ``[B, Tq, H, Tk]`` with the key axis counted
    in unpadded positions (left padding shifted away, keys past each example's end zero), so
    token reduction applies and results do not depend on the padding side."""
    p = pattern.transpose(1, 2)
    lengths = batch.lengths.to(p.device)
    T = p.shape[-1]
    cols = torch.arange(T, device=p.device).unsqueeze(0)
    if batch.padding_side == "left":
        src = (cols + (T - lengths).unsqueeze(1)).clamp_max(T - 1)  # [B, Tk]
        p = p.gather(-1, src[:, None, None, :].expand_as(p))
    real = (cols < lengths.unsqueeze(1)).to(p.dtype)[:, None, None, :]
    return p * real


def reduce_site(acts: torch.Tensor, batch: Batch, reduce: Reduce, site: str | None = None) -> torch.Tensor:
    """:func:`reduce_tokens` for any site: attention patterns are reduced over their query axis
    (``last`` gives ``[B, H, Tk]``, ``all`` gives ``[n_tokens, H, Tk]``)."""
    if site is not None and is_pattern_site(site) and acts.dim() == 4:
        acts = query_major(acts, batch)
    return reduce_tokens(acts, batch, reduce)


def validate_batch(batch: Batch, vocab_size: int | None = None, max_context: int | None = None) -> Batch:
    """Refuse token ids a model cannot run, naming the value and the limit: non-integer ids,
    ids outside ``[0, vocab_size)``, a mask of another shape, with values other than 0/1 or with
    holes (padding between real tokens), and inputs longer than ``max_context``."""
    ids, mask = batch.input_ids, batch.attention_mask
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InputError(f"token ids must be integers, got a tensor of dtype {str(ids.dtype).removeprefix('torch.')}")
    if ids.dim() != 2:
        raise InputError(f"token ids must have shape [batch, tokens], got shape {tuple(ids.shape)}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(f"no inputs: token ids of shape {tuple(ids.shape)}")
    if tuple(mask.shape) != tuple(ids.shape):
        raise InputError(f"attention_mask has shape {tuple(mask.shape)} but the token ids have shape {tuple(ids.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        bad = mask[(mask != 0) & (mask != 1)][0]
        raise InputError(f"attention_mask values must be 0 or 1, got {bad.item()!r}")
    ids, mask = ids.long(), mask.long()
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        row = int((lengths == 0).nonzero()[0])
        raise InputError(f"example {row} has no real tokens (its attention_mask is all 0)")
    T = mask.shape[1]
    cols = torch.arange(T).unsqueeze(0)
    right = cols < lengths.unsqueeze(1)
    left = cols >= (T - lengths).unsqueeze(1)
    expected = left if batch.padding_side == "left" else right
    holes = (mask.bool() != expected).any(1)
    if bool(holes.any()):
        row = int(holes.nonzero()[0])
        raise InputError(
            f"attention_mask row {row} is {mask[row].tolist()[:32]}: padding must all be on the "
            f"{batch.padding_side} with no holes between real tokens"
        )
    if vocab_size is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad_id = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise InputError(f"token id {bad_id} is out of range: the vocabulary has ids 0 to {vocab_size - 1}")
    if max_context is not None and T > max_context and int(lengths.max()) > max_context:
        row = int(lengths.argmax())
        raise InputError(f"example {row} is {int(lengths[row])} tokens long; the model takes at most {max_context} tokens")
    if ids is batch.input_ids and mask is batch.attention_mask:
        return batch
    return Batch(ids, mask, batch.padding_side, batch.index)


def scatter_grad_reduction(grad: torch.Tensor, batch: Batch, reduce: Reduce, site: str | None = None) -> torch.Tensor:
    """Reduce a gradient ``[B, T, ...]`` so that ``result · v`` is the directional derivative.

    For ``last``/``first``/positions this is the gradient at those tokens. For ``mean`` it is
    the *sum* over real tokens: moving the mean-pooled activation by ``eps * v`` means moving
    every real token by ``eps * v``, and the derivative of that is ``sum_t g_t · v``.
    """
    if site is not None and is_pattern_site(site) and grad.dim() == 4:
        grad = query_major(grad, batch)
    if reduce == "mean":
        mask = batch.attention_mask.to(grad.dtype).to(grad.device)
        return (grad * mask.reshape(*mask.shape, *([1] * (grad.dim() - 2)))).sum(1)
    return reduce_tokens(grad, batch, reduce)


def fingerprint(examples: Sequence[str] | Sequence[Sequence[str]]) -> str:
    """Content fingerprint of example texts (order-sensitive), stored with concept vectors."""
    blob = json.dumps(list(examples), ensure_ascii=False, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def is_token_input(inputs: object) -> bool:
    """Token ids given directly: a ``Batch``, a dict or a tokenizer ``BatchEncoding``."""
    if isinstance(inputs, (Batch, dict)):
        return True
    return hasattr(inputs, "input_ids") and not isinstance(inputs, (str, list, tuple))
