"""The shipped name lists and templates (``data/``) as prompt sets with the name's token position.

``names_female.txt`` / ``names_male.txt``: common English first names, one per line, kept only
where `` Name`` is a single SmolLM2 token (checked when the lists were written; :func:`prompts`
re-checks with the model's tokenizer and drops any that are not). ``templates.json``: three
subject-pronoun and three object-pronoun templates written for this project.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Prompt:
    text: str
    name: str
    gender: str  # "female" | "male"
    template: int
    name_position: int  # token index of the name (from the start)
    n_tokens: int


def names(gender: str) -> list[str]:
    text = resources.files("conceptkit_obsprop").joinpath(f"data/names_{gender}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def templates(task: str) -> list[str]:
    data = json.loads(resources.files("conceptkit_obsprop").joinpath("data/templates.json").read_text())
    return list(data[task])


def prompts(tokenizer: Any, task: str, gender: str, template: int | None = None) -> list[Prompt]:
    """Every (name, template) prompt of one gender; names that are not one token are dropped."""
    out = []
    for ti, tpl in enumerate(templates(task)):
        if template is not None and ti != template:
            continue
        prefix = tpl.split("{name}")[0]
        start = len(tokenizer(prefix.rstrip(" "), add_special_tokens=True)["input_ids"])
        for name in names(gender):
            name_ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
            text = tpl.format(name=name)
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            if len(name_ids) == 1 and ids[start] == name_ids[0]:  # one token, where the template puts it
                out.append(Prompt(text, name, gender, ti, start, len(ids)))
    return out
