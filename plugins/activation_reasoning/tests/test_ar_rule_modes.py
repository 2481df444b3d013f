"""The reference code's parity rule modes ``simple``, ``complex`` and ``open_world``.

Most expectations are computed by hand from the semantics in ``reasoner.py``'s module docs. One
test per mode (``test_*_reference_trace``) carries, in its docstring, the step-by-step trace of
the reference code (ml-research/ActivationReasoning, ``ar/model/reasoner.py``
``ALReasoner._get_currently_active_rules``, ``ar/model/logic.py`` ``LogicalParser``, ``ar/utils.py``)
on the same input, read by hand; the expected value is where that trace ends.
"""

from __future__ import annotations

import pydantic
import pytest

import conceptkit as ck
from conceptkit_activation_reasoning.config import ARConfig
from conceptkit_activation_reasoning.logic import (
    And, Implies, Not, Or, Rule, Var, parse_reference_tokens, parse_rule, parse_rules, reference_propositions,
)
from conceptkit_activation_reasoning.reasoner import (
    RULES_MODES, BackwardChainer, _reference_rules, complex_proof, implicit_is, jaccard, open_world, or_to_xor, reason,
    remove_consecutive_duplicates, simple_match, split_subqueries,
)

ANSWER_RULES = ["true -> Answer True", "false -> Answer False", "uncertain -> Answer Uncertain"]


# -- the reference grammar --------------------------------------------------------------------------
def test_reference_grammar_by_hand() -> None:
    """Last ``is`` splits; first xor/or/and; juxtaposition right-nested; leading not; else one joined name."""
    a, b, c = Var("a"), Var("b"), Var("c")
    assert parse_reference_tokens(["a", "b", "c"]) == And(a, And(b, c))
    assert parse_reference_tokens(["a", "b", "and", "c"]) == And(And(a, b), c)  # split at the first 'and'
    assert parse_reference_tokens(["a", "or", "b", "and", "c"]) == Or(a, And(b, c))
    # xor is split before or (lower precedence than or) and expanded at once, double negation collapsed
    ab = Or(a, b)
    assert parse_reference_tokens(["a", "or", "b", "xor", "c"]) == Or(And(ab, Not(c)), And(Not(ab), c))
    assert parse_reference_tokens(["a", "xor", "not", "b"]) == Or(And(a, b), And(Not(a), Not(b)))
    assert parse_reference_tokens(["not", "not", "a"]) == a
    assert parse_reference_tokens(["not", "a", "b"]) == Not(And(a, b))  # not of the rest
    assert parse_reference_tokens(["A", "not", "B"]) == Var("A not B")  # the fallback: one joined name
    assert parse_reference_tokens(["a", "is", "b", "is", "c"]) == Implies(Implies(a, b), c)
    assert parse_reference_tokens(["a", "is"]) == Implies(a, Var(""))
    assert parse_reference_tokens(["is", "a"]) == Var("")
    assert parse_reference_tokens([]) == Var("")
    assert reference_propositions(Implies(And(a, Not(b)), Var(""))) == {"a", "b"}  # "" is no proposition


def test_rules_keep_their_reference_tokens() -> None:
    """Text and tuple rules keep the body's token list; parentheses (absent in the reference) drop it."""
    r = parse_rule("Weapon ∧ ¬Police → Unsafe")
    assert r.tokens == ("Weapon", "and", "not", "Police")
    assert r.reference_body() == And(Var("Weapon"), Not(Var("Police")))
    t = parse_rule((("Bridge", "San Francisco", "United States"), "Golden Gate Bridge"))
    assert t.tokens == ("Bridge", "San Francisco", "United States")
    p = parse_rule("(a or b) and c -> d")
    assert p.tokens is None and p.reference_body() == And(Or(Var("a"), Var("b")), Var("c"))
    assert p == Rule(p.body, "d")  # tokens are not part of equality
    # the reference grammar differs from ours on mixed juxtaposition: (a b and c) is ((a b) and c) there
    m = parse_rule((("a", "b", "and", "c"), "d"))
    assert m.body == And(Var("a"), And(Var("b"), Var("c"))) and m.reference_body() == And(And(Var("a"), Var("b")), Var("c"))


