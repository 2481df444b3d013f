"""Reasoning over detected propositions: forward chaining to a fixed point (with proofs), and the
reference code's four ``reasoner_rules_checking`` modes for parity.

``mode`` (``rules_mode`` in the config):

``forward_chaining`` (the paper's semantics, the default): every round fires all rules whose body
holds on the facts known so far (closed world: an undetected concept is false) and adds their
heads; it stops when a round adds nothing. Rounds are synchronous, so a chain ``A->B->C->D->E``
from ``A`` adds ``E`` in round 4. Conclusions are sticky: a head once added stays, even if a later
head would falsify a negated body (monotone, like the reference's sticky ``active_rules``).

``legacy`` (the reference's default): one pass; a rule fires iff its body's names occur in the
detected list in order, where after each match the cursor jumps past the *first occurrence* of that
name in the whole list (the reference's lookup, kept exactly).

The next three read the detected names, in sequence order, as one *statement* with the reference's
token grammar (:func:`.logic.parse_reference_tokens`): a concept named ``is``, ``and``, ``or``,
``not`` or ``xor`` acts as that keyword, other names are propositions, juxtaposition is ``and``.
A conceptkit rule ``body -> head`` plays the reference's rule key ``body... is head``; its body is
re-read with the same grammar (:meth:`.logic.Rule.reference_body`) because these modes compare
formulas by structure. At most one rule fires per call in ``simple`` and ``complex``.

``simple``: ``Q`` = the propositions (every non-empty name, keywords-as-names included) of the
parsed statement, consequent included if it contains ``is``. Each rule scores
``J = |Q ∩ B| / |Q ∪ B|`` with ``B`` its body's propositions (``J = 0`` if either set is empty).
The rule with the highest ``J`` fires if ``J >= 0.5``; on a tie the earliest rule wins.

``complex``: consecutive duplicates are removed from the detected list (``A A B A -> A B A``;
like the reference, a later ``"Answer: True"``, ``"Answer: False"`` or ``"Answer: Uncertain"``
is dropped as well, a first one is kept). The list is cut into sub-queries, each ending one token
after an ``is`` (tokens after the last cut join the last sub-query). For each sub-query in turn:
it must parse to ``antecedent → consequent``; the rule whose body best matches the antecedent's
propositions (Jaccard as above, ``>= 0.3``, earliest on ties) gives the premise (that body); the
consequent is proved by backward chaining from the knowledge base ``{premise}``; the rules used are
appended to the proof path. The first sub-query that fails any step ends the loop, keeping the path
so far. The last rule of the path (the one that concluded the last proved consequent) fires.

Backward chaining (the reference's ``_backward_chain``, kept step for step, used by ``complex``
and ``open_world``): a goal is proved if it is in the knowledge base (structural equality); a
conjunction needs both parts, a disjunction either (left first), an implication its right side;
otherwise every rule whose head is the goal is tried, in order, proving its body as the sub-goal,
and the shortest proof wins (the first among equal lengths). Goals on the current path fail
(cycles); results for goals other than ``∧``/``∨``/``→`` are memoised within one proof (a failure
caused by a cycle included, as in the reference), and a goal fails at once if its
negation was already proved. Negation is not closed-world here: ``¬a`` is proved only if ``¬a``
itself is in the knowledge base (rule heads are positive names).

``open_world``: the detected list loses consecutive duplicates (as in ``complex``); a token
``"but not both"`` turns the nearest ``or`` before it into ``xor`` and is dropped; if the first name
starts with a capital letter and the second token is not ``is``/``do``/``have``, an ``is`` is
inserted after the first name (``["Max", "wumpus"] -> "Max is wumpus"``); ``do`` and ``have``
become ``is``. The statement ``premise → consequent`` is answered in three values over the knowledge
base ``{each rule as an implication} ∪ {premise}``: ``"uncertain"`` if some atom of the consequent
can be proved neither true nor false; else ``"true"`` if the consequent is provable and its negation
is not, ``"false"`` in the opposite case, ``"uncertain"`` if both or neither. A statement that is
not an implication answers ``"true"`` (the reference's fallback: its proof search returns an empty
list, never None, so its ``is not None`` test always passes; kept). Then every rule whose body is
exactly the single name equal to the answer (``"true"``, ``"false"`` or ``"uncertain"``, lower
case, as the reference compares) fires; those answer rules are not part of the knowledge base (in
the reference they are one-token keys, which are not implications).

What differs from the reference (on purpose):

* the ``simple`` mode's stray ``print`` of the detected list is gone;
* an empty detected list reasons to nothing in every mode; in the reference ``open_world`` answers
  ``"true"`` for an empty row when another row of the batch has detections (and skips reasoning
  when none has), so the result depends on the batch;
* the reference's bare rule keys without ``is`` (``("Tower", "Paris", "France")``) are not
  implications, so ``simple`` and ``complex`` never fire them; a conceptkit rule always has a head,
  so it always takes part (the ``open_world`` answer rules excepted, see above);
* heads are single positive names: the reference's compound or negated consequents
  (``"Max is not wumpus"`` as a rule) are not expressible, so ``¬a`` is provable only from a premise;
* ``complex`` fires the first rule equal to the proof's last rule; the reference indexes its
  de-duplicated parsed-rule list, which is off by one for later rules when two rules parse alike;
* several answer rules with the same body (impossible in the reference's dict) all fire;
* universal rules (``x``) are not supported (see :mod:`.logic`);
* the reference keeps a rule fired once in a generation active (``max`` over time); that
  stickiness belongs to the caller: the engine merges each step's inference with the previous one
  through :func:`keep_fired`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conceptkit.api import InputError

from conceptkit_activation_reasoning.logic import (
    And, Formula, Implies, Not, Or, Rule, Var, negate, parse_reference_tokens, reference_atoms,
    reference_propositions,
)


@dataclass(frozen=True)
class Firing:
    """One rule firing: which rule, the head it added, the round, and the facts it used."""

    rule: int
    head: str
    round: int
    support: tuple[str, ...]


@dataclass
class Inference:
    """The result: ``known`` facts, the ``firings`` in order, the number of rounds (1 for the one-pass
    modes) and, for the parity modes, ``details`` (mode, query, Jaccard score, proof path, answer)."""

    facts: frozenset[str]
    known: set[str]
    firings: list[Firing] = field(default_factory=list)
    rounds: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # the parity modes: query, score, proof path, answer

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


# -- the reference's parity modes: simple, complex, open_world -------------------------------------
SIMPLE_THRESHOLD = 0.5  # the reference's complete_statement(..., threshold=0.5)
COMPLEX_THRESHOLD = 0.3  # the reference's find_proof(..., threshold=0.3)
ANSWERS = ("true", "false", "uncertain")
_ANSWER_TOKENS = frozenset({"Answer: True", "Answer: False", "Answer: Uncertain"})


@dataclass(frozen=True)
class _RefRule:
    """A rule in the reference's form: its index (the first of equal rules), body and head."""

    index: int
    body: Formula
    head: str


