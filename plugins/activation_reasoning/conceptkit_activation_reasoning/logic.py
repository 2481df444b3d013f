"""Rules over concept propositions: a small parser and printer (and, or, not, xor, implication).

A rule is ``body -> head``: the body is a formula over concept names, the head one concept name.
Two input forms are accepted:

* a string: ``"Bridge and San Francisco and United States -> Golden Gate Bridge"``,
  ``"Weapon ∧ ¬Police → Unsafe"``, ``"(a or b) xor c is d"``. Consecutive words form one
  concept name ("San Francisco"); keywords are ``and or not xor`` and ``is``/``implies``/
  ``then``/``do``/``have`` for the implication (the reference's aliases), plus the symbols
  ``∧ ∨ ¬ ⊕ → -> & | ! ~ ^`` and parentheses. A leading ``if`` is ignored.
* the reference's dictionary entry ``(("Tower", "Paris", "France"), "Eiffel Tower")``: each
  tuple element is one concept name (or a keyword), and juxtaposition means conjunction.

Precedence: ``not`` > ``and`` > ``xor`` > ``or``; binary operators nest to the right, so
``a and b and c`` prints as ``(a ∧ (b ∧ c))`` like the reference's printer. ``xor(a, b)`` is
``(a ∧ ¬b) ∨ (¬a ∧ b)`` (see :meth:`Xor.expand`). ``str(parse_rule(s))`` parses back to the
same rule (round trip, tested). The reference's universal variable ``x`` is not supported.

The reference's own grammar (``LogicalParser.parse`` over a token list) is also here, as
:func:`parse_reference_tokens`, because its parity rule modes (``simple``, ``complex``,
``open_world``) read the *detected concept sequence* as a statement and compare formulas by
structure. It differs from the grammar above: the last ``is`` splits an implication, then the
first ``xor`` (expanded at once to ``(a ∧ ¬b) ∨ (¬a ∧ b)``), the first ``or``, the first ``and``;
an all-name list is a right-nested conjunction; a leading ``not`` negates the rest (``¬¬a``
collapses to ``a``); anything else becomes one name joined by spaces (``["A", "not", "B"]`` is the
single proposition ``"A not B"``), and an empty list is the empty name ``""``. Parentheses do not
exist there. Each :class:`Rule` keeps its body tokens (``Rule.tokens``) so that those modes can
re-read the body with the reference grammar (:meth:`Rule.reference_body`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from conceptkit.api import InputError


class Formula:
    """A propositional formula over concept names (closed world: absent means false)."""

    def holds(self, known: set[str] | frozenset[str]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def atoms(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def positive_atoms(self) -> list[str]:
        """Names that occur under an even number of negations, in order (used as a proof's support)."""
        return self._signed(True)

    def _signed(self, positive: bool) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Var(Formula):
    name: str

    def holds(self, known: set[str] | frozenset[str]) -> bool:
        return self.name in known

    def atoms(self) -> list[str]:
        return [self.name]

    def _signed(self, positive: bool) -> list[str]:
        return [self.name] if positive else []

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Not(Formula):
    arg: Formula

    def holds(self, known: set[str] | frozenset[str]) -> bool:
        return not self.arg.holds(known)

    def atoms(self) -> list[str]:
        return self.arg.atoms()

    def _signed(self, positive: bool) -> list[str]:
        return self.arg._signed(not positive)

    def __str__(self) -> str:
        return f"¬{self.arg}"  # a compound argument prints its own parentheses


@dataclass(frozen=True)
class _Binary(Formula):
    left: Formula
    right: Formula
    symbol = "?"

    def atoms(self) -> list[str]:
        return self.left.atoms() + self.right.atoms()

    def _signed(self, positive: bool) -> list[str]:
        return self.left._signed(positive) + self.right._signed(positive)

    def __str__(self) -> str:
        return f"({self.left} {self.symbol} {self.right})"


@dataclass(frozen=True)
class And(_Binary):
    symbol = "∧"

    def holds(self, known: set[str] | frozenset[str]) -> bool:
        return self.left.holds(known) and self.right.holds(known)


@dataclass(frozen=True)
class Or(_Binary):
    symbol = "∨"

    def holds(self, known: set[str] | frozenset[str]) -> bool:
        return self.left.holds(known) or self.right.holds(known)


@dataclass(frozen=True)
class Xor(_Binary):
    symbol = "⊕"

    def holds(self, known: set[str] | frozenset[str]) -> bool:
        return self.expand().holds(known)

    def expand(self) -> Formula:
        """``(a ∧ ¬b) ∨ (¬a ∧ b)``: the definition ``holds`` evaluates."""
        a, b = self.left, self.right
        return Or(And(a, Not(b)), And(Not(a), b))

    def _signed(self, positive: bool) -> list[str]:
        return self.left.atoms() + self.right.atoms()  # both signs occur; either may support


@dataclass(frozen=True)
class Implies(_Binary):
    """``left → right``; only the reference grammar builds it (a query ``... is ...``)."""

    symbol = "→"

    def holds(self, known: set[str] | frozenset[str]) -> bool:
        return (not self.left.holds(known)) or self.right.holds(known)


@dataclass(frozen=True)
class Rule:
    """``body -> head``. ``tokens``: the body as the reference's token list (names and the keywords
    ``and or not xor``), or None when the source had parentheses or the rule was built directly;
    not part of equality."""

    body: Formula
    head: str
    tokens: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.body}-> {self.head}"

    def ordered_body(self) -> list[str]:
        """The body's positive names in written order (what ``legacy`` matching needs)."""
        return self.body.positive_atoms()

    def reference_body(self) -> Formula:
        """The body as the reference's parser builds it from the same tokens (the parity modes
        compare formulas by structure); without tokens, :func:`to_reference` of ``body``."""
        return parse_reference_tokens(self.tokens) if self.tokens is not None else to_reference(self.body)


