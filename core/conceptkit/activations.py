"""Captured activations, in memory or streamed to safetensors shards on disk.

Streaming keeps at most ``shard_bytes`` of activations in memory and writes the rest as
``<site>/<shard>.safetensors`` files, so capturing millions of token rows needs flat memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from conceptkit.data import Batch, Reduce


class Activations(Mapping[str, torch.Tensor]):
    """``acts[site]`` is a tensor; ``token_index`` is ``[n, 2]`` (example, position) for ``all``.

    For streamed captures, ``acts[site]`` loads every shard (it is then in memory);
    ``iter_shards(site)`` reads them one at a time.
    """

    def __init__(
        self,
        sites: Sequence[str],
        reduce: Reduce,
        tensors: dict[str, torch.Tensor] | None = None,
        token_index: torch.Tensor | None = None,
        directory: Path | None = None,
        n_shards: int = 0,
    ) -> None:
        self.sites, self.reduce = list(sites), reduce
        self._tensors = tensors
        self._token_index = token_index
        self.directory, self.n_shards = directory, n_shards

    def __getitem__(self, site: str) -> torch.Tensor:
        if site not in self.sites:
            from conceptkit.sites import unknown_site

            raise unknown_site(site, self.sites)
        if self._tensors is not None:
            return self._tensors[site]
        return cat_ragged(list(self.iter_shards(site)))

    def iter_shards(self, site: str) -> Iterator[torch.Tensor]:
        if self._tensors is not None:
            yield self._tensors[site]
            return
        assert self.directory is not None
        for i in range(self.n_shards):
            yield load_file(str(self.directory / f"shard-{i:05d}.safetensors"))[site]

    @property
    def token_index(self) -> torch.Tensor | None:
        if self.reduce != "all":
            return None
        if self._token_index is not None:
            return self._token_index
        assert self.directory is not None
        return torch.cat(
            [load_file(str(self.directory / f"shard-{i:05d}.safetensors"))["__token_index__"] for i in range(self.n_shards)]
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def __repr__(self) -> str:
        where = f"on disk at {self.directory}" if self._tensors is None else "in memory"
        return f"Activations(sites={self.sites}, reduce={self.reduce!r}, {where})"


class ActivationSink:
    """Collects per-batch activations; flushes shards to disk when streaming."""

    def __init__(self, sites: Sequence[str], reduce: Reduce, stream_to: str | Path | None, shard_bytes: int) -> None:
        self.sites, self.reduce = list(sites), reduce
        self.directory = Path(stream_to) if stream_to is not None else None
        self.shard_bytes = shard_bytes
        self._parts: dict[str, list[torch.Tensor]] = {s: [] for s in self.sites}
        self._index: list[torch.Tensor] = []
        self._buffered = 0
        self._n_shards = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def add(self, captured: dict[str, torch.Tensor], batch: Batch) -> None:
        missing = [s for s in self.sites if s not in captured]
        if missing:
            from conceptkit.errors import InputError

            raise InputError(f"site {missing[0]!r} did not fire during the forward pass")
        for site in self.sites:
            self._parts[site].append(captured[site])
            self._buffered += captured[site].numel() * captured[site].element_size()
        if self.reduce == "all":
            self._index.append(_token_index(batch))
        if self.directory is not None and self._buffered >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._parts[self.sites[0]]:
            return
        assert self.directory is not None
        tensors = {s: cat_ragged(self._parts[s]).contiguous() for s in self.sites}
        if self._index:
            tensors["__token_index__"] = torch.cat(self._index)
        save_file(tensors, str(self.directory / f"shard-{self._n_shards:05d}.safetensors"))
        self._n_shards += 1
        self._parts = {s: [] for s in self.sites}
        self._index = []
        self._buffered = 0

    def finish(self) -> Activations:
        if self.directory is None:
            tensors = {s: cat_ragged(p) for s, p in self._parts.items()}
            index = torch.cat(self._index) if self._index else None
            return Activations(self.sites, self.reduce, tensors=tensors, token_index=index)
        self._flush()
        meta: dict[str, Any] = {"sites": self.sites, "reduce": self.reduce, "n_shards": self._n_shards}
        (self.directory / "activations.json").write_text(json.dumps(meta))
        return Activations(self.sites, self.reduce, directory=self.directory, n_shards=self._n_shards)


def cat_ragged(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0; parts whose last axis is a key position (attention patterns of
    batches padded to different lengths) are zero-padded to the longest, i.e. no attention."""
    widths = {p.shape[-1] for p in parts}
    if len(widths) <= 1 or parts[0].dim() < 3:
        return torch.cat(parts)
    width = max(widths)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[-1])) for p in parts])


def _token_index(batch: Batch) -> torch.Tensor:
    """``[n_tokens, 2]``: example index and unpadded position of every real token."""
    mask = batch.attention_mask.bool()
    lengths = batch.lengths
    T = mask.shape[1]
    cols = torch.arange(T).unsqueeze(0).expand_as(mask)
    if batch.padding_side == "left":
        cols = cols - (T - lengths).unsqueeze(1)
    examples = batch.index if batch.index is not None else torch.arange(len(batch))
    rows = examples.unsqueeze(1).expand_as(mask)
    return torch.stack([rows[mask], cols[mask]], 1)


def open_activations(directory: str | Path) -> Activations:
    """Reopen streamed activations from their folder."""
    directory = Path(directory)
    meta = json.loads((directory / "activations.json").read_text())
    return Activations(meta["sites"], meta["reduce"], directory=directory, n_shards=meta["n_shards"])