def _reference_rules(rules: Sequence[Rule]) -> list[_RefRule]:
    """Rules with reference-grammar bodies, de-duplicated (first kept), in order."""
    out: list[_RefRule] = []
    seen: set[tuple[Formula, str]] = set()
    for i, r in enumerate(rules):
        rr = _RefRule(i, r.reference_body(), r.head)
        if (rr.body, rr.head) in seen:
            continue
        seen.add((rr.body, rr.head))
        out.append(rr)
    return out


def remove_consecutive_duplicates(names: Sequence[str]) -> list[str]:
    """Drop a name equal to the last kept one, and any later ``"Answer: ..."`` name (the
    reference's helper, ProverQA answer concepts included)."""
    out: list[str] = list(names[:1])
    for n in names[1:]:
        if n != out[-1] and n not in _ANSWER_TOKENS:
            out.append(n)
    return out


def or_to_xor(names: Sequence[str]) -> list[str]:
    """Each ``"but not both"`` turns the nearest ``or`` before it into ``xor`` and is removed."""
    out = list(names)
    for k in sorted((i for i, n in enumerate(out) if n == "but not both"), reverse=True):
        for j in range(k - 1, -1, -1):
            if out[j] == "or":
                out[j] = "xor"
                break
        del out[k]
    return out


def implicit_is(names: Sequence[str]) -> list[str]:
    """``["Max", "wumpus"] -> ["Max", "is", "wumpus"]``: a capitalised first name not followed by
    ``is``/``do``/``have`` gets an ``is`` after it."""
    out = list(names)
    if len(out) >= 2 and out[0][:1].isupper() and out[1] not in ("is", "do", "have"):
        return [out[0], "is", *out[1:]]
    return out


