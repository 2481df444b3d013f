"""Shards of a dataset and the merge of their captures with global example indices.

A shard is a contiguous range of examples whose bounds are multiples of the batch size, so
every batch a worker runs is the batch the single-process run would run (same examples, same
padding): the merged result then equals the single-process capture bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from conceptkit.activations import Activations, cat_ragged
from conceptkit.data import Reduce
from conceptkit.errors import InputError


@dataclass(frozen=True)
class Shard:
    """Examples ``start .. stop-1`` of the dataset (global indices)."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def describe(self) -> str:
        return f"shard {self.index} (examples {self.start}..{self.stop - 1})"


def _check_sizes(n_examples: int, batch_size: int) -> None:
    if n_examples < 1:
        raise InputError("no inputs: got an empty list of texts")
    if batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size}")


def shard_ranges(n_examples: int, n_shards: int, batch_size: int) -> list[Shard]:
    """Split ``n_examples`` into at most ``n_shards`` contiguous shards aligned to ``batch_size``."""
    _check_sizes(n_examples, batch_size)
    if n_shards < 1:
        raise InputError(f"the number of shards must be >= 1, got {n_shards}")
    n_batches = -(-n_examples // batch_size)
    n_shards = min(n_shards, n_batches)
    per, extra = divmod(n_batches, n_shards)
    shards, b = [], 0
    for i in range(n_shards):
        nb = per + (1 if i < extra else 0)
        start, stop = b * batch_size, min((b + nb) * batch_size, n_examples)
        shards.append(Shard(i, start, stop))
        b += nb
    return shards


def shard_plan(n_examples: int, shard_size: int, batch_size: int) -> list[Shard]:
    """Contiguous shards of ``shard_size`` examples (rounded up to whole batches), the last one
    shorter. The plan depends only on the data and these two sizes, never on how many workers
    run it, so a sharded statistic is the same bits on one process or on any number of workers."""
    _check_sizes(n_examples, batch_size)
    if shard_size < 1:
        raise InputError(f"shard_size must be an integer >= 1, got {shard_size}")
    size = -(-shard_size // batch_size) * batch_size
    return [Shard(i, start, min(start + size, n_examples)) for i, start in enumerate(range(0, n_examples, size))]


def globalise_token_index(token_index: torch.Tensor | None, shard: Shard) -> torch.Tensor | None:
    """A shard's ``token_index`` counts examples within the shard; shift it to dataset indices."""
    if token_index is None:
        return None
    out = token_index.clone()
    out[:, 0] += shard.start
    return out


def merge_shards(
    parts: Mapping[int, Mapping[str, object]], shards: Sequence[Shard], sites: Sequence[str], reduce: Reduce
) -> Activations:
    """Concatenate per-shard captures in dataset order; ``token_index`` gets global example ids.

    ``parts[i]`` is ``{"tensors": {site: Tensor}, "token_index": Tensor | None}`` for shard ``i``.
    """
    missing = [s.index for s in shards if s.index not in parts]
    if missing:
        raise InputError(f"cannot merge: shard {missing[0]} has no result")
    tensors = {site: cat_ragged([parts[s.index]["tensors"][site] for s in shards]) for site in sites}  # type: ignore[index]
    index = None
    if reduce == "all":
        index = torch.cat([globalise_token_index(parts[s.index]["token_index"], s) for s in shards])  # type: ignore[arg-type,misc]
    return Activations(list(sites), reduce, tensors=tensors, token_index=index)
