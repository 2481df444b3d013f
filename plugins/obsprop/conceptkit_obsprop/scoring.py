"""Scoring inputs with features: ``s = y · x`` at the feature's site, streamed over a corpus."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from conceptkit_obsprop.features import Feature


def score_tokens(
    model: Any,
    features: Sequence[Feature],
    inputs: Iterable[Any],
    *,
    batch_size: int = 8,
) -> torch.Tensor:
    """Scores ``[n_tokens, n_features]`` of every real token of every input chunk.

    ``inputs`` yields chunks (lists of texts, or ``{"input_ids", "attention_mask"}`` batches):
    each chunk is captured (only the features' sites, the forward stops after the deepest one),
    scored and dropped, so memory stays flat however long the corpus is.
    """
    sites = sorted({f.site for f in features})
    Y = {s: torch.stack([f.y.float() if f.site == s else torch.zeros_like(f.y, dtype=torch.float32) for f in features], 1) for s in sites}
    out = []
    for chunk in inputs:
        acts = model.capture(chunk, sites, reduce="all", batch_size=batch_size)
        total = None
        for s in sites:
            part = acts[s].float() @ Y[s]
            total = part if total is None else total + part
        out.append(total)
    return torch.cat(out) if out else torch.zeros(0, len(features))


def score_at(model: Any, features: Sequence[Feature], texts: Sequence[str], position: int, *, batch_size: int = 16) -> torch.Tensor:
    """Scores ``[n_texts, n_features]`` at one token ``position`` of each text (negative: from the end)."""
    sites = sorted({f.site for f in features})
    acts = model.capture(list(texts), sites, reduce=[position], batch_size=batch_size)
    cols = [acts[f.site][:, 0].float() @ f.y.float() for f in features]
    return torch.stack(cols, 1)


def chunks(items: Sequence[Any], size: int) -> Iterable[Any]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