def jaccard(a: set[str], b: set[str]) -> float:
    """``|a ∩ b| / |a ∪ b|``, 0 when either set is empty (the reference's score)."""
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def best_match(query: set[str], rules: Sequence[_RefRule], threshold: float) -> tuple[_RefRule, float] | None:
    """The rule whose body's propositions are most Jaccard-similar to ``query`` (earliest on ties),
    if the score reaches ``threshold``."""
    best: tuple[_RefRule, float] | None = None
    for r in rules:
        score = jaccard(query, reference_propositions(r.body))
        if score >= threshold and (best is None or score > best[1]):
            best = (r, score)
    return best


def split_subqueries(names: Sequence[str]) -> list[list[str]]:
    """Cut after the token that follows each ``is``; the rest joins the last piece."""
    cuts = [i for i, n in enumerate(names) if n == "is"]
    if not cuts:
        return [list(names)]
    out: list[list[str]] = []
    start = 0
    for k in cuts:
        out.append(list(names[start : k + 2]))
        start = k + 2
    if start < len(names):
        out[-1].extend(names[start:])
    return out


class BackwardChainer:
    """The reference's backward chaining (see the module docs) over rules with name heads."""

    def __init__(self, rules: Sequence[_RefRule]) -> None:
        self.by_head: dict[str, list[_RefRule]] = {}
        for r in rules:
            self.by_head.setdefault(r.head, []).append(r)

    def prove(self, goal: Formula, premise: Formula, facts: frozenset[Formula] = frozenset()) -> list[int] | None:
        """Rule indices proving ``goal`` (premises first) from the knowledge base ``facts ∪ {premise}``:
        ``[]`` if the goal is in it, None if unprovable. The premise is compared, never hashed, so a
        long detected statement does not hit Python's recursion limit in ``hash``."""
        return self._chain(goal, frozenset(), {}, (facts, premise))

    def _chain(self, goal: Formula, visited: frozenset[Formula], memo: dict[Formula, list[int] | None],
               kb: tuple[frozenset[Formula], Formula]) -> list[int] | None:
        if goal in memo:
            return memo[goal]
        if goal in visited:
            return None
        neg = negate(goal)
        if neg in memo and memo[neg] is not None:
            memo[goal] = None
            return None
        if goal in kb[0] or goal == kb[1]:
            return []
        inner = visited | {goal}
        if isinstance(goal, And):
            left = self._chain(goal.left, inner, memo, kb)
            if left is None:
                return None
            right = self._chain(goal.right, inner, memo, kb)
            return None if right is None else list(dict.fromkeys(left + right))
        if isinstance(goal, Or):
            left = self._chain(goal.left, inner, memo, kb)
            return left if left is not None else self._chain(goal.right, inner, memo, kb)
        if isinstance(goal, Implies):
            return self._chain(goal.right, inner, memo, kb)
        shortest: list[int] | None = None
        for r in self.by_head.get(goal.name, []) if isinstance(goal, Var) else []:
            sub = self._chain(r.body, inner, memo, kb)
            if sub is not None and (shortest is None or len(sub) + 1 < len(shortest)):
                shortest = sub + [r.index]
        memo[goal] = shortest
        return shortest


def _fire(inf: Inference, rule: Rule, index: int, detected: Sequence[str]) -> None:
    present = set(detected)
    support = tuple(dict.fromkeys(a for a in _body_names(rule) if a in present))
    inf.firings.append(Firing(index, rule.head, 1, support))
    inf.known.add(rule.head)
    inf.rounds = 1


def _body_names(rule: Rule) -> list[str]:
    """The body's propositions in the order they are written (for a firing's support)."""
    if rule.tokens is not None:
        return [t for t in rule.tokens if t not in ("and", "or", "not", "xor")]
    return rule.body.atoms()


def simple_match(detected: Sequence[str], rules: Sequence[Rule]) -> Inference:
    """The reference's ``simple`` mode (see the module docs)."""
    inf = Inference(frozenset(detected), set(detected))
    inf.details["mode"] = "simple"
    if not detected:
        return inf
    query = parse_reference_tokens(detected)
    inf.details["query"] = " ".join(detected)
    m = best_match(reference_propositions(query), _reference_rules(rules), SIMPLE_THRESHOLD)
    if m is not None:
        inf.details["score"] = m[1]
        _fire(inf, rules[m[0].index], m[0].index, detected)
    return inf


