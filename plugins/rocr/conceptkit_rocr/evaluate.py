"""Evaluation of forgetting across forms (ORT/RWKU-style, written for conceptkit; no download).

Per target entity (``data/forget_forms.json``): one fact asked in five forms — ``fill_blank``
(the gradient-ascent baseline's training form), ``qa``, ``mcq`` and two paraphrases never used
to compute any edit — plus neighbour facts (the ``fill_blank`` facts of the other entities of
the same group, which must be kept), KL per token on unrelated text, and the fluency of greedy
generations about the target (ROME's weighted bigram/trigram entropy, higher is more varied).

Evaluation format (``eval_format``): ``plain`` scores the answer right after the form's text.
``chat`` asks as the reference does (its ``eval_forget_prob`` / ``eval_neighbor_prob``): the form's
text is the user turn of the model's chat template (``add_generation_prompt=True``), then
``"Answer:"`` is appended and the answer is scored after it; a form that already ends with its own
``"\nAnswer:"`` cue (qa, mcq) loses it, so the cue appears once, after the template.
``chat_instruct`` also puts the reference's instruction lines in the user turn ("Please complete
the blank in the following question.\nQuestion: {}\n" for the completion forms, "Please briefly
answer ..." for qa, "Please answer the following multiple choice question. ..." for mcq).
``chat_restate`` is not the reference's: asked as in ``chat``, a completion form (one without its
own answer cue: fill_blank, the paraphrases, the neighbours) is restated after ``"Answer:"`` and
the answer scored after the restatement, which is what the unedited SmolLM2-135M-Instruct itself
generates when asked in the chat format (it restates the sentence rather than answer with one
word, so in ``chat`` the completion forms carry almost no probability before any edit); qa and mcq
are asked as in ``chat``.
Neighbours are asked in the same format. Fluency prompts in a chat format are the user turn with
the generation prompt and no cue (the reference's ``eval_fluency``); the entropy is taken over the
raw fluency prompt plus the generation, as in plain. KL on unrelated text always runs on the plain
texts: they are prose, not questions, and the reference has no KL measure to follow.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from contextlib import AbstractContextManager
from functools import cache
from importlib import resources
from typing import Any, Callable, Literal

import pydantic

from conceptkit.api import InputError, UnknownNameError
from conceptkit_rocr.scoring import kl_per_token, score_answers

FORMS = ["fill_blank", "qa", "mcq", "paraphrase_1", "paraphrase_2"]
EditFactory = Callable[[], AbstractContextManager]
EvalFormat = Literal["plain", "chat", "chat_instruct", "chat_restate"]
EVAL_FORMATS = ("plain", "chat", "chat_instruct", "chat_restate")
ANSWER_CUE = "Answer:"  # appended after the chat template, as in the reference's evaluation
# the reference's instruction lines (eval_forget_prob): level 1 (fill-in-the-blank), level 2 (QA), MCP
INSTRUCTIONS = {
    "complete": "Please complete the blank in the following question.\nQuestion: {}\n",
    "qa": "Please briefly answer the following question.\nQuestion: {}\n",
    "mcq": "Please answer the following multiple choice question. Just provide the letter of the correct answer.\nQuestion: {}\n",
}


def _strip_cue(prompt: str) -> str:
    text = prompt.rstrip()
    if text.endswith(ANSWER_CUE):
        text = text[: -len(ANSWER_CUE)].rstrip()
    return text


def format_prompt(tokenizer: Any, prompt: str, eval_format: str = "plain", form: str = "fill_blank", *, cue: bool = True) -> str:
    """The text scored (or generated from) for ``prompt`` in ``eval_format`` (see the module doc).

    ``form`` picks the reference's instruction for ``chat_instruct`` (qa, mcq, or a completion
    form); ``cue=False`` leaves out the ``"Answer:"`` after the template (fluency prompts).
    """
    if eval_format == "plain":
        return prompt
    if eval_format not in EVAL_FORMATS:
        raise InputError(f"eval_format must be one of {EVAL_FORMATS}, got {eval_format!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"eval_format={eval_format!r} needs a tokenizer with a chat template; use 'plain'")
    content = _strip_cue(prompt) if cue else prompt
    restate = eval_format == "chat_restate" and cue and content == prompt.rstrip()  # a completion form (no cue of its own)
    if eval_format == "chat_instruct":
        kind = form if form in ("qa", "mcq") else "complete"
        if kind != "complete" and content.startswith("Question: "):
            content = content[len("Question: ") :]
        content = INSTRUCTIONS[kind].format(content)
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    if restate:
        return text + ANSWER_CUE + " " + prompt
    return text + ANSWER_CUE if cue else text


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
    eval_format: str = "plain"  # how the forms were asked: plain text, or the chat template (+ "Answer:")
    kl_unrelated: float = math.nan  # nats per token (always on the plain unrelated texts)
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


def _scores(model: Any, rows: list[dict[str, Any]], batch_size: int, eval_format: str = "plain", kind: str | None = None) -> list[Any]:
    items = [(format_prompt(model.tokenizer, r["prompt"], eval_format, kind or r["form"]), r["answer"]) for r in rows]
    return score_answers(model, items, options=[r.get("options") for r in rows], batch_size=batch_size)


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
    eval_format: str = "plain",
) -> Evaluation:
    """Scores without and with the edit (``edit()`` returns a context manager that applies it).

    ``before`` can carry the unedited scores from an earlier call (same entity and format) to
    save time. ``eval_format``: ``plain``, ``chat`` or ``chat_instruct`` (module doc).
    """
    if eval_format not in EVAL_FORMATS:
        raise InputError(f"eval_format must be one of {EVAL_FORMATS}, got {eval_format!r}")
    e = entity(name)
    form_rows = [dict(form=f, **e["forms"][f]) for f in FORMS]
    neigh_rows = [dict(form=n["entity"], **{k: v for k, v in n.items() if k != "entity"}) for n in neighbours(name)]
    texts = unrelated if unrelated is not None else forms_data()["unrelated"]
    prompts = [p.format(e["name"]) for p in forms_data()["fluency_prompts"]]
    asked = [format_prompt(model.tokenizer, p, eval_format, cue=False) for p in prompts]

    def score_all() -> tuple[list[Any], list[Any]]:
        return _scores(model, form_rows, batch_size, eval_format), _scores(model, neigh_rows, batch_size, eval_format, kind="fill_blank")

    if before is None:
        b_f, b_n = score_all()
        before = {"forms": b_f, "neigh": b_n, "eval_format": eval_format}
        if fluency:
            before["gen"] = list(model.generate(asked, max_new_tokens=max_new_tokens, chat=False))
    elif before.get("eval_format", "plain") != eval_format:
        raise InputError(f"the unedited scores passed as before= were taken in eval_format {before.get('eval_format', 'plain')!r}, not {eval_format!r}")
    with edit():
        after_f, after_n = score_all()
        gen_after = list(model.generate(asked, max_new_tokens=max_new_tokens, chat=False)) if fluency else []
    ev = Evaluation(entity=e["name"], method=method, eval_format=eval_format)
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