def test_query_preprocessing_helpers() -> None:
    assert remove_consecutive_duplicates(["a", "a", "b", "a", "a"]) == ["a", "b", "a"]
    # a later "Answer: ..." name is dropped, a first one kept, and the comparison is with the last *kept* name
    assert remove_consecutive_duplicates(["Answer: True", "x", "Answer: False", "x", "y"]) == ["Answer: True", "x", "y"]
    assert or_to_xor(["a", "or", "b", "or", "c", "but not both"]) == ["a", "or", "b", "xor", "c"]
    assert or_to_xor(["a", "but not both"]) == ["a"]  # no or before it: only removed
    assert implicit_is(["Max", "wumpus"]) == ["Max", "is", "wumpus"]
    assert implicit_is(["Max", "do", "wumpus"]) == ["Max", "do", "wumpus"]
    assert implicit_is(["max", "wumpus"]) == ["max", "wumpus"]
    assert split_subqueries(["a", "is", "b", "c", "is", "d", "e"]) == [["a", "is", "b"], ["c", "is", "d", "e"]]
    assert split_subqueries(["a", "is", "b", "is", "c"]) == [["a", "is", "b"], ["is", "c"]]
    assert jaccard({"a"}, set()) == 0.0 and jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)


# -- simple ----------------------------------------------------------------------------------------
def test_simple_threshold_is_inclusive_at_one_half() -> None:
    """J({a,b}, {a,b,c,d}) = 2/4 = 0.5 fires; J({a,b,e}, {a,b,c,d}) = 2/5 and J({a}, ...) = 1/4 do not."""
    rules = parse_rules(["a and b and c and d -> X"])
    inf = simple_match(["a", "b"], rules)
    assert inf.concluded == ["X"] and inf.details["score"] == 0.5
    assert inf.firings[0].support == ("a", "b")
    assert simple_match(["a", "b", "e"], rules).concluded == []
    assert simple_match(["a"], rules).concluded == []


def test_simple_best_rule_fires_and_ties_go_to_the_earliest() -> None:
    """[a, b, c]: J(a∧b) = J(b∧c) = 2/3, J(a∧d) = 1/4, J(a∧b∧c) = 1; only one rule fires."""
    tie = parse_rules(["a and b -> X", "b and c -> Y"])
    assert simple_match(["a", "b", "c"], tie).concluded == ["X"]
    assert simple_match(["a", "b", "c"], tie[::-1]).concluded == ["Y"]
    best = parse_rules(["a and d -> X", "a and b -> Y", "a and b and c -> Z"])
    inf = simple_match(["a", "b", "c"], best)
    assert inf.concluded == ["Z"] and [f.rule for f in inf.firings] == [2]


def test_simple_compares_name_sets_only() -> None:
    """Order, repeats and negation do not matter: {Weapon, Police} equals the body's set, so Unsafe fires
    (forward chaining does not fire it); a detected 'not' between names makes one joined proposition."""
    rules = parse_rules(["Weapon and not Police -> Unsafe"])
    assert simple_match(["Police", "Weapon", "Police"], rules).concluded == ["Unsafe"]
    assert reason(["Weapon", "Police"], rules).concluded == []
    assert simple_match(["Weapon", "not", "Police"], rules).concluded == []  # {"Weapon not Police"}: J = 0
    # an 'is' concept makes an implication whose consequent counts too: {a, b, c} vs {a, b}: 2/3
    assert simple_match(["a", "b", "is", "c"], parse_rules(["a and b -> c"])).concluded == ["c"]
    assert simple_match([], rules).concluded == []


def test_simple_reference_trace() -> None:
    """Reference trace. Rules ``{("red", "and", "white", "is", "Poland"): ..., ("white", "and", "red", "is",
    "Indonesia"): ..., ("red", "and", "not", "blue", "is", "Denmark"): ...}`` (conceptkit: the same bodies and
    heads), detected ``["white", "red", "white"]``.

    1. ``rule_checking == "simple"``: prints the list, then ``complete_statement(active, fuzzy=True, threshold=0.5)``.
    2. ``parse(["white", "red", "white"])``: no keyword, length > 1, all names ->
       ``And("white", parse(["red", "white"]))`` = ``(white ∧ (red ∧ white))``; ``_get_propositions`` -> {white, red}.
    3. ``_find_best_match_for_query`` walks ``parsed_rules`` in key order (all three are implications):
       Poland's antecedent {red, white}: 2/2 = 1.0 > -1 and >= 0.5 -> best = (Poland's tokens, 1.0);
       Indonesia's {white, red}: 1.0 is not > 1.0 -> kept; Denmark's ``(red ∧ ¬blue)`` -> {red, blue}: 1/3.
    4. ``list(self.rules.keys()).index(tuple(Poland's tokens))`` = 0 -> ``active_rules = [1, 0, 0]``.
    """
    rules = parse_rules({("red", "and", "white"): "Poland", ("white", "and", "red"): "Indonesia",
                         ("red", "and", "not", "blue"): "Denmark"})
    inf = reason(["white", "red", "white"], rules, "simple")
    assert [(f.rule, f.head) for f in inf.firings] == [(0, "Poland")]
    assert inf.details["score"] == 1.0


