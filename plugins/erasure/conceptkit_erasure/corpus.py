"""Token-level concept data for scrubbing: a shipped, seeded corpus and token properties.

The corpus mixes everyday words with numbers (SmolLM2 splits numbers into single digits), so
"is a digit" is a token property with thousands of positive and negative examples.
"""

from __future__ import annotations

import random
from collections.abc import Callable

_SUBJECTS = ["The parcel", "Our order", "The invoice", "My train", "The meeting", "The package", "Her flight", "The shipment",
             "His appointment", "The report", "The delivery", "The batch", "Room", "The bus", "Ticket"]
_VERBS = ["arrived at", "was booked for", "left at", "is scheduled for", "was moved to", "costs", "weighs", "holds",
          "was printed on", "lists"]
_TAILS = ["after a short delay", "according to the clerk", "as the note says", "before the office closed", "on the second floor",
          "with two spare copies", "near the old station", "without any trouble", "in the blue folder", "for the whole team"]
_UNITS = ["dollars", "kilograms", "minutes", "euros", "boxes", "pages", "people", "metres"]


def digit_corpus(n: int = 160, seed: int = 0) -> list[str]:
    """``n`` sentences with 1-3 numbers each (deterministic)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        number = str(rng.randint(1, 99999))
        extra = f" and {rng.randint(2, 999)} {rng.choice(_UNITS)}" if rng.random() < 0.7 else ""
        out.append(f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {number} {rng.choice(_UNITS)}{extra} {rng.choice(_TAILS)}.")
    return out


def _piece(tokenizer: object, token_id: int) -> str:
    return tokenizer.decode([token_id])  # type: ignore[attr-defined]


PROPERTIES: dict[str, Callable[[str], int]] = {
    "digit": lambda piece: int(piece.strip().isdigit()),
    "capitalised": lambda piece: int(piece.strip()[:1].isupper()),
}


def token_labels(model: object, texts: list[str], prop: str) -> list[list[int]]:
    """Per-token labels of ``texts`` (tokenised exactly as the model tokenises them)."""
    if prop not in PROPERTIES:
        from conceptkit.api import UnknownNameError

        raise UnknownNameError("token property", prop, PROPERTIES)
    fn = PROPERTIES[prop]
    labels = []
    for text in texts:
        batch = model.tokenize([text])  # type: ignore[attr-defined]
        ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
        labels.append([fn(_piece(model.tokenizer, i)) for i in ids])  # type: ignore[attr-defined]
    return labels
