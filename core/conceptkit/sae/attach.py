"""An SAE attached to a model site: the SAELens hook names as virtual sites.

``attach_sae(model, sae)`` adds, after ``<site>``:

=================================  =============================================================
``<site>.hook_sae_input``          the site's activation as the SAE reads it (``[..., d_in]``)
``<site>.hook_sae_acts_pre``       encoder pre-activations ``[..., d_sae]``
``<site>.hook_sae_acts_post``      latent activations ``[..., d_sae]``
``<site>.hook_sae_recons``         the reconstruction, in the site's space (normalisation undone)
``<site>.hook_sae_error``          ``x - recons`` of the untouched input
=================================  =============================================================

Reading them changes nothing. Replacing any of them splices the SAE in: the site continues with
``x + (recons' - recons) + (error' - error)``, which is SAELens' ``recons' + error`` (the
"error term" recipe) written so that an unchanged reconstruction and error give back ``x`` bit
for bit. So editing latents changes the model only through the decoder rows of the latents
that changed, and splicing the reconstruction plus the error is an exact no-op. To run the model
on the pure reconstruction, replace ``hook_sae_error`` with zeros.

Differences from SAELens: ``hook_sae_recons`` is after the output normalisation (SAELens hooks it
before), so that ``recons + error = x`` holds at the site for every normalisation mode.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from conceptkit.handles import Handle
from conceptkit.sae.base import SAE
from conceptkit.virtual_sites import SiteFn, VirtualSiteSpec

SUFFIXES = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error")


class SAESites:
    """The virtual-site provider of one SAE at one site."""

    def __init__(self, sae: SAE, site: str | None = None) -> None:
        from conceptkit.errors import InputError

        self.sae = sae
        base = site or sae.site
        if not base:
            raise InputError(f"{sae!r} does not say which site it reads; pass site=")
        self.base_site: str = base
        self._names = [f"{base}.{s}" for s in SUFFIXES]

    def names(self) -> list[str]:
        return list(self._names)

    def run(self, x: torch.Tensor, taps: dict[str, SiteFn]) -> torch.Tensor | None:
        if not taps:
            return None
        sae = self.sae
        n_in, n_pre, n_post, n_rec, n_err = self._names
        xs = x.to(sae.dtype)
        changed = {"any": False}

        def tap(name: str, t: torch.Tensor) -> torch.Tensor:
            fn = taps.get(name)
            if fn is None:
                return t
            new = fn(t)
            if new is None:
                return t
            changed["any"] = True
            return new

        sae_in = tap(n_in, xs)
        in_changed = changed["any"]
        normed, state = sae.normalise(sae_in)
        pre0 = sae.pre_acts(normed)
        pre = tap(n_pre, pre0)
        acts = tap(n_post, sae.activation(pre))
        if not changed["any"] and n_rec not in taps and n_err not in taps:
            return None  # only latents were read
        recons = state.out(sae.decode_normalised(acts))
        if not changed["any"]:
            recons_clean = recons
        elif in_changed:
            normed0, state0 = sae.normalise(xs)
            recons_clean = state0.out(sae.decode_normalised(sae.activation(sae.pre_acts(normed0))))
        else:
            recons_clean = state.out(sae.decode_normalised(sae.activation(pre0)))
        recons = tap(n_rec, recons)
        error_clean = xs - recons_clean
        error = tap(n_err, error_clean)
        if not changed["any"]:
            return None
        out = xs + (recons - recons_clean) + (error - error_clean)
        return out.to(x.dtype)

    def __repr__(self) -> str:
        return f"SAESites({self.sae!r} at {self.base_site!r})"


def attach_sae(model: Any, sae: Any, site: str | None = None) -> Handle:
    """Add ``sae``'s virtual sites at ``site`` (default: the SAE's own site); the handle removes them.

    ``sae`` is an :class:`SAE`, a store record id or an SAE folder path.
    """
    from conceptkit.sae.registry import resolve_sae

    resolved = resolve_sae(sae)
    provider = SAESites(resolved, site)
    return model.add_virtual_sites(provider)


class SAESiteSpec(VirtualSiteSpec):
    """The ``virtual_site`` component ``{"kind": "sae", "sae": <record id or folder>, "site": ...}``."""

    kind: Literal["sae"] = "sae"
    sae: str
    site: str | None = None

    def build(self, model: Any) -> SAESites:
        from conceptkit.sae.registry import resolve_sae

        return SAESites(resolve_sae(self.sae), self.site)