# -- complex ---------------------------------------------------------------------------------------
def test_complex_multi_step_proof_fires_the_last_rule() -> None:
    """apple banana is healthy: premise (apple ∧ banana) from rule 0 (J = 1); healthy <- fruit <- premise."""
    rules = parse_rules(["apple and banana -> fruit", "fruit -> healthy", "healthy and tasty -> snack"])
    inf = complex_proof(["apple", "banana", "is", "healthy"], rules)
    assert inf.details["proof"] == [0, 1]
    assert inf.concluded == ["healthy"] and [f.rule for f in inf.firings] == [1]
    assert "fruit" not in inf.known  # only the last rule of the path fires
    # no 'is' in the detected list: not an implication, nothing fires
    assert complex_proof(["apple", "banana", "healthy"], rules).concluded == []


def test_complex_threshold_is_inclusive_at_0_3() -> None:
    """Body {a, b, c} vs an antecedent of 10 names containing them: 3/10 = 0.3 matches; 11 names: 3/11 does not."""
    rules = parse_rules(["a and b and c -> d"])
    ten = ["a", "b", "c"] + [f"e{i}" for i in range(7)]
    assert complex_proof(ten + ["is", "d"], rules).concluded == ["d"]
    assert complex_proof(ten + ["e7", "is", "d"], rules).concluded == []


def test_complex_removes_consecutive_duplicates_first() -> None:
    """[a, is, is, b] -> [a, is, b] proves b; without the removal the first sub-query would be (a is is)."""
    rules = parse_rules(["a -> b"])
    assert complex_proof(["a", "a", "is", "is", "b", "b"], rules).concluded == ["b"]
    assert complex_proof(["a", "is", "b"], rules).details["subqueries"] == ["a is b"]


def test_complex_premise_from_the_earliest_best_match_and_subqueries() -> None:
    """Equal scores: the earliest rule gives the premise, but any rule may conclude from it. Sub-queries
    extend the path; the first that fails ends it and the path so far still fires its last rule."""
    rules = parse_rules(["a and b -> c", "a and b -> d"])
    inf = complex_proof(["a", "b", "is", "d"], rules)  # premise (a ∧ b) from rule 0; d proved by rule 1
    assert inf.details["proof"] == [1] and inf.concluded == ["d"]
    chain = parse_rules(["a -> b", "c -> d"])
    assert complex_proof(["a", "is", "b", "c", "is", "d"], chain).details["proof"] == [0, 1]
    assert complex_proof(["a", "is", "b", "c", "is", "d"], chain).concluded == ["d"]
    stop = complex_proof(["a", "is", "b", "z", "is", "d"], chain)  # {z} matches no body: the loop stops
    assert stop.details["proof"] == [0] and stop.concluded == ["b"]


def test_backward_chaining_shortest_proof_and_cycles() -> None:
    """Shortest path wins (first among equals); a cycle fails instead of looping."""
    rules = _reference_rules(parse_rules(["p -> q", "q -> r", "p -> r", "r -> s", "s -> r"]))
    bc = BackwardChainer(rules)
    assert bc.prove(Var("r"), Var("p")) == [2]  # p -> r (1 rule) beats p -> q -> r (2 rules)
    assert bc.prove(Var("s"), Var("p")) == [2, 3]
    assert bc.prove(Var("s"), Var("x")) is None  # s <- r <- s is a cycle
    assert bc.prove(Not(Var("q")), Var("p")) is None  # heads are positive: ¬q only from the knowledge base
    assert bc.prove(Not(Var("q")), Not(Var("q"))) == []
    assert bc.prove(Or(Var("zz"), Var("q")), Var("p")) == [0]
    assert bc.prove(And(Var("q"), Var("r")), Var("p")) == [0, 2]


