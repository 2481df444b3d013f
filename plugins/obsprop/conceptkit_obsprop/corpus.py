"""The offline corpus ObsProp scores features on (no downloads; deterministic).

Uses the core's corpus (``conceptkit.sae.corpus``: Python and package documentation prose) when
it is installed; otherwise a small reader of the same kind: conceptkit's concept texts plus the
README text in the metadata of installed distributions, in sorted order.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

import torch


def _fallback_texts() -> list[str]:
    from pathlib import Path

    import conceptkit

    texts: list[str] = []
    data = Path(conceptkit.__file__).parent / "concepts" / "data"
    for f in sorted(data.glob("*.txt")):
        texts.append(f.read_text())
    seen: set[str] = set()
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower()):
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else ""  # type: ignore[attr-defined]
        body = body or dist.metadata.get("Description") or ""
        paras = [p.strip() for p in re.split(r"\n\s*\n", body)]
        keep = [p for p in paras if len(p) >= 80 and sum(ch.isalpha() or ch.isspace() for ch in p) / len(p) > 0.85 and p not in seen]
        seen.update(keep)
        if keep:
            texts.append("\n\n".join(keep))
    return texts


def corpus_windows(tokenizer: Any, n_tokens: int, context: int = 128, seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """``{"input_ids", "attention_mask"}`` windows of ``context`` tokens totalling ``>= n_tokens``,
    and the corpus' name (with fingerprint) for provenance."""
    try:  # TODO(public-surface): the core's offline corpus (being added with the SAE work)
        from conceptkit.sae import corpus as core_corpus

        corpus = core_corpus.build()
        windows = core_corpus.token_windows(corpus, tokenizer, split="held_out", context=context, max_tokens=n_tokens, seed=seed)
        if int(windows["attention_mask"].sum()) >= n_tokens:
            return windows, f"conceptkit.sae.corpus held_out {corpus.fingerprint[:12]}"
        windows = core_corpus.token_windows(corpus, tokenizer, split="train", context=context, max_tokens=n_tokens, seed=seed)
        return windows, f"conceptkit.sae.corpus train {corpus.fingerprint[:12]}"
    except ImportError:
        pass
    stream: list[int] = []
    for text in _fallback_texts():
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(stream) >= n_tokens + context:
            break
    n = max(1, min(len(stream) // context, -(-n_tokens // context)))
    ids = torch.tensor(stream[: n * context], dtype=torch.long).reshape(n, context)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "obsprop fallback corpus (concept texts + package READMEs)"
