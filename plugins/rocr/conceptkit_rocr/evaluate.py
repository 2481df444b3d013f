"""Evaluation of forgetting across forms (ORT/RWKU-style, written for conceptkit; no download).

Per target entity (``data/forget_forms.json``): one fact asked in five forms — ``fill_blank``
(the gradient-ascent baseline's training form), ``qa``, ``mcq`` and two paraphrases never used
to compute any edit — plus neighbour facts (the ``fill_blank`` facts of the other entities of
the same group, which must be kept), KL per token on unrelated text, and the fluency of greedy
generations about the target (ROME's weighted bigram/trigram entropy, higher is more varied).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from contextlib import AbstractContextManager
from functools import cache
from importlib import resources
from typing import Any, Callable

import pydantic

from conceptkit.api import UnknownNameError
from conceptkit_rocr.scoring import kl_per_token, score_answers

FORMS = ["fill_blank", "qa", "mcq", "paraphrase_1", "paraphrase_2"]
EditFactory = Callable[[], AbstractContextManager]


@cache
def forms_data() -> dict[str, Any]:
    return json.loads(resources.files("conceptkit_rocr").joinpath("data/forget_forms.json").read_text())


def entity(name: str) -> dict[str, Any]:
    for e in forms_data()["entities"]:
        if e["name"].lower() == name.lower():
            return e
    raise UnknownNameError("evaluation entity", name, [e["name"] for e in forms_data()["entities"]])


def neighbours(name: str) -> list[dict[str, Any]]:
    """Facts of the other entities of the same group (their fill_blank form)."""
    e = entity(name)
    return [dict(entity=o["name"], **o["forms"]["fill_blank"]) for o in forms_data()["entities"] if o["group"] == e["group"] and o["name"] != e["name"]]


class FormScore(pydantic.BaseModel):
    form: str
    prompt: str
    answer: str
    prob_before: float
    prob_after: float
    top1_before: bool
    top1_after: bool

    @property
    def relative_drop(self) -> float:
        return 1.0 - self.prob_after / self.prob_before if self.prob_before > 0 else math.nan


class Evaluation(pydantic.BaseModel):
    """Before/after scores of one edit (ROCR or a baseline) on one entity."""

    entity: str
    method: str
    forms: list[FormScore] = pydantic.Field(default_factory=list)
    neighbours: list[FormScore] = pydantic.Field(default_factory=list)
    kl_unrelated: float = math.nan  # nats per token
    fluency_before: float = math.nan
    fluency_after: float = math.nan
    generations_before: list[str] = pydantic.Field(default_factory=list)
    generations_after: list[str] = pydantic.Field(default_factory=list)
    _before: Any = pydantic.PrivateAttr(default=None)  # unedited scores, reusable for another edit

    def mean_prob(self, which: str = "forms", when: str = "before", forms: list[str] | None = None) -> float:
        rows = [r for r in getattr(self, which) if forms is None or r.form in forms]
        return sum(getattr(r, f"prob_{when}") for r in rows) / max(len(rows), 1)

    def relative_drop(self, forms: list[str] | None = None) -> float:
        b = self.mean_prob("forms", "before", forms)
        return 1.0 - self.mean_prob("forms", "after", forms) / b if b > 0 else math.nan

    def neighbour_kept(self) -> float:
        b = self.mean_prob("neighbours", "before")
        return self.mean_prob("neighbours", "after") / b if b > 0 else math.nan


def ngram_entropy(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """ROME's fluency measure: weighted mean of the n-gram frequency entropies (bits)."""
    words = text.split()
    values = []
    for n in ns:
        grams = Counter(tuple(words[i : i + n]) for i in range(max(len(words) - n + 1, 0)))
        total = sum(grams.values())
        values.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(w * v for w, v in zip(weights, values)) / sum(weights)


def _scores(model: Any, rows: list[dict[str, Any]], batch_size: int) -> list[Any]:
    return score_answers(model, [(r["prompt"], r["answer"]) for r in rows], options=[r.get("options") for r in rows], batch_size=batch_size)


def evaluate(
    model: Any,
    name: str,
    edit: EditFactory,
    *,
    method: str = "rocr",
    unrelated: list[str] | None = None,
    fluency: bool = True,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    before: dict[str, Any] | None = None,
) -> Evaluation:
    """Scores without and with the edit (``edit()`` returns a context manager that applies it).

    ``before`` can carry the unedited scores from an earlier call (same entity) to save time.
    """
    e = entity(name)
    form_rows = [dict(form=f, **e["forms"][f]) for f in FORMS]
    neigh_rows = [dict(form=n["entity"], **{k: v for k, v in n.items() if k != "entity"}) for n in neighbours(name)]
    texts = unrelated if unrelated is not None else forms_data()["unrelated"]
    prompts = [p.format(e["name"]) for p in forms_data()["fluency_prompts"]]
    if before is None:
        before = {"forms": _scores(model, form_rows, batch_size), "neigh": _scores(model, neigh_rows, batch_size)}
        if fluency:
            before["gen"] = list(model.generate(prompts, max_new_tokens=max_new_tokens))
    with edit():
        after_f, after_n = _scores(model, form_rows, batch_size), _scores(model, neigh_rows, batch_size)
        gen_after = list(model.generate(prompts, max_new_tokens=max_new_tokens)) if fluency else []
    ev = Evaluation(entity=e["name"], method=method)
    for rows, b, a, dest in ((form_rows, before["forms"], after_f, ev.forms), (neigh_rows, before["neigh"], after_n, ev.neighbours)):
        for r, sb, sa in zip(rows, b, a):
            dest.append(FormScore(form=r["form"], prompt=r["prompt"], answer=r["answer"], prob_before=sb.prob, prob_after=sa.prob, top1_before=sb.top1, top1_after=sa.top1))
    ev.kl_unrelated = kl_per_token(model, texts, edit, batch_size=batch_size)
    if fluency:
        ev.generations_before, ev.generations_after = before["gen"], gen_after
        ev.fluency_before = sum(ngram_entropy(p + g) for p, g in zip(prompts, before["gen"])) / len(prompts)
        ev.fluency_after = sum(ngram_entropy(p + g) for p, g in zip(prompts, gen_after)) / len(prompts)
    ev._before = before
    return ev
