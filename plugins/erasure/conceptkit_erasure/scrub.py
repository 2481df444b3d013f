"""Concept scrubbing: LEACE at the normalisation outputs feeding every attention and MLP block.

Erasers are fitted site by site in execution order, each on activations already scrubbed by the
erasers before it, and are applied together through the core's affine intervention, on any
backend. For up to 128 texts the fit is one forward pass (a hook per site fits its eraser and
passes the erased activations on; bit-identical to one capture per site, tested), beyond that
one dataset pass per site with the earlier erasers applied: ``conceptkit.dataset_moments``
streams the LEACE statistics shard by shard (memory bounded by a shard, not the dataset), in
this process or, inside ``conceptkit.use_ray`` (``conceptkit run erasure --ray``), over Ray
workers; either way the merged statistics equal a one-pass fit to float64 rounding.
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
    one_pass_max_texts: int = 128,
    **leace_options: object,
) -> Scrubber:
    """Fit erasers site by site; ``labels[i]`` has one class id per token of ``texts[i]``.

    Up to ``one_pass_max_texts`` texts (sites in execution order) are fitted in ONE forward pass
    of all texts as one batch: at each site a hook fits the eraser on the activations it sees
    (already scrubbed by the hooks before it) and passes the erased activations on, which is the
    site-by-site procedure without its one capture per site. More texts, or Ray requested
    (``ck.ray_requested()``: inside ``ck.use_ray``): one streamed dataset pass per site.
    """
    sites = list(sites) if sites is not None else default_sites(model)
    if len(labels) != len(texts):
        raise InputError(f"{len(labels)} label lists for {len(texts)} texts: the lengths must match")
    z = torch.tensor([c for row in labels for c in row])
    k = n_classes or int(z.max()) + 1
    if len(torch.unique(z)) < 2:
        raise InputError("the token labels hold one class only: there is no concept to erase")
    order = {s: i for i, s in enumerate(model.sites())}
    in_order = all(s in order for s in sites) and [order[s] for s in sites] == sorted(order[s] for s in sites)
    if not ck.ray_requested() and len(texts) <= one_pass_max_texts and in_order:
        return _fit_one_pass(model, list(texts), z, sites, k, leace_options)
    scrubber = Scrubber()
    for site in sites:
        # the earlier erasers go with the pass as interventions (so Ray workers apply them too)
        stats = ck.dataset_moments(model, list(texts), site, "all", labels=[list(row) for row in labels], n_classes=k,
                                   interventions=scrubber.interventions(), batch_size=batch_size)
        if not (torch.isfinite(stats.sxx).all() and torch.isfinite(stats.mean_x).all()):
            raise InputError(f"activations at {site!r} contain NaN or Inf")
        fitter = stats.into(LeaceFitter(stats.mean_x.shape[0], k, **leace_options))  # type: ignore[arg-type]
        scrubber.erasers[site] = fitter.eraser
    return scrubber


def _fit_one_pass(model: ck.Model, texts: list[str], z: torch.Tensor, sites: list[str], k: int, leace_options: dict) -> Scrubber:
    from conceptkit.api import HandleGroup, reduce_tokens

    (batch,) = list(model.batches(texts, len(texts)))
    mask = batch.attention_mask.bool()
    if int(mask.sum()) != z.shape[0]:
        raise InputError(f"{z.shape[0]} token labels for {int(mask.sum())} tokens: label every token of every text")
    scrubber = Scrubber()

    def fitting_hook(site: str):  # type: ignore[no-untyped-def]
        def hook(x: torch.Tensor) -> torch.Tensor:
            acts = reduce_tokens(x, batch, "all")  # the real tokens, as capture(reduce="all") gives them
            eraser = LeaceFitter(acts.shape[-1], k, **leace_options).update(acts, z).eraser  # type: ignore[arg-type]
            scrubber.erasers[site] = eraser
            weight, bias = eraser.as_affine()  # applied as the Affine intervention applies it
            return iv.Affine(site=site, weight=weight.float(), bias=bias.float()).transform(x)

        return hook

    group = HandleGroup(description="erasure fitting hooks")
    try:
        for site in sites:
            group.add(model.add_hook(site, fitting_hook(site)))
        model.run(batch, batch_size=len(texts))
    finally:
        group.remove()
    missing = [s for s in sites if s not in scrubber.erasers]
    if missing:
        raise InputError(f"sites {missing} were not reached by the forward pass")
    return Scrubber({s: scrubber.erasers[s] for s in sites})


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
