"""Reasoning over detected propositions: forward chaining to a fixed point (with proofs), and the
reference's ``legacy`` ordered-subsequence matching for parity.

Forward chaining (the paper's semantics, the default): every round fires all rules whose body
holds on the facts known so far (closed world: an undetected concept is false) and adds their
heads; it stops when a round adds nothing. Rounds are synchronous, so a chain ``A->B->C->D->E``
from ``A`` adds ``E`` in round 4. Conclusions are sticky: a head once added stays, even if a later
head would falsify a negated body (monotone, like the reference's sticky ``active_rules``).

``legacy`` (the reference's default ``reasoner_rules_checking``): one pass; a rule fires iff its
body's names occur in the detected list in order, where after each match the cursor jumps past the
*first occurrence* of that name in the whole list (the reference's lookup, kept exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from conceptkit_activation_reasoning.logic import Rule


@dataclass(frozen=True)
class Firing:
    """One rule firing: which rule, the head it added, the round, and the facts it used."""

    rule: int
    head: str
    round: int
    support: tuple[str, ...]


@dataclass
class Inference:
    """The fixed point: ``known`` facts, the ``firings`` in order and the number of rounds."""

    facts: frozenset[str]
    known: set[str]
    firings: list[Firing] = field(default_factory=list)
    rounds: int = 0

    @property
    def concluded(self) -> list[str]:
        """Heads added by rules (not detected), in firing order."""
        return [f.head for f in self.firings]

    def proof(self, concept: str) -> list[Firing]:
        """The firings that derive ``concept`` from detected facts, premises first ([] for a fact)."""
        by_head = {f.head: f for f in self.firings}
        out: list[Firing] = []
        seen: set[str] = set()

        def visit(c: str) -> None:
            if c in seen or c not in by_head:
                return
            seen.add(c)
            f = by_head[c]
            for s in f.support:
                visit(s)
            out.append(f)

        visit(concept)
        return out


def forward_chain(facts: "set[str] | Sequence[str]", rules: Sequence[Rule], max_rounds: int = 1000) -> Inference:
    """Fire rules to a fixed point; see the module docs for the semantics."""
    inf = Inference(frozenset(facts), set(facts))
    for rnd in range(1, max_rounds + 1):
        snapshot = frozenset(inf.known)
        new = []
        for i, r in enumerate(rules):
            if r.head not in snapshot and r.head not in {f.head for f in new} and r.body.holds(snapshot):
                support = tuple(dict.fromkeys(a for a in r.body.positive_atoms() if a in snapshot))
                new.append(Firing(i, r.head, rnd, support))
        if not new:
            break
        inf.firings.extend(new)
        inf.known |= {f.head for f in new}
        inf.rounds = rnd
    return inf


def legacy_match(detected: Sequence[str], rules: Sequence[Rule]) -> Inference:
    """The reference's ordered matching over the detected names in sequence order (one pass)."""
    inf = Inference(frozenset(detected), set(detected))
    first = {}
    for i, c in enumerate(detected):
        first.setdefault(c, i)
    for i, r in enumerate(rules):
        body = r.ordered_body()
        cursor, ok = 0, bool(body)
        for c in body:
            j = first.get(c)
            if j is None or j < cursor:
                ok = False
                break
            cursor = j + 1
        if ok:
            inf.firings.append(Firing(i, r.head, 1, tuple(body)))
            inf.known.add(r.head)
            inf.rounds = 1
    return inf


def reason(detected: Sequence[str], rules: Sequence[Rule], mode: str = "forward_chaining") -> Inference:
    """``detected`` in sequence order (repeats allowed); ``mode`` ``forward_chaining`` or ``legacy``."""
    if mode == "legacy":
        return legacy_match(detected, rules)
    return forward_chain(list(dict.fromkeys(detected)), rules)
