"""Feature interventions: change chosen SAE latents and write back only their change.

``SAEFeatures(sae=<record id, folder or SAE>, features=[...], mode=..., value=...)`` at the
SAE's site (``site`` defaults to it) encodes the activations, changes the chosen latents, and
adds the decoded *change* to the activations:

    x' = x + norm_out_scale * (a'[F] - a[F]) @ W_dec[F]

so the SAE's reconstruction error never enters the model and every other latent's contribution
is untouched (the standard SAE-steering recipe). Modes: ``clamp`` (set to ``value``), ``ablate``
(set to 0), ``scale`` (multiply by ``value``), ``add`` (add ``value``: steer along the decoder
directions). The SAE is referenced, never inlined: JSON holds its record id.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
import torch

from conceptkit.interventions import Intervention
from conceptkit.sae.base import SAE


def _check_ref(value: Any) -> Any:
    if isinstance(value, SAE) or (isinstance(value, str) and value):
        return value
    raise ValueError(f"sae must be an SAE object, a record id or a folder path, got {value!r}")


SAERef = Annotated[
    Any,
    pydantic.BeforeValidator(_check_ref),
    pydantic.PlainSerializer(lambda v: v.ref if isinstance(v, SAE) else v, return_type=str),
    pydantic.WithJsonSchema({"type": "string", "description": "an SAE record id, folder path or sae:<fingerprint>"}),
]


class SAEFeatures(Intervention):
    """Clamp, ablate, scale or add to SAE latents (see the module docstring)."""

    op: Literal["sae_features"] = "sae_features"
    site: str = ""
    sae: SAERef
    features: list[int]
    mode: Literal["clamp", "ablate", "scale", "add"] = "clamp"
    value: float = 0.0
    _resolved: SAE | None = pydantic.PrivateAttr(default=None)

    @pydantic.model_validator(mode="after")
    def _check(self) -> "SAEFeatures":
        import math

        if not self.features:
            raise ValueError("features must name at least one latent")
        if not math.isfinite(self.value):
            raise ValueError(f"value must be a finite number, got {self.value!r}")
        if isinstance(self.sae, SAE):
            self._resolved = self.sae
            from conceptkit.sae.registry import register_sae

            register_sae(self.sae)
        sae = self.resolved() if (not self.site or isinstance(self.sae, SAE)) else None
        if sae is not None:
            bad = [f for f in self.features if not 0 <= f < sae.d_sae]
            if bad:
                raise ValueError(f"feature index {bad[0]} is out of range: the SAE has latents 0 to {sae.d_sae - 1}")
            if not self.site:
                if not sae.site:
                    raise ValueError(f"{sae!r} does not say which site it reads; pass site=")
                object.__setattr__(self, "site", sae.site)
        return self

    def resolved(self) -> SAE:
        if self._resolved is None:
            from conceptkit.sae.registry import resolve_sae

            self._resolved = resolve_sae(self.sae)
        return self._resolved

    def new_values(self, old: torch.Tensor) -> torch.Tensor:
        if self.mode == "clamp":
            return torch.full_like(old, self.value)
        if self.mode == "ablate":
            return torch.zeros_like(old)
        if self.mode == "scale":
            return old * self.value
        return old + self.value

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        sae = self.resolved()
        self._check_width(x, sae.d_in, "the SAE's input")
        xs = x.to(sae.dtype)
        normed, state = sae.normalise(xs)
        acts = sae.activation(sae.pre_acts(normed))
        idx = torch.as_tensor(self.features, device=x.device)
        old = acts[..., idx]
        change = (self.new_values(old) - old) @ sae.W_dec.to(x.device)[idx]
        scale = state.scale
        return (xs + change * scale).to(x.dtype)
