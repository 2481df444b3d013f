"""The concept library: small example sets that ship with conceptkit, and user-supplied ones.

Shipped sets (see ``data/index.json`` and ``docs/concepts.md``): ``positive_sentiment``,
``negative_sentiment``, ``male``, ``female``, ``topic_food``, ``topic_sport``,
``topic_science`` and ``neutral`` (800 mundane sentences: the pool random sets are drawn
from). They are generated deterministically by ``scripts/make_concepts.py``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from conceptkit.data import fingerprint
from conceptkit.errors import InputError, UnknownNameError


@dataclass(frozen=True)
class ConceptSet:
    """Named examples of a concept, with a content fingerprint for provenance."""

    name: str
    examples: tuple[str, ...]
    description: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(list(self.examples))

    def __len__(self) -> int:
        return len(self.examples)


@cache
def _index() -> dict[str, dict]:
    return json.loads(resources.files("conceptkit.concepts").joinpath("data/index.json").read_text())


def names() -> list[str]:
    """Names of the shipped concept sets."""
    return sorted(_index())


def load(name_or_path: str | Path, name: str | None = None) -> ConceptSet:
    """A shipped set by name, or a text file with one example per line (blank lines skipped)."""
    key = str(name_or_path)
    if key in _index():
        entry = _index()[key]
        text = resources.files("conceptkit.concepts").joinpath("data/" + entry["file"]).read_text()
        return ConceptSet(key, tuple(line for line in text.splitlines() if line.strip()), entry["description"])
    path = Path(key)
    if path.suffix and path.exists():
        lines = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if not lines:
            raise InputError(f"concept file {key!r} holds no examples")
        return ConceptSet(name or path.stem, lines, f"examples from {path.name}")
    raise UnknownNameError("concept set", key, _index())


def from_examples(name: str, examples: list[str] | tuple[str, ...], description: str = "") -> ConceptSet:
    """A concept set from a list of strings."""
    cleaned = tuple(e for e in examples if isinstance(e, str) and e.strip())
    if not cleaned:
        raise InputError(f"concept {name!r} has no examples")
    return ConceptSet(name, cleaned, description)


def random_sets(n: int, size: int, pool: ConceptSet | None = None, seed: int = 0, exclude: set[str] | None = None) -> list[ConceptSet]:
    """``n`` disjoint random sets of ``size`` examples drawn from ``pool`` (default: ``neutral``)."""
    pool = pool or load("neutral")
    candidates = [e for e in pool.examples if not exclude or e not in exclude]
    if n < 1 or size < 1:
        raise InputError(f"need at least one random set of at least one example (got n={n}, size={size})")
    if n * size > len(candidates):
        raise InputError(
            f"the random pool {pool.name!r} has {len(candidates)} examples, too few for {n} disjoint sets of {size}"
        )
    rng = random.Random(seed)
    shuffled = candidates[:]
    rng.shuffle(shuffled)
    return [ConceptSet(f"random{size}_{i}", tuple(shuffled[i * size : (i + 1) * size]), f"random set {i} from {pool.name}") for i in range(n)]
