"""The evaluation's format switch: plain text, or each prompt as the chat template's user turn
followed by "Answer:" (the reference's eval_forget_prob / eval_neighbor_prob), on a tiny model
whose tokenizer is given a small chat template for the test."""

from __future__ import annotations

import contextlib

import pytest

import conceptkit as ck
from conceptkit.api import InputError
from conceptkit_rocr.config import RocrConfig
from conceptkit_rocr.evaluate import entity, evaluate, format_prompt, forms_data, neighbours
from conceptkit_rocr.scoring import kl_per_token, score_answers

TEMPLATE = "{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
NAME = "Neil Armstrong"  # the shortest prompts: the tiny model's character tokenizer takes 128 tokens


@pytest.fixture
def model():
    m = ck.load_model("tiny-llama", backend="transformers")
    old = m.tokenizer.chat_template
    m.tokenizer.chat_template = TEMPLATE
    yield m
    m.tokenizer.chat_template = old


def test_format_prompt_wraps_as_the_reference(model):
    """plain leaves the prompt; chat puts it (without its own trailing 'Answer:' cue) in the user
    turn, adds the generation prompt, then 'Answer:'; chat_instruct adds the reference's
    instruction for the form's level; cue=False (fluency) ends at the generation prompt."""
    tok = model.tokenizer
    forms = entity(NAME)["forms"]
    fb, qa, mcq = forms["fill_blank"]["prompt"], forms["qa"]["prompt"], forms["mcq"]["prompt"]
    assert format_prompt(tok, fb, "plain") == fb
    assert format_prompt(tok, fb, "chat") == f"<u>{fb}<a>Answer:"
    assert qa.endswith("\nAnswer:")
    q = qa[: -len("\nAnswer:")]
    assert format_prompt(tok, qa, "chat", "qa") == f"<u>{q}<a>Answer:"
    assert format_prompt(tok, fb, "chat", cue=False) == f"<u>{fb}<a>"
    assert format_prompt(tok, fb, "chat_instruct", "fill_blank") == (
        f"<u>Please complete the blank in the following question.\nQuestion: {fb}\n<a>Answer:")
    assert format_prompt(tok, qa, "chat_instruct", "qa") == (
        f"<u>Please briefly answer the following question.\n{q}\n<a>Answer:")
    m = mcq[: -len("\nAnswer:")]
    assert format_prompt(tok, mcq, "chat_instruct", "mcq") == (
        "<u>Please answer the following multiple choice question. Just provide the letter of the correct answer.\n"
        f"{m}\n<a>Answer:")
    assert format_prompt(tok, fb, "chat_restate", "fill_blank") == f"<u>{fb}<a>Answer: {fb}"  # not the reference's
    assert format_prompt(tok, qa, "chat_restate", "qa") == format_prompt(tok, qa, "chat", "qa")
    assert format_prompt(tok, fb, "chat_restate", cue=False) == f"<u>{fb}<a>"
    with pytest.raises(InputError, match="eval_format"):
        format_prompt(tok, fb, "chatty")
    tok.chat_template = None
    with pytest.raises(InputError, match="chat template"):
        format_prompt(tok, fb, "chat")


def test_evaluate_scores_forms_and_neighbours_after_the_template(model):
    """evaluate(eval_format='chat') scores every form and neighbour exactly as score_answers on
    the wrapped prompt (answer after 'Answer:'); fluency prompts are generated from the wrapped
    text without the cue; KL stays on the plain unrelated texts; the record says the format."""
    seen = []
    generate = model.generate

    def recording_generate(inputs, *a, **kw):
        seen.append((list(inputs), kw.get("chat")))
        return generate(inputs, *a, **kw)

    model.generate = recording_generate
    texts = forms_data()["unrelated"][:2]
    ev = evaluate(model, NAME, contextlib.nullcontext, fluency=True, max_new_tokens=2, unrelated=texts, eval_format="chat")
    tok = model.tokenizer
    forms = entity(NAME)["forms"]
    rows = [(format_prompt(tok, forms[r.form]["prompt"], "chat", r.form), forms[r.form]["answer"]) for r in ev.forms]
    ref = score_answers(model, rows, options=[forms[r.form].get("options") for r in ev.forms])
    assert ev.eval_format == "chat" and len(ev.forms) == 5
    for r, s in zip(ev.forms, ref):
        assert r.prob_before == pytest.approx(s.prob, rel=1e-6) and r.prob_after == pytest.approx(s.prob, rel=1e-6)
        assert r.top1_before == s.top1
    neigh = neighbours(NAME)
    ref_n = score_answers(model, [(format_prompt(tok, n["prompt"], "chat"), n["answer"]) for n in neigh])
    assert [r.prob_before for r in ev.neighbours] == pytest.approx([s.prob for s in ref_n], rel=1e-6)
    plain = score_answers(model, [(forms[r.form]["prompt"], forms[r.form]["answer"]) for r in ev.forms], options=[forms[r.form].get("options") for r in ev.forms])
    assert any(abs(r.prob_before - p.prob) > 1e-6 for r, p in zip(ev.forms, plain))  # the format changes what is scored
    fluency = [p.format(NAME) for p in forms_data()["fluency_prompts"]]
    assert seen and all(inputs == [f"<u>{p}<a>" for p in fluency] and chat is False for inputs, chat in seen)
    assert ev.kl_unrelated == pytest.approx(kl_per_token(model, texts, contextlib.nullcontext), abs=1e-12)
    with pytest.raises(InputError, match="eval_format"):  # unedited scores from another format are refused
        evaluate(model, NAME, contextlib.nullcontext, fluency=False, unrelated=texts, before=ev._before, eval_format="plain")


def test_config_field():
    assert RocrConfig(target="a", harmless="b").eval_format == "plain"
    assert RocrConfig(target="a", harmless="b", eval_format="chat").eval_format == "chat"
    with pytest.raises(Exception):
        RocrConfig(target="a", harmless="b", eval_format="chatty")
