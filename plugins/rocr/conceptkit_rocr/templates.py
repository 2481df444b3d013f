"""Context templates and the subject's last token (ROME's ``subject_last`` heuristic).

The reference wraps six user prefixes in the model's chat template and appends ``"Answer:"``;
the request prompt ``"{}."`` goes into the slot, so the subject is followed by a full stop.
Models without a chat template get the same prefixes as plain text (recorded in the result).
"""

from __future__ import annotations

from typing import Any

import torch

from conceptkit.api import InputError

PREFIXES = ["", "Please answer the question about", "Choose the best answer about", "Write the answer about", "Tell me about", "Write something about"]
REQUEST = "{}."  # the reference's request prompt: the subject followed by a full stop
SLOT = "{}"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def context_templates(tokenizer: Any, kind: str = "auto") -> tuple[list[str], str]:
    """The six context templates (each with one ``{}``) and which kind was used (chat/plain)."""
    if kind == "auto":
        kind = "chat" if has_chat_template(tokenizer) else "plain"
    if kind == "chat":
        if not has_chat_template(tokenizer):
            raise InputError("templates='chat' but the model's tokenizer has no chat template; use 'plain' or 'auto'")
        out = [
            tokenizer.apply_chat_template([{"role": "user", "content": p + " " + SLOT}], tokenize=False, add_generation_prompt=True) + "Answer:"
            for p in PREFIXES
        ]
    elif kind == "plain":
        out = [(p + " " + SLOT).lstrip() + "\nAnswer:" for p in PREFIXES]
    else:
        raise InputError(f"templates must be 'auto', 'chat' or 'plain', got {kind!r}")
    for t in out:
        if t.count(SLOT) != 1:
            raise InputError(f"a context template must contain exactly one {SLOT!r}; got {t!r}")
    return out, kind


def fill(template: str, text: str) -> tuple[str, str]:
    """Split ``template`` at its slot: (text up to and including ``text``, the rest)."""
    prefix, suffix = template.split(SLOT, 1)
    return prefix + text, suffix


def subject_prefix_ids(tokenizer: Any, template: str, subject: str) -> list[int]:
    """Token ids of ``template.format(REQUEST).format(subject)`` up to the subject's last token.

    As in the reference, the index is ``len(encode(prefix + subject)) - 1`` in the encoding of
    the full prompt; a causal model's activation there does not depend on later tokens, so the
    prompt is cut after it.
    """
    context = template.replace(SLOT, REQUEST, 1)
    upto, rest = fill(context, subject)
    full = tokenizer(upto + rest, add_special_tokens=True)["input_ids"]
    n = len(tokenizer(upto, add_special_tokens=True)["input_ids"])
    if n < 1 or n > len(full):
        raise InputError(f"cannot locate the last token of {subject!r} in {context!r}")
    return list(full[:n])


def pad_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS, else 0 (the mask hides it)."""
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


def pad_right(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and mask (conceptkit reads ``last`` through the mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}