# -- tokens ---------------------------------------------------------------------------------------
_SYMBOLS = {"∧": "and", "&": "and", "∨": "or", "|": "or", "¬": "not", "!": "not", "~": "not", "⊕": "xor", "^": "xor",
            "→": "implies", "->": "implies", "(": "(", ")": ")"}
_KEYWORDS = {"and": "and", "or": "or", "not": "not", "xor": "xor", "is": "implies", "implies": "implies",
             "then": "implies", "do": "implies", "have": "implies"}
_TOKEN = re.compile(r"\s*(->|[∧&∨|¬!~⊕^→()]|[^\s∧&∨|¬!~⊕^→()]+)")


def _tokens_from_text(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    words: list[str] = []
    pos = 0
    text = text.strip()

    def flush() -> None:
        if words:
            out.append(("name", " ".join(words)))
            words.clear()

    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            break
        tok = m.group(1)
        pos = m.end()
        if tok in _SYMBOLS:
            flush()
            out.append(("op", _SYMBOLS[tok]))
        elif tok in _KEYWORDS:
            flush()
            out.append(("op", _KEYWORDS[tok]))
        elif tok.lower() == "if" and not out and not words:
            continue
        else:
            words.append(tok)
    flush()
    return out


def _tokens_from_parts(parts: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for p in parts:
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"a rule's body elements must be non-empty strings, got {p!r}")
        key = p.strip()
        if key in _KEYWORDS or key in _SYMBOLS:
            out.append(("op", _KEYWORDS.get(key) or _SYMBOLS[key]))
        else:
            out.append(("name", key))
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], source: str) -> None:
        self.toks, self.i, self.source = tokens, 0, source

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def fail(self, what: str) -> InputError:
        got = self.peek()
        return InputError(f"cannot parse rule {self.source!r}: expected {what} at token {self.i + 1}, got {got[1] if got else 'the end'!r}")

    def take(self, kind: str, value: str | None = None) -> str:
        t = self.peek()
        if t is None or t[0] != kind or (value is not None and t[1] != value):
            raise self.fail(value or kind)
        self.i += 1
        return t[1]

    def _chain(self, op: str, sub: "callable", implicit: bool = False) -> Formula:  # type: ignore[valid-type]
        parts = [sub()]
        while True:
            t = self.peek()
            if t == ("op", op):
                self.i += 1
                parts.append(sub())
            elif implicit and t is not None and (t[0] == "name" or t[1] in ("(", "not")):
                parts.append(sub())  # juxtaposition is conjunction
            else:
                break
        node = parts[-1]
        for p in reversed(parts[:-1]):
            node = {"and": And, "or": Or, "xor": Xor}[op](p, node)
        return node

    def formula(self) -> Formula:
        return self._chain("or", lambda: self._chain("xor", lambda: self._chain("and", self.unary, implicit=True)))

    def unary(self) -> Formula:
        t = self.peek()
        if t == ("op", "not"):
            self.i += 1
            return Not(self.unary())
        if t == ("op", "("):
            self.i += 1
            f = self.formula()
            self.take("op", ")")
            return f
        return Var(self.take("name"))


def parse_formula(text: str | Sequence[str]) -> Formula:
    """A formula from text or from a tuple of names/keywords (juxtaposition = and)."""
    tokens = _tokens_from_text(text) if isinstance(text, str) else _tokens_from_parts(text)
    p = _Parser(tokens, str(text))
    if not tokens:
        raise InputError(f"cannot parse an empty formula: {text!r}")
    f = p.formula()
    if p.peek() is not None:
        raise p.fail("the end of the formula")
    return f