def test_complex_reference_trace() -> None:
    """Reference trace. Rules ``{("sun", "and", "rain", "is", "rainbow"): "rainbow", ("rainbow", "is", "photo"):
    "photo", ("photo", "and", "friend", "is", "post"): "post"}``; detected ``["sun", "sun", "rain", "cloud", "is",
    "photo"]``.

    1. ``remove_consecutive_duplicates`` -> ``[sun, rain, cloud, is, photo]``; ``find_proof(..., fuzzy=True,
       threshold=0.3)``.
    2. ``_split_into_subqueries``: one ``is`` at 3 -> slice ``[0:5]`` is the whole list; start 5 = length.
    3. ``parse``: last ``is`` at 3 -> ``Implies(And(sun, And(rain, cloud)), photo)``; antecedent propositions
       {sun, rain, cloud}.
    4. ``_find_best_match_for_query``: rainbow rule {sun, rain}: 2/3 >= 0.3 -> best; photo rule {rainbow}: 0;
       post rule {photo, friend}: 0 (photo is in the consequent, not the antecedent) -> premise ``(sun ∧ rain)``.
    5. ``_backward_chain(photo, {}, {}, premise)``: KB ``{(sun ∧ rain)}``; photo not known; ``consequent_map[photo]``
       = [photo rule]; ``build_new_goal`` -> rainbow; ``consequent_map[rainbow]`` = [rainbow rule] -> goal
       ``(sun ∧ rain)`` is in the KB -> ``[]`` -> ``[rainbow rule]`` -> ``[rainbow rule, photo rule]``.
    6. ``rule_path[-1]`` = photo rule; ``get_rule_index`` -> 1 -> ``active_rules = [0, 1, 0]``.
    """
    rules = parse_rules(["sun and rain -> rainbow", "rainbow -> photo", "photo and friend -> post"])
    inf = reason(["sun", "sun", "rain", "cloud", "is", "photo"], rules, "complex")
    assert inf.details["proof"] == [0, 1]
    assert [(f.rule, f.head) for f in inf.firings] == [(1, "photo")]


# -- open_world ------------------------------------------------------------------------------------
def _world() -> list[Rule]:
    return parse_rules(["Max -> vumpus", "vumpus -> wumpus", *ANSWER_RULES])


@pytest.mark.parametrize(
    ("detected", "answer"),
    [
        (["Max", "is", "wumpus"], "true"),  # wumpus <- vumpus <- Max; ¬wumpus unprovable
        (["Max", "wumpus"], "true"),  # implicit 'is' after a capitalised first name
        (["Max", "do", "wumpus"], "true"),  # 'do' is 'is'
        (["Max", "is", "not", "wumpus"], "false"),  # ¬wumpus unprovable, its negation wumpus provable
        (["Max", "is", "yumpus"], "uncertain"),  # yumpus: neither it nor ¬yumpus provable
        (["Max", "is", "wumpus", "or", "yumpus"], "uncertain"),  # strict: the unknown atom yumpus decides
        (["max", "yumpus"], "true"),  # no implication (lower case: no implicit 'is'): the reference's fallback
    ],
)
def test_open_world_answers(detected: list[str], answer: str) -> None:
    inf = open_world(detected, _world())
    assert inf.details["answer"] == answer
    assert inf.concluded == [f"Answer {answer.capitalize()}"]
    assert not {"vumpus", "wumpus"} & set(inf.concluded)  # knowledge-base rules never fire here


def test_open_world_negated_premise_xor_and_both() -> None:
    """'but not both' makes xor; ¬yumpus is known from the premise itself. A consequent provable both ways
    is uncertain."""
    rules = parse_rules(["not yumpus -> wumpus", *ANSWER_RULES])
    det = ["not", "yumpus", "is", "wumpus", "or", "yumpus", "but not both"]  # (¬y) → ((w ∧ ¬y) ∨ (¬w ∧ y))
    assert open_world(det, rules).details["answer"] == "true"
    assert open_world(["not", "yumpus", "is", "wumpus", "or", "yumpus"], rules).details["answer"] == "true"
    both = parse_rules(["not c -> c", *ANSWER_RULES])  # c from ¬c, and ¬c is the premise
    assert open_world(["not", "c", "is", "c"], both).details["answer"] == "uncertain"


def test_open_world_answer_rules_and_empty_input() -> None:
    """Answer rules are not knowledge: a rule 'true -> wumpus' does not prove wumpus. No detections: nothing."""
    rules = parse_rules(["true -> wumpus", "true -> Yes", "uncertain -> Unsure"])
    inf = open_world(["Max", "is", "wumpus"], rules)
    assert inf.details["answer"] == "uncertain" and inf.concluded == ["Unsure"]
    assert open_world([], rules).concluded == []
    assert open_world(["max"], rules).concluded == ["wumpus", "Yes"]  # every rule with the body 'true'


