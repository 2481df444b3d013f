"""Preserved text for the key statistics, read offline and deterministically.

The reference streams 100,000 Wikipedia texts; nothing is downloaded here. The default corpus is
the project's shipped concept example sets plus English prose paragraphs from the long
descriptions (README text) of the distributions installed in this environment, in sorted order.
# TODO(public-surface): switch to the core's offline corpus (conceptkit.sae corpus) once it lands.
User texts are appended. The fingerprint of the exact list goes into provenance and the cache key.
"""

from __future__ import annotations

import re
from importlib import metadata

from conceptkit.api import fingerprint

_WORD = re.compile(r"[A-Za-z][a-z]+")


def _prose(paragraph: str) -> str | None:
    """A paragraph that reads as English prose (few symbols, mostly words), else None."""
    text = " ".join(paragraph.split())
    if not 80 <= len(text) <= 1200 or text.startswith(("#", "|", "-", "*", ">", "=", ".. ", "[", "!", "`", "<", "{")):
        return None
    letters = sum(c.isalpha() or c == " " for c in text) / len(text)
    words = _WORD.findall(text)
    if letters < 0.9 or len(words) < 12 or "://" in text or "`" in text or "::" in text:
        return None
    return text


def package_prose(limit: int | None = None) -> list[str]:
    """Prose paragraphs from installed distributions' long descriptions (sorted by name)."""
    dists = {}
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name and name not in dists:
            dists[name] = dist
    out: list[str] = []
    seen: set[str] = set()
    for name in sorted(dists):
        body = dists[name].metadata.get_payload() or dists[name].metadata.get("Description") or ""
        for para in re.split(r"\n\s*\n", str(body)):
            text = _prose(para)
            if text and text not in seen:
                seen.add(text)
                out.append(text)
                if limit is not None and len(out) >= limit:
                    return out
    return out


def concept_texts() -> list[str]:
    """Every example of the project's shipped concept sets, in name order."""
    from conceptkit import concepts  # TODO(public-surface)

    return [ex for name in concepts.names() for ex in concepts.load(name).examples]


def default_corpus(n_prose: int | None = 600) -> list[str]:
    """Concept texts followed by up to ``n_prose`` prose paragraphs."""
    return concept_texts() + package_prose(n_prose)


def preserved_texts(user_texts: list[str] | None = None, corpus: str = "default", n_prose: int | None = 600) -> tuple[list[str], str]:
    """The preserved-text list and its fingerprint."""
    texts = default_corpus(n_prose) if corpus == "default" else []
    texts = texts + list(user_texts or [])
    return texts, fingerprint(texts)
