"""The offline corpus ObsProp scores features on (no downloads; deterministic): the core's corpus
(``conceptkit.sae.corpus``: Python and package documentation prose), held-out split first."""

from __future__ import annotations

from typing import Any

import torch

from conceptkit.sae import corpus as core_corpus


def corpus_windows(tokenizer: Any, n_tokens: int, context: int = 128, seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """``{"input_ids", "attention_mask"}`` windows of ``context`` tokens totalling ``>= n_tokens``
    (the held-out split when it is long enough, else the training split), and the corpus' name
    (with fingerprint) for provenance."""
    corpus = core_corpus.build()
    split = "held_out"
    windows = core_corpus.token_windows(corpus, tokenizer, split=split, context=context, max_tokens=n_tokens, seed=seed)
    if int(windows["attention_mask"].sum()) < n_tokens:
        split = "train"
        windows = core_corpus.token_windows(corpus, tokenizer, split=split, context=context, max_tokens=n_tokens, seed=seed)
    return windows, f"conceptkit.sae.corpus {split} {corpus.fingerprint[:12]}"
