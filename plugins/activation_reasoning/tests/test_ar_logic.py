"""Rules and reasoning: the parser, forward chaining with proofs, and the legacy ordered matching."""

from __future__ import annotations

import pytest

import conceptkit as ck
from conceptkit_activation_reasoning.logic import And, Not, Or, Var, Xor, parse_formula, parse_rule, parse_rules
from conceptkit_activation_reasoning.reasoner import forward_chain, legacy_match, reason

GOLDEN = {("Tower", "Paris", "France"): "Eiffel Tower", ("Bridge", "San Francisco", "United States"): "Golden Gate Bridge"}


def test_golden_gate_order_matters_only_in_legacy() -> None:
    """Golden Gate: [Bridge, San Francisco, United States] fires in both modes; reordered, only forward chaining fires."""
    rules = parse_rules(GOLDEN)
    ordered = ["Bridge", "San Francisco", "United States"]
    shuffled = ["United States", "Bridge", "San Francisco"]
    assert legacy_match(ordered, rules).concluded == ["Golden Gate Bridge"]
    assert forward_chain(ordered, rules).concluded == ["Golden Gate Bridge"]
    assert legacy_match(shuffled, rules).concluded == []
    assert forward_chain(shuffled, rules).concluded == ["Golden Gate Bridge"]


def test_legacy_uses_first_occurrence_lookup() -> None:
    """legacy: the cursor jumps past a name's first occurrence in the whole list, so [b, a, b] does not match a->b."""
    rules = parse_rules([(("a", "b"), "c")])
    assert legacy_match(["b", "a", "b"], rules).concluded == []
    assert legacy_match(["a", "x", "b"], rules).concluded == ["c"]


def test_four_step_chain_reaches_fixed_point_with_proof() -> None:
    """A->B->C->D->E from A: E is known after 4 rounds and its proof has 4 firings in order."""
    rules = parse_rules(["A -> B", "B -> C", "C -> D", "D -> E"])
    inf = forward_chain(["A"], rules)
    assert inf.known == {"A", "B", "C", "D", "E"} and inf.rounds == 4
    proof = inf.proof("E")
    assert [f.head for f in proof] == ["B", "C", "D", "E"] and [f.round for f in proof] == [1, 2, 3, 4]
    assert proof[0].support == ("A",) and inf.proof("A") == []


def test_negation_is_closed_world() -> None:
    """Weapon ∧ ¬Police -> Unsafe fires for {Weapon} and not for {Weapon, Police}."""
    rules = parse_rules(["Weapon and not Police -> Unsafe"])
    assert reason(["Weapon"], rules).concluded == ["Unsafe"]
    assert reason(["Weapon", "Police"], rules).concluded == []


def test_xor_is_exclusive_or() -> None:
    """a xor b holds exactly when one of them holds, and equals its expansion (a ∧ ¬b) ∨ (¬a ∧ b)."""
    f = parse_formula("a xor b")
    assert isinstance(f, Xor) and f.expand() == Or(And(Var("a"), Not(Var("b"))), And(Not(Var("a")), Var("b")))
    for known, want in [(set(), False), ({"a"}, True), ({"b"}, True), ({"a", "b"}, False)]:
        assert f.holds(known) is want and f.expand().holds(known) is want


def test_parser_round_trip_of_reference_examples() -> None:
    """The README rules print as (Tower ∧ (Paris ∧ France))-> Eiffel Tower and parse back to the same rule."""
    rules = parse_rules(GOLDEN)
    assert str(rules[0]) == "(Tower ∧ (Paris ∧ France))-> Eiffel Tower"
    assert str(rules[1]) == "(Bridge ∧ (San Francisco ∧ United States))-> Golden Gate Bridge"
    texts = ["Weapon ∧ ¬Police → Unsafe", "not (a or b) xor c is d", "if red and (white or blue) then France", "x & !y | z -> w"]
    for r in rules + [parse_rule(t) for t in texts]:
        assert parse_rule(str(r)) == r


def test_precedence_not_and_xor_or() -> None:
    """not binds tighter than and, and than xor, xor than or; binary operators nest to the right."""
    assert parse_formula("not a and b or c xor d") == Or(And(Not(Var("a")), Var("b")), Xor(Var("c"), Var("d")))
    assert parse_formula("a and b and c") == And(Var("a"), And(Var("b"), Var("c")))


@pytest.mark.parametrize("bad", ["a and -> b", "a -> b -> c", "a b", "(a and b -> c", "-> c", "a -> b and c"])
def test_malformed_rules_are_input_errors(bad: str) -> None:
    """Malformed rules raise InputError naming the rule."""
    with pytest.raises(ck.InputError, match="rule"):
        parse_rule(bad)
