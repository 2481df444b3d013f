"""An SAE's training activations, chunk by chunk: in this process, or over Ray workers.

The embedded SAE's recipe captures its training rows ``chunk`` windows at a time and keeps the
rows :func:`~conceptkit.sae.evaluate.site_rows` keeps (no early positions, no attention sinks,
judged against the chunk's median norm). With Ray requested (``ray=`` or inside
``conceptkit.use_ray``, e.g. ``conceptkit sae train --ray``), groups of chunks are captured by
``conceptkit.dataset_capture`` over the workers, which run exactly the batches the local path
runs, then split back into chunks on the driver and filtered the same way: the rows are equal
bit for bit. Only the driver writes them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from conceptkit.errors import InputError
from conceptkit.sae.evaluate import kept_rows, site_rows


def chunk_rows(
    model: Any,
    windows: dict[str, torch.Tensor],
    site: str,
    chunks: Sequence[int],
    *,
    chunk: int = 32,
    skip_first: int = 1,
    max_norm_ratio: float | None = 10.0,
    batch_size: int = 16,
    ray: Any = None,
    group: int = 64,
) -> Iterator[tuple[int, torch.Tensor, int]]:
    """``(i, rows, n_tokens)`` for each chunk ``i`` in ``chunks`` (windows ``i*chunk ..``) of the
    token ``windows`` (``{"input_ids", "attention_mask"}``, ``[n, context]``), each once (in the
    given order locally; over Ray a short last chunk comes last in its group). Over Ray, ``group`` chunks go to the workers per call (memory: one group's rows)."""
    from conceptkit.scale.dataset import dataset_capture, ray_requested

    ids, mask = windows["input_ids"], windows["attention_mask"]
    n = int(ids.shape[0])
    bad = [i for i in chunks if not 0 <= i * chunk < n]
    if bad:
        raise InputError(f"chunk {bad[0]} is outside the {n} windows ({chunk} per chunk)")

    def bounds(i: int) -> tuple[int, int]:
        return i * chunk, min((i + 1) * chunk, n)

    if not ray_requested(ray):
        for i in chunks:
            a, b = bounds(i)
            part = {"input_ids": ids[a:b], "attention_mask": mask[a:b]}
            (rows,) = site_rows(model, part, site, skip_first=skip_first, max_norm_ratio=max_norm_ratio, chunk=chunk,
                                batch_size=batch_size)
            yield i, rows, int(part["attention_mask"].sum())
        return
    if chunk % batch_size:
        raise InputError(f"over Ray the chunk ({chunk}) must be a multiple of batch_size ({batch_size}), so that the "
                         "workers run the batches the local path runs")
    order = list(chunks)
    for g in range(0, len(order), group):
        sel = order[g : g + group]
        # a short (last) chunk may only come last, or the batches after it would shift
        sel = sorted(sel, key=lambda i: bounds(i)[1] - bounds(i)[0] < chunk)
        idx = torch.cat([torch.arange(*bounds(i)) for i in sel])
        part = {"input_ids": ids[idx], "attention_mask": mask[idx]}
        acts = dataset_capture(model, part, site, "all", batch_size=batch_size, ray=ray)
        rows, index = acts[site], acts.token_index
        example = index[:, 0]
        offset = 0
        for i in sel:
            a, b = bounds(i)
            take = (example >= offset) & (example < offset + (b - a))
            local = index[take].clone()
            local[:, 0] -= offset
            yield i, kept_rows(rows[take], local, skip_first=skip_first, max_norm_ratio=max_norm_ratio), int(mask[a:b].sum())
            offset += b - a