def complex_proof(detected: Sequence[str], rules: Sequence[Rule]) -> Inference:
    """The reference's ``complex`` mode (see the module docs); ``details["proof"]`` is the path."""
    inf = Inference(frozenset(detected), set(detected))
    inf.details["mode"] = "complex"
    if not detected:
        return inf
    refs = _reference_rules(rules)
    chainer = BackwardChainer(refs)
    path: list[int] = []
    subqueries = split_subqueries(remove_consecutive_duplicates(detected))
    inf.details["subqueries"] = [" ".join(q) for q in subqueries]
    for sub in subqueries:
        query = parse_reference_tokens(sub)
        if not isinstance(query, Implies):
            break
        m = best_match(reference_propositions(query.left), refs, COMPLEX_THRESHOLD)
        if m is None:
            break
        proof = chainer.prove(query.right, m[0].body)
        if proof is None:
            break
        path.extend(proof)
    inf.details["proof"] = path
    if path:
        _fire(inf, rules[path[-1]], path[-1], detected)
    return inf


def _is_answer_rule(r: _RefRule) -> bool:
    return isinstance(r.body, Var) and r.body.name in ANSWERS


def three_valued(statement: Formula, rules: Sequence[_RefRule]) -> str:
    """``"true"``, ``"false"`` or ``"uncertain"`` for a statement (see the module docs)."""
    if not isinstance(statement, Implies):
        return "true"  # the reference's fallback, kept
    premise, consequent = statement.left, statement.right
    facts = frozenset(Implies(r.body, Var(r.head)) for r in rules)
    chainer = BackwardChainer(rules)
    for atom in sorted(reference_atoms(consequent)):
        if chainer.prove(Var(atom), premise, facts) is None and chainer.prove(Not(Var(atom)), premise, facts) is None:
            return "uncertain"
    true = chainer.prove(consequent, premise, facts) is not None
    false = chainer.prove(negate(consequent), premise, facts) is not None
    if true != false:
        return "true" if true else "false"
    return "uncertain"


def open_world(detected: Sequence[str], rules: Sequence[Rule]) -> Inference:
    """The reference's ``open_world`` mode (see the module docs); ``details["answer"]``."""
    inf = Inference(frozenset(detected), set(detected))
    inf.details["mode"] = "open_world"
    if not detected:
        return inf
    names = implicit_is(or_to_xor(remove_consecutive_duplicates(detected)))
    names = ["is" if n in ("do", "have") else n for n in names]
    statement = parse_reference_tokens(names)
    refs = _reference_rules(rules)
    answer = three_valued(statement, [r for r in refs if not _is_answer_rule(r)])
    inf.details.update(statement=" ".join(names), answer=answer)
    for r in refs:
        if _is_answer_rule(r) and r.body == Var(answer):
            _fire(inf, rules[r.index], r.index, detected)
    return inf


RULES_MODES = ("forward_chaining", "legacy", "simple", "complex", "open_world")


def reason(detected: Sequence[str], rules: Sequence[Rule], mode: str = "forward_chaining") -> Inference:
    """``detected`` in sequence order (repeats allowed); ``mode`` one of :data:`RULES_MODES`."""
    if mode == "forward_chaining":
        return forward_chain(list(dict.fromkeys(detected)), rules)
    if mode == "legacy":
        return legacy_match(detected, rules)
    parity = {"simple": simple_match, "complex": complex_proof, "open_world": open_world}.get(mode)
    if parity is None:
        raise InputError(f"unknown rules mode {mode!r}; expected one of {', '.join(RULES_MODES)}")
    try:
        return parity(detected, rules)
    except RecursionError:
        raise InputError(
            f"rules mode {mode!r}: the detected list of {len(detected)} names nests too deeply to read as one statement "
            "(Python's recursion limit; the reference's parser has the same limit)"
        ) from None


def keep_fired(previous: Inference, current: Inference) -> Inference:
    """``current`` plus every rule that fired in ``previous`` and not again: during generation a rule
    once fired stays active (spec §4.4; the reference's ``active_rules = max(previous, current)``).

    Forward chaining and ``legacy`` are monotone in the facts, so for them this changes nothing;
    ``simple``, ``complex`` and ``open_world`` re-read the whole statement and could otherwise drop a
    conclusion when later tokens add propositions."""
    again = {(f.rule, f.head) for f in current.firings}
    kept = [f for f in previous.firings if (f.rule, f.head) not in again]
    if kept:
        current.firings = kept + current.firings
        current.known |= {f.head for f in kept}
    return current
