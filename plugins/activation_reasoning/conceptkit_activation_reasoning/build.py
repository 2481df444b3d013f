"""Stage 1 on a model: labels from examples, activations, and a calibrated dictionary.

Labels (``label="word"``, the reference's default): in each example text, every occurrence of a
concept's string under four surface variants (``" c"``, ``"c"``, case-flipped, ``" "`` +
case-flipped) is found as a token subsequence, and its last token (``token="last"``) or all its
tokens (``"all"``) are labelled. ``label="sentence"``: ``examples`` maps each concept to texts
about it; every real token of those texts is labelled with that concept.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

import conceptkit as ck
from conceptkit_activation_reasoning import detection as det
from conceptkit_activation_reasoning.dictionary import (
    ConceptDictionary, fit_trees, keep_top, mean_difference, select_features, vector_dictionary, vector_sae,
)


def _flip(s: str) -> str:
    return s[:1].lower() + s[1:] if s[:1].isupper() else s[:1].upper() + s[1:]


def _find(seq: list[int], sub: list[int]) -> list[int]:
    """Start indices of ``sub`` in ``seq``."""
    n = len(sub)
    return [i for i in range(len(seq) - n + 1) if n and seq[i : i + n] == sub]


def word_labels(model: Any, ids: list[torch.Tensor], concepts: list[str], token: Literal["last", "all"] = "last") -> list[torch.Tensor]:
    """``[T_i, C]`` boolean labels per text from token-subsequence matches of each concept."""
    tok = model.tokenizer
    out = []
    variants = {c: {tuple(tok(v, add_special_tokens=False)["input_ids"]) for v in (f" {c}", c, _flip(c), f" {_flip(c)}")} for c in concepts}
    for row in ids:
        seq = row.tolist()
        lab = torch.zeros(len(seq), len(concepts), dtype=torch.bool)
        for j, c in enumerate(concepts):
            for v in variants[c]:
                for s in _find(seq, list(v)):
                    if token == "last":
                        lab[s + len(v) - 1, j] = True
                    else:
                        lab[s : s + len(v), j] = True
        out.append(lab)
    return out


def padded_activations(model: Any, texts: list[str], site: str, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``h [n, T, d]`` (right-padded with zeros), ``mask [n, T]`` and the token ids per text."""
    batch = model.tokenize(texts)
    acts = model.capture(batch, site, reduce="all", progress=False, batch_size=batch_size)
    h, index = acts[site], acts.token_index
    ids = [batch.input_ids[i][batch.attention_mask[i].bool()] for i in range(len(texts))]
    T = max(len(r) for r in ids)
    out = torch.zeros(len(texts), T, h.shape[-1])
    mask = torch.zeros(len(texts), T, dtype=torch.bool)
    out[index[:, 0], index[:, 1]] = h.float()
    mask[index[:, 0], index[:, 1]] = True
    return out, mask, ids


def labels_for(model: Any, texts: list[str], ids: list[torch.Tensor], concepts: list[str], label: str, text_concepts: list[list[str]] | None,
               token: Literal["last", "all"], T: int) -> torch.Tensor:
    lab = torch.zeros(len(texts), T, len(concepts), dtype=torch.bool)
    if label == "word":
        for i, l in enumerate(word_labels(model, ids, concepts, token)):
            lab[i, : len(l)] = l
    else:
        for i, cs in enumerate(text_concepts or []):
            for c in cs:
                lab[i, : len(ids[i]), concepts.index(c)] = True
    return lab


def build_dictionary(model: Any, site: str, texts: list[str], concepts: list[str], *, sae: Any = None, label: str = "word",
                     text_concepts: list[list[str]] | None = None, token: Literal["last", "all"] = "last", kind: str = "top_k", k: int = 10,
                     order: str = "unique_first", mean_over: str = "tokens", search_top_k: int = 10, depth: int | None = 5, seed: int = 0,
                     top_output: int = 2, k_c: int = 1, batch_size: int = 16, center: bool = True) -> tuple[ConceptDictionary, Any, dict]:
    """A calibrated dictionary from labelled texts: SAE latents by mean difference (``sae`` given)
    or mean-difference concept vectors on the raw activations (``sae=None``; scores centred on
    the examples' mean activation unless ``center=False``). Returns the
    dictionary, the SAE it reads (``vector_sae`` for vectors) and the training tensors."""
    h, mask, ids = padded_activations(model, texts, site, batch_size)
    lab = labels_for(model, texts, ids, concepts, label, text_concepts, token, h.shape[1])
    missing = [c for j, c in enumerate(concepts) if not lab[..., j].any()]
    if missing:
        raise ck.InputError(f"no labelled token for concept(s) {missing} in the {len(texts)} example texts")
    if sae is None:
        U = mean_difference(h, lab, mask, mean_over)  # type: ignore[arg-type]
        mu = h[mask].mean(0) if center else None
        d = vector_dictionary(concepts, U, site=site, center=mu)
        sae = vector_sae(d.vectors, site, d.vector_bias)  # type: ignore[arg-type]
        lat = sae.encode(h) * mask[..., None]
    else:
        lat = keep_top(sae.encode(h.to(sae.dtype)).float(), search_top_k) * mask[..., None]
        if kind == "tree":
            trees = fit_trees(lat, lab, mask, depth=depth, seed=seed)
            delta = mean_difference(lat, lab, mask, mean_over)  # type: ignore[arg-type]
            idx, w = select_features(delta, min(k, lat.shape[-1]), order)  # type: ignore[arg-type]
            d = ConceptDictionary(concepts, idx, w, torch.zeros(len(concepts)), kind="tree", site=site, sae_ref=sae.ref if hasattr(sae, "ref") else None, trees=trees)
        else:
            delta = mean_difference(lat, lab, mask, mean_over)  # type: ignore[arg-type]
            idx, w = select_features(delta, min(k, lat.shape[-1]), order)  # type: ignore[arg-type]
            d = ConceptDictionary(concepts, idx, w, torch.zeros(len(concepts)), kind="top_k", site=site, sae_ref=getattr(sae, "ref", None))
    det.calibrate(d, lat, lab, mask, top_output=top_output, k_c=k_c, search_top_k=search_top_k)
    return d, sae, {"latents": lat, "labels": lab, "mask": mask}
