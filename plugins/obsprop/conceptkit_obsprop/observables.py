"""Observables as vectors over the vocabulary, and as objectives the core accepts.

The reference (``make_lm_head_normal(..., take_first_token=True)``) maps a word to its first BPE
token; so do we, but we say so with a warning because " Elizabeth" silently becoming " Eliz"
changes the observable.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from conceptkit.api import InputError
from conceptkit_obsprop.config import Observable


class MultiTokenWarning(UserWarning):
    """A word of an observable is more than one token; only its first token is used."""


def token_of(tokenizer: Any, token: int | str, vocab_size: int) -> int:
    """The id a word stands for: an int is an id; a string its first token (warning if several)."""
    if isinstance(token, int):
        if not 0 <= token < vocab_size:
            raise InputError(f"token id {token} is outside the vocabulary (0..{vocab_size - 1})")
        return token
    ids = tokenizer.encode(token, add_special_tokens=False)
    if not ids:
        raise InputError(f"observable word {token!r} encodes to no tokens")
    if len(ids) > 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        warnings.warn(
            f"observable word {token!r} is {len(ids)} tokens {pieces}; using the first token {pieces[0]!r}",
            MultiTokenWarning,
            stacklevel=3,
        )
    return int(ids[0])


def observable_vector(obs: Observable, tokenizer: Any, vocab_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n [V]``: +1 per positive token, -1 per negative token, plus explicit weights."""
    n = torch.zeros(vocab_size, dtype=dtype)
    for tok in obs.positive_tokens:
        n[token_of(tokenizer, tok, vocab_size)] += 1.0
    for tok in obs.negative_tokens:
        n[token_of(tokenizer, tok, vocab_size)] -= 1.0
    for tok, w in obs.weights.items():
        n[token_of(tokenizer, tok, vocab_size)] += float(w)
    if not torch.any(n != 0):
        raise InputError(f"observable {obs.label!r} is zero (positive and negative tokens cancel)")
    return n


def as_objective(n: torch.Tensor) -> Any:
    """The observable ``n · logits[last]`` as the core's ``LogitFunctional`` objective (for ``model.grad``)."""
    from conceptkit.objectives import LogitFunctional

    return LogitFunctional(weights=n)