def test_open_world_reference_trace() -> None:
    """Reference trace. Rules ``{("Max", "is", "vumpus"): "vumpus", ("vumpus", "is", "lorpus"): "lorpus",
    ("true",): "Answer True", ("false",): "Answer False", ("uncertain",): "Answer Uncertain"}``; detected
    ``["Max", "Max", "not", "lorpus", "Answer: True"]``.

    1. ``add_rules``: the one-token keys parse to plain strings, not implications: they are in ``parsed_rules``
       but not in ``facts`` or ``consequent_map``.
    2. ``remove_consecutive_duplicates`` -> ``[Max, not, lorpus]`` (the second Max repeats; a non-first
       "Answer: True" is dropped). ``replace_or_with_xor``: no "but not both". ``implicit_is``: "Max" starts
       upper case and "not" is not is/do/have -> ``[Max, is, not, lorpus]``.
    3. ``solve_three_valued``: no aliases; ``parse`` -> ``Implies(Max, parse([not, lorpus]))``; ``[not, lorpus]``
       has no is/xor/or/and, is not all names, starts with not -> ``Not(lorpus)``. Premise Max, consequent
       ``¬lorpus``; KB = the two implications ∪ {Max}.
    4. Atoms of ``¬lorpus``: {lorpus}. ``_backward_chain(lorpus)``: ``consequent_map[lorpus]`` -> goal vumpus ->
       ``consequent_map[vumpus]`` -> goal Max, in the KB -> provable, so the atom is known.
    5. ``¬lorpus``: not in the KB, no rule concludes it -> None. Its negation (``Not`` collapses) lorpus is
       provable -> ``"false"``.
    6. The key loop: ``("false",) == ("false",)`` for the fourth key only -> ``active_rules = [0, 0, 0, 1, 0]``.
    """
    rules = parse_rules({("Max",): "vumpus", ("vumpus",): "lorpus", ("true",): "Answer True",
                         ("false",): "Answer False", ("uncertain",): "Answer Uncertain"})
    inf = reason(["Max", "Max", "not", "lorpus", "Answer: True"], rules, "open_world")
    assert inf.details["answer"] == "false"
    assert [(f.rule, f.head) for f in inf.firings] == [(3, "Answer False")]


# -- plumbing --------------------------------------------------------------------------------------
def test_modes_are_configurable_and_unknown_modes_fail() -> None:
    assert RULES_MODES == ("forward_chaining", "legacy", "simple", "complex", "open_world")
    for mode in RULES_MODES:
        assert ARConfig(rules_mode=mode).rules_mode == mode
    with pytest.raises(pydantic.ValidationError):
        ARConfig(rules_mode="fuzzy")
    with pytest.raises(ck.InputError, match="'fuzzy'"):
        reason(["a"], parse_rules(["a -> b"]), "fuzzy")


def test_a_too_long_statement_is_a_clear_error() -> None:
    """The parity modes read the detected list as one nested statement (as the reference does): a list
    deeper than Python's recursion limit is an InputError naming the mode and length, not a crash."""
    with pytest.raises(ck.InputError, match="5000 names"):
        reason([f"c{i}" for i in range(5000)], parse_rules(["c0 -> d"]), "simple")


def test_fired_rules_stay_active_as_generation_adds_propositions() -> None:
    """Spec §4.4 (the reference's sticky active_rules): under ``simple`` a rule that fired on the
    prompt's propositions would not fire once generated tokens add two more names (Jaccard 1/3 < 0.5);
    keep_fired keeps it, as the engine does at every step. Monotone modes are unaffected."""
    from conceptkit_activation_reasoning.reasoner import keep_fired, reason

    rules = parse_rules(["Bridge -> Golden Gate Bridge"])
    first = reason(["Bridge"], rules, "simple")
    later = reason(["Bridge", "San Francisco", "United States"], rules, "simple")
    assert first.concluded == ["Golden Gate Bridge"] and later.concluded == []
    kept = keep_fired(first, later)
    assert kept.concluded == ["Golden Gate Bridge"] and "Golden Gate Bridge" in kept.known
    chained = keep_fired(reason(["Bridge"], rules), reason(["Bridge", "San Francisco"], rules))
    assert chained.concluded == ["Golden Gate Bridge"]  # forward chaining: fired again, not duplicated