def parse_rule(rule: "str | Rule | tuple | list | dict") -> Rule:
    """One rule: ``"body -> head"`` text, ``(body_tuple_or_text, head)``, ``{"body":..., "head":...}``."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, dict):
        if set(rule) != {"body", "head"}:
            raise InputError(f"a rule dict needs exactly the keys 'body' and 'head', got {sorted(rule)}")
        rule = (rule["body"], rule["head"])
    if isinstance(rule, (tuple, list)):
        if len(rule) != 2 or not isinstance(rule[1], str):
            raise InputError(f"a rule pair must be (body, head) with a string head, got {rule!r}")
        body = rule[0]
        toks = _tokens_from_text(body) if isinstance(body, str) else _tokens_from_parts(body)
        return Rule(parse_formula(body), rule[1].strip(), _reference_tokens(toks))
    if not isinstance(rule, str):
        raise InputError(f"a rule must be text, a (body, head) pair or a dict, got {type(rule).__name__}")
    tokens = _tokens_from_text(rule)
    arrows = [i for i, t in enumerate(tokens) if t == ("op", "implies")]
    if len(arrows) != 1:
        raise InputError(f"rule {rule!r} needs exactly one implication (->, →, is, then), found {len(arrows)}")
    body, head = tokens[: arrows[0]], tokens[arrows[0] + 1 :]
    if len(head) != 1 or head[0][0] != "name":
        raise InputError(f"rule {rule!r}: the head after the implication must be one concept name")
    p = _Parser(body, rule)
    if not body:
        raise InputError(f"rule {rule!r} has an empty body")
    f = p.formula()
    if p.peek() is not None:
        raise p.fail("the implication")
    return Rule(f, head[0][1], _reference_tokens(body))


def parse_rules(rules: "Iterable[object] | dict") -> list[Rule]:
    """Several rules; a dict is the reference's ``{body_tuple: head}`` form."""
    if isinstance(rules, dict):
        return [parse_rule((body, head)) for body, head in rules.items()]
    return [parse_rule(r) for r in rules]  # type: ignore[arg-type]


# -- the reference's grammar (parity rule modes) --------------------------------------------------
REFERENCE_KEYWORDS = frozenset({"is", "or", "and", "not", "xor"})
_UNIVERSAL = "x"  # the reference's universal variable: never an atom in its three-valued check


def _reference_tokens(tokens: Sequence[tuple[str, str]]) -> tuple[str, ...] | None:
    """Our body tokens as the reference's token list; None if they use parentheses (it has none)."""
    out = []
    for kind, value in tokens:
        if kind == "name":
            out.append(value)
        elif value in ("and", "or", "not", "xor"):
            out.append(value)
        else:
            return None
    return tuple(out)


def negate(f: Formula) -> Formula:
    """``¬f``, collapsing a double negation like the reference's ``Not`` operator."""
    return f.arg if isinstance(f, Not) else Not(f)


def parse_reference_tokens(tokens: Sequence[str]) -> Formula:
    """A token list read with the reference's grammar (see the module docs); no errors: every
    list is some formula, as in the reference."""
    toks = list(tokens)
    if not toks:
        return Var("")
    if len(toks) == 1 and toks[0] not in REFERENCE_KEYWORDS:
        return Var(toks[0])
    if "is" in toks:
        k = max(i for i, t in enumerate(toks) if t == "is")
        if k == 0:
            return Var("")
        return Implies(parse_reference_tokens(toks[:k]), parse_reference_tokens(toks[k + 1 :]))
    for op in ("xor", "or", "and"):
        if op in toks:
            k = toks.index(op)
            if 0 < k < len(toks) - 1:
                a, b = parse_reference_tokens(toks[:k]), parse_reference_tokens(toks[k + 1 :])
                if op == "xor":
                    return Or(And(a, negate(b)), And(negate(a), b))
                return Or(a, b) if op == "or" else And(a, b)
    if len(toks) > 1 and not any(t in REFERENCE_KEYWORDS for t in toks):
        return And(Var(toks[0]), parse_reference_tokens(toks[1:]))
    if toks[0] == "not" and len(toks) > 1:
        return negate(parse_reference_tokens(toks[1:]))
    return Var(" ".join(toks))


def to_reference(f: Formula) -> Formula:
    """A conceptkit formula in the reference's node set: ``xor`` expanded, ``¬¬a`` collapsed."""
    if isinstance(f, Var):
        return f
    if isinstance(f, Not):
        return negate(to_reference(f.arg))
    if isinstance(f, Xor):
        a, b = to_reference(f.left), to_reference(f.right)
        return Or(And(a, negate(b)), And(negate(a), b))
    if isinstance(f, _Binary):
        return type(f)(to_reference(f.left), to_reference(f.right))
    raise InputError(f"cannot convert formula {f!r} to the reference's form")


def reference_propositions(f: Formula) -> set[str]:
    """Every non-empty name in ``f`` (the reference's ``_get_propositions``; keywords included)."""
    if isinstance(f, Var):
        return {f.name} if f.name else set()
    if isinstance(f, Not):
        return reference_propositions(f.arg)
    if isinstance(f, _Binary):
        return reference_propositions(f.left) | reference_propositions(f.right)
    return set()


def reference_atoms(f: Formula) -> set[str]:
    """The reference's ``_get_atomic_propositions``: the propositions minus keywords and ``x``."""
    return {a for a in reference_propositions(f) if a not in REFERENCE_KEYWORDS and a != _UNIVERSAL}
