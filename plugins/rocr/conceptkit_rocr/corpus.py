"""Preserved text for the key statistics: the core's offline corpus, read deterministically.

The reference streams 100,000 Wikipedia texts; nothing is downloaded here. The default is the
project's offline English corpus (``conceptkit.sae.corpus``, the one the embedded SAE is trained
on: Python's reference documentation, standard-library and installed packages' docstrings,
package READMEs and conceptkit's concept-set sentences), its ``train`` split only. Its documents
are split into paragraphs and taken round-robin over the corpus's sources (so that the many
package docstrings do not crowd out the prose), each paragraph cut to ``max_chars_per_text``,
until ``budget_chars`` characters. User texts are appended. The fingerprint of the exact list
goes into provenance and the cache key; the corpus itself depends on the installation (the core
records its own fingerprint), so a changed environment recomputes the statistics.
"""

from __future__ import annotations

from itertools import zip_longest

import conceptkit as ck
from conceptkit.api import InputError, fingerprint

DEFAULT_BUDGET_CHARS = 160_000  # about 40,000 SmolLM2 tokens
MAX_CHARS_PER_TEXT = 1_200


def core_paragraphs(max_chars_per_text: int = MAX_CHARS_PER_TEXT) -> list[str]:
    """Paragraphs of the core corpus's train split, interleaved round-robin over its sources."""
    corpus = ck.sae.corpus.build()
    by_source: dict[str, list[str]] = {}
    for doc in corpus.split("train"):
        for par in doc.text.split("\n\n"):
            par = " ".join(par.split())
            if par:
                by_source.setdefault(doc.source, []).append(par[:max_chars_per_text])
    lists = [by_source[s] for s in corpus.sources if s in by_source]
    return [p for group in zip_longest(*lists) for p in group if p is not None]


def default_corpus(budget_chars: int = DEFAULT_BUDGET_CHARS) -> list[str]:
    """The first paragraphs of :func:`core_paragraphs` up to ``budget_chars`` characters."""
    out, total = [], 0
    for par in core_paragraphs():
        if total >= budget_chars:
            break
        out.append(par)
        total += len(par)
    return out


def preserved_texts(user_texts: list[str] | None = None, corpus: str = "default", budget_chars: int = DEFAULT_BUDGET_CHARS) -> tuple[list[str], str]:
    """The preserved-text list and its fingerprint."""
    if corpus not in ("default", "none"):
        raise InputError(f"stats_corpus must be 'default' or 'none', got {corpus!r}")
    texts = default_corpus(budget_chars) if corpus == "default" else []
    texts = texts + list(user_texts or [])
    if not texts:
        raise InputError("no preserved text: stats_corpus='none' needs stats_texts")
    return texts, fingerprint(texts)
