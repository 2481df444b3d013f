"""Concept scrubbing: LEACE at the normalisation outputs feeding every attention and MLP block.

Erasers are fitted site by site in execution order, each on activations already scrubbed by the
erasers before it (the capture runs with those erasers applied and stops at the site), and are
applied together through the core's affine intervention, on any backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

import conceptkit as ck
from conceptkit import interventions as iv
from conceptkit.api import Handle, InputError
from conceptkit_erasure.leace import LeaceEraser, LeaceFitter


def default_sites(model: ck.Model) -> list[str]:
    """``blocks.{l}.ln1.hook_out`` and ``ln2.hook_out`` for every block the model has."""
    sites = model.sites()
    out = [s for layer in range(model.n_layers) for s in (f"blocks.{layer}.ln1.hook_out", f"blocks.{layer}.ln2.hook_out") if s in sites]
    if not out:
        raise InputError(f"model {model.name!r} has no normalisation-output sites to scrub (post-LN models need explicit sites)")
    return out


@dataclass
class Scrubber:
    """One eraser per site; ``apply(model)`` scopes all of them."""

    erasers: dict[str, LeaceEraser] = field(default_factory=dict)

    def interventions(self) -> list[iv.Affine]:
        out = []
        for site, eraser in self.erasers.items():
            weight, bias = eraser.as_affine()
            out.append(iv.Affine(site=site, weight=weight.float(), bias=bias.float()))
        return out

    def apply(self, model: ck.Model) -> Handle:
        for site, eraser in self.erasers.items():
            model.resolve_site(site)
        return model.intervene(self.interventions())

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for site, eraser in self.erasers.items():
            out.update(eraser.tensors(prefix=f"{site}/"))
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "Scrubber":
        sites = list(dict.fromkeys(name.rsplit("/", 1)[0] for name in tensors))
        return cls({site: LeaceEraser.from_tensors(tensors, prefix=f"{site}/") for site in sites})

    def rank(self, site: str) -> int:
        return int(torch.linalg.matrix_rank(self.erasers[site].proj_left @ self.erasers[site].proj_right))


def fit_scrubber(
    model: ck.Model,
    texts: Sequence[str],
    labels: Sequence[Sequence[int]],
    sites: Sequence[str] | None = None,
    *,
    n_classes: int | None = None,
    batch_size: int = 16,
    **leace_options: object,
) -> Scrubber:
    """Fit erasers site by site; ``labels[i]`` has one class id per token of ``texts[i]``."""
    sites = list(sites) if sites is not None else default_sites(model)
    if len(labels) != len(texts):
        raise InputError(f"{len(labels)} label lists for {len(texts)} texts: the lengths must match")
    z = torch.tensor([c for row in labels for c in row])
    k = n_classes or int(z.max()) + 1
    if len(torch.unique(z)) < 2:
        raise InputError("the token labels hold one class only: there is no concept to erase")
    scrubber = Scrubber()
    for site in sites:
        with scrubber.apply(model):
            acts = model.capture(list(texts), [site], reduce="all", batch_size=batch_size)[site]
        if acts.shape[0] != z.shape[0]:
            raise InputError(f"{z.shape[0]} token labels for {acts.shape[0]} tokens at {site!r}: label every token of every text")
        fitter = LeaceFitter(acts.shape[-1], k, **leace_options)  # type: ignore[arg-type]
        scrubber.erasers[site] = fitter.update(acts, z).eraser
    return scrubber


def random_scrubber(scrubber: Scrubber, seed: int = 0) -> Scrubber:
    """The baseline: at every site, an orthogonal projection onto a random subspace of the same
    rank as the LEACE eraser there, mean-preserving (same bias)."""
    g = torch.Generator().manual_seed(seed)
    out = Scrubber()
    for site, eraser in scrubber.erasers.items():
        r = max(1, scrubber.rank(site))
        q, _ = torch.linalg.qr(torch.randn(eraser.dim, r, generator=g, dtype=torch.float64))
        out.erasers[site] = LeaceEraser(q, q.T.contiguous(), eraser.bias)
    return out
