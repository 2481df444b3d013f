"""Top-activating contexts of SAE latents: in the terminal (rich) and as a static HTML page."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from conceptkit.sae.base import SAE


@dataclass
class Context:
    activation: float
    tokens: list[str]
    highlight: int  # index into tokens of the activating token


@dataclass
class LatentContexts:
    latent: int
    contexts: list[Context] = field(default_factory=list)
    frequency: float = 0.0  # fraction of searched tokens where the latent fires


def top_contexts(model: Any, sae: SAE, latents: Sequence[int], *, site: str | None = None, top: int = 8,
                 tokens: int = 16_384, window: int = 10, skip_first: int = 1,
                 sources: tuple[str, ...] | None = None) -> list[LatentContexts]:
    """For each latent, the ``top`` held-out tokens where it is most active, with ``window`` tokens of context."""
    from conceptkit.errors import InputError
    from conceptkit.sae import corpus as corpus_mod

    site = site or sae.site
    bad = [f for f in latents if not 0 <= f < sae.d_sae]
    if bad:
        raise InputError(f"latent {bad[0]} is out of range: the SAE has latents 0 to {sae.d_sae - 1}")
    corpus = corpus_mod.build(sources or corpus_mod.SOURCES)
    windows = corpus_mod.token_windows(corpus, model.tokenizer, "held_out", 128, max_tokens=tokens)
    name = f"{site}.hook_sae_acts_post"
    idx = torch.as_tensor(list(latents))
    with model.attach_sae(sae, site):
        acts = model.capture(windows, [name], reduce="all", batch_size=16)
    values = acts[name][:, idx]  # [n_tokens, L]
    index = acts.token_index
    keep = index[:, 1] >= skip_first
    values, index = values[keep], index[keep]
    ids = windows["input_ids"]
    out = []
    for j, latent in enumerate(latents):
        col = values[:, j]
        entry = LatentContexts(int(latent), frequency=float((col > 0).float().mean()))
        n = min(top, int((col > 0).sum()))
        for v, r in zip(*col.topk(n)) if n else []:
            ex, pos = int(index[r, 0]), int(index[r, 1])
            lo, hi = max(0, pos - window), min(ids.shape[1], pos + 4)
            toks = [model.tokenizer.decode([int(t)]) for t in ids[ex, lo:hi]]
            entry.contexts.append(Context(float(v), toks, pos - lo))
        out.append(entry)
    return out


def render_terminal(found: list[LatentContexts], console: Any = None) -> None:
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    for entry in found:
        console.print(Text(f"latent {entry.latent}  (fires on {entry.frequency:.2%} of tokens)", style="bold"))
        if not entry.contexts:
            console.print("  never fires on the searched tokens")
        for c in entry.contexts:
            line = Text(f"  {c.activation:8.3f}  ")
            for i, tok in enumerate(c.tokens):
                tok = tok.replace("\n", "\\n")
                line.append(tok, style="bold black on yellow" if i == c.highlight else None)
            console.print(line)


def render_html(found: list[LatentContexts], title: str = "SAE latents") -> str:
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".ctx{font-family:monospace;white-space:pre-wrap;margin:.2em 0}"
        "mark{background:#fd4;font-weight:bold}.act{color:#666;display:inline-block;width:6em}</style>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for entry in found:
        parts.append(f"<h2>latent {entry.latent}</h2><p>fires on {entry.frequency:.2%} of searched tokens</p>")
        if not entry.contexts:
            parts.append("<p>never fires on the searched tokens</p>")
        for c in entry.contexts:
            toks = "".join(
                f"<mark>{html.escape(t)}</mark>" if i == c.highlight else html.escape(t) for i, t in enumerate(c.tokens)
            )
            parts.append(f"<div class='ctx'><span class='act'>{c.activation:.3f}</span>{toks}</div>")
    return "\n".join(parts) + "\n"
