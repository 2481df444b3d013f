"""Bringing your own model: find its tokenizer, and report where its conventions differ.

``ck.wrap`` takes objects a user built (a TransformerLens bridge, an nnsight model, an HF model).
The same checkpoint must give the same tensors as ``ck.load_model`` or conceptkit must say why
not. Two things differ in practice: the tokenizer (TransformerLens' bridge wraps it to prepend
BOS; ``load_model`` uses the checkpoint's own tokenizer, which for SmolLM2 does not) and the
attention implementation (``load_model`` uses eager attention everywhere, as the bridge does;
HF defaults to SDPA, ~1e-4 apart on SmolLM2's large residuals). Both are reported as a
:class:`ConventionWarning` at wrap time, never silently. A missing tokenizer is an error at wrap
time, not at the first capture.
"""

from __future__ import annotations

import warnings
from typing import Any

from conceptkit.errors import InputError

__all__ = ["ConventionWarning", "find_tokenizer", "check_conventions", "tokenizer_difference"]

PROBE_TEXT = "Hello world"


class ConventionWarning(UserWarning):
    """A wrapped model's tokenisation or numerics differ from ``load_model``'s for its checkpoint."""


def checkpoint_path(hf_model: Any) -> str | None:
    """The folder or hub id the HF model was loaded from (``config._name_or_path``), if any."""
    config = getattr(hf_model, "config", None)
    path = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return str(path) if path else None


def local_tokenizer(path: str | None) -> Any:
    """The tokenizer saved with a checkpoint (local files only: never a download), or None."""
    if not path:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:  # noqa: BLE001 - no tokenizer files there (or not a folder/cached id)
        return None


def find_tokenizer(given: Any, carried: Any, hf_model: Any, what: str) -> Any:
    """``given``, else the tokenizer the object carries, else the checkpoint's own; else an error.

    Raises:
        InputError: no tokenizer anywhere, naming the object and the checkpoint path tried.
    """
    if given is not None:
        return given
    if carried is not None:
        return carried
    path = checkpoint_path(hf_model)
    found = local_tokenizer(path)
    if found is None:
        where = f"no tokenizer files were found at its checkpoint path {path!r}" if path else "it records no checkpoint path"
        raise InputError(
            f"cannot wrap this {what} without a tokenizer: it carries none and {where}; "
            f"pass tokenizer=AutoTokenizer.from_pretrained(...)"
        )
    return found


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def tokenizer_difference(tokenizer: Any, reference: Any) -> str | None:
    """How ``tokenizer`` tokenises differently from ``reference`` (BOS, EOS, other ids), or None."""
    try:
        a, b = _ids(tokenizer, PROBE_TEXT), _ids(reference, PROBE_TEXT)
    except Exception:  # noqa: BLE001 - a tokenizer that cannot tokenise plain text is not comparable
        return None
    if a == b:
        return None
    if a[1:] == b:
        return f"prepends a BOS token (id {a[0]}) that the checkpoint's own tokenizer does not"
    if b[1:] == a:
        return f"does not prepend the BOS token (id {b[0]}) that the checkpoint's own tokenizer does"
    if a[:-1] == b:
        return f"appends a token (id {a[-1]}) that the checkpoint's own tokenizer does not"
    if b[:-1] == a:
        return f"does not append the token (id {b[-1]}) that the checkpoint's own tokenizer does"
    return f"tokenises {PROBE_TEXT!r} as {a}, the checkpoint's own tokenizer as {b}"


def check_conventions(tokenizer: Any, hf_model: Any, what: str) -> list[str]:
    """Warn (:class:`ConventionWarning`) where a wrapped model differs from ``load_model`` on the
    same checkpoint; returns the messages. Also gives a tokenizer without a pad token one (its
    EOS), since batches are padded; padded positions are masked out everywhere."""
    messages = []
    path = checkpoint_path(hf_model)
    reference = local_tokenizer(path)
    if tokenizer is not None and reference is not None:
        diff = tokenizer_difference(tokenizer, reference)
        if diff is not None:
            messages.append(
                f"the tokenizer of this {what} {diff}: its activations differ from load_model's for {path!r} at every "
                f"position. Pass tokenizer=AutoTokenizer.from_pretrained({path!r}) to match load_model"
            )
    if tokenizer is not None and getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
        messages.append(
            f"the tokenizer of this {what} has no pad token; conceptkit pads batches with its EOS token "
            f"{tokenizer.eos_token!r} (padded positions are masked)"
        )
    attn = getattr(getattr(hf_model, "config", None), "_attn_implementation", None)
    if attn not in (None, "eager"):
        messages.append(
            f"this {what} uses {attn!r} attention; load_model uses eager attention (as TransformerLens does), so "
            f"activations differ slightly (~1e-4 on SmolLM2) and attention patterns cannot be read. "
            f"Call set_attn_implementation('eager') on the HF model first to match"
        )
    for message in messages:
        warnings.warn(message, ConventionWarning, stacklevel=4)
    return messages
