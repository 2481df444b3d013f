"""Stage 4: steering directions from concluded concepts, and the intervention that adds them.

For each concluded concept ``c`` with latents ``r_{c, 0..K-1}`` (its first ``K`` dictionary
entries), the reference's form (default):

    d_j = W_dec[r_{c,j}] / ||W_dec[r_{c,j}]||_p            (no normalisation if norm == "off")
    s_c = sum_j omega_j d_j,  omega = weighting(K) with sum 1 (mean 1/K)
    s   = combine_c s_c       (sum_shift: sum, mean_shift: mean, max_shift: elementwise max)
    Delta = alpha * ||h||_p * s / ||s||_p                   (norm "off": Delta = alpha * s)

``use_dictionary_weights=True`` also multiplies ``omega_j`` by the dictionary's mean-difference
weight (the paper's ``SAE_D[r_c] x w``). ``Delta`` is computed from the activation it is added
to (row by row), so with ``norm = 2`` ``||Delta||_2 = alpha * ||h||_2`` exactly and the direction
does not depend on the decoder rows' norms.

Only ``log_decay`` and ``uniform`` follow the reference's formulas exactly; the other weightings
are simple monotone decays of our own with the same names (documented closed forms below).
"""

from __future__ import annotations

import math
from typing import Literal, Union

import pydantic
import torch

from conceptkit.api import Intervention, TensorField

Weighting = Literal["log_decay", "uniform", "linear_decay", "exponential_decay", "inverse_position", "cosine_decay", "power_law_decay"]
Combine = Literal["sum_shift", "mean_shift", "max_shift"]


def position_weights(k: int, fn: str = "log_decay") -> torch.Tensor:
    """``omega [k]`` summing to 1: ``log_decay`` ``1 - ln(j+1)/ln(k+1)``, ``linear_decay``
    ``1 - j/k``, ``exponential_decay`` ``exp(-j)``, ``inverse_position`` ``1/(j+1)``,
    ``cosine_decay`` ``cos(pi j / 2k)``, ``power_law_decay`` ``(j+1)^-2``, ``uniform`` 1."""
    j = torch.arange(k, dtype=torch.float64)
    forms = {
        "uniform": torch.ones(k, dtype=torch.float64),
        "log_decay": 1 - torch.log(j + 1) / math.log(k + 1),
        "linear_decay": 1 - j / k,
        "exponential_decay": torch.exp(-j),
        "inverse_position": 1 / (j + 1),
        "cosine_decay": torch.cos(math.pi * j / (2 * k)),
        "power_law_decay": (j + 1) ** -2.0,
    }
    if fn not in forms:
        from conceptkit.api import InputError

        raise InputError(f"unknown steering weighting {fn!r}; choose one of {sorted(forms)}")
    w = forms[fn]
    return (w / w.sum()).float()


def concept_direction(rows: torch.Tensor, *, weighting: str = "log_decay", norm: "int | str" = 2,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """``s_c [d]`` from the concept's decoder rows ``[K, d]`` (in dictionary order)."""
    rows = rows.float()
    if norm != "off":
        rows = rows / rows.norm(p=float(norm), dim=1, keepdim=True).clamp_min(1e-12)
    omega = position_weights(rows.shape[0], weighting)
    if weights is not None:
        omega = omega * weights.float()
    return (omega[:, None] * rows).sum(0)


def combine(directions: list[torch.Tensor], how: str = "sum_shift") -> torch.Tensor:
    """One direction from several concepts' directions."""
    stack = torch.stack(directions)
    if how == "sum_shift":
        return stack.sum(0)
    if how == "mean_shift":
        return stack.mean(0)
    if how == "max_shift":
        return stack.max(0).values
    from conceptkit.api import InputError

    raise InputError(f"unknown steering methodology {how!r}; choose sum_shift, mean_shift or max_shift")


class ARSteer(Intervention):
    """Add ``alpha * ||x||_p * s / ||s||_p`` (or ``alpha * s`` with ``norm="off"``) to each selected row.

    The deltas it applies are kept in ``applied`` (one ``[B, T, d]`` tensor per call, zero on
    untouched rows) so a policy can report them.
    """

    op: Literal["ar_steer"] = "ar_steer"
    direction: TensorField
    alpha: float = 0.5
    norm: Union[int, Literal["off"]] = 2
    _applied: list = pydantic.PrivateAttr(default_factory=list)

    @property
    def applied(self) -> list[torch.Tensor]:
        return self._applied

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        s = self.direction.to(device=x.device, dtype=x.dtype)
        if s.dim() == 2:  # one direction per batch row
            if x.dim() != 3 or s.shape != (x.shape[0], x.shape[2]):
                from conceptkit.api import InputError

                raise InputError(f"ar_steer at {self.site!r}: per-row directions {tuple(s.shape)} do not fit activations {tuple(x.shape)}")
            s = s[:, None, :]
        else:
            self._check_vector(x, self.direction, "direction")
        if self.norm == "off":
            return x + self.alpha * s
        p = float(self.norm)
        unit = s / s.norm(p=p, dim=-1, keepdim=True).clamp_min(1e-12)
        return x + self.alpha * x.norm(p=p, dim=-1, keepdim=True) * unit

    def apply(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        new = super().apply(x, mask)
        self._applied.append((new - x).detach())
        return new

