"""Mergeable streaming statistics: count, means and centred co-moments (LEACE's fitter state).

Each shard accumulates its own :class:`Moments` in float64; shards merge with Chan et al.'s
pairwise update (exact algebra; ≤1e-12 relative drift against one pass over all rows). The state
is the one ``conceptkit_erasure.LeaceFitter`` keeps (``n, mean_x, mean_z, sxx, sxz``), so
``into(fitter)`` hands sharded statistics to the eraser fit; ``second_moment`` is the uncentred
``E[x xᵀ]`` ROCR-style methods need.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from conceptkit.errors import InputError


@dataclass
class Moments:
    """``n`` rows; ``mean_x [d]``, ``sxx [d, d]`` = Σ(x-μ)(x-μ)ᵀ; with labels ``mean_z [k]``, ``sxz [d, k]``."""

    n: int
    mean_x: torch.Tensor
    sxx: torch.Tensor
    mean_z: torch.Tensor | None = None
    sxz: torch.Tensor | None = None

    @classmethod
    def empty(cls, d: int, k: int | None = None) -> "Moments":
        f = torch.float64
        z = (torch.zeros(k, dtype=f), torch.zeros(d, k, dtype=f)) if k else (None, None)
        return cls(0, torch.zeros(d, dtype=f), torch.zeros(d, d, dtype=f), *z)

    @classmethod
    def of(cls, x: torch.Tensor, z: torch.Tensor | None = None) -> "Moments":
        """The moments of rows ``x [n, d]`` (and float labels ``z [n, k]``), in one pass."""
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        mx = x.mean(0)
        dx = x - mx
        out = cls(x.shape[0], mx, dx.T @ dx)
        if z is not None:
            z = z.reshape(x.shape[0], -1).to(torch.float64)
            mz = z.mean(0)
            out.mean_z, out.sxz = mz, dx.T @ (z - mz)
        return out

    def update(self, x: torch.Tensor, z: torch.Tensor | None = None) -> "Moments":
        """Add a batch of rows (merges the batch's own moments)."""
        if x.numel() == 0:
            return self
        return self.merge(Moments.of(x, z))

    def merge(self, other: "Moments") -> "Moments":
        """Combine two disjoint sets of rows (in place; returns self)."""
        if (self.mean_z is None) != (other.mean_z is None):
            raise InputError("cannot merge moments with labels and moments without labels")
        if self.mean_x.shape != other.mean_x.shape:
            raise InputError(f"cannot merge moments of width {self.mean_x.shape[0]} and {other.mean_x.shape[0]}")
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean_x, self.sxx, self.mean_z, self.sxz = other.n, other.mean_x.clone(), other.sxx.clone(), *(
                (other.mean_z.clone(), other.sxz.clone()) if other.mean_z is not None else (None, None)  # type: ignore[union-attr]
            )
            return self
        n = self.n + other.n
        w = self.n * other.n / n
        dx = other.mean_x - self.mean_x
        self.sxx = self.sxx + other.sxx + torch.outer(dx, dx) * w
        if self.mean_z is not None and other.mean_z is not None:
            dz = other.mean_z - self.mean_z
            self.sxz = self.sxz + other.sxz + torch.outer(dx, dz) * w  # type: ignore[operator]
            self.mean_z = self.mean_z + dz * (other.n / n)
        self.mean_x = self.mean_x + dx * (other.n / n)
        self.n = n
        return self

    @classmethod
    def merge_all(cls, parts: Iterable["Moments"]) -> "Moments":
        """Merge in the given order (the driver passes shard order, so the result is reproducible)."""
        parts = list(parts)
        if not parts:
            raise InputError("no moments to merge")
        out = Moments.empty(parts[0].mean_x.shape[0], None if parts[0].mean_z is None else parts[0].mean_z.shape[0])
        for p in parts:
            out.merge(p)
        return out

    @property
    def covariance(self) -> torch.Tensor:
        """Unbiased covariance ``sxx / (n-1)``."""
        if self.n < 2:
            raise InputError(f"a covariance needs at least 2 rows, got {self.n}")
        return self.sxx / (self.n - 1)

    @property
    def second_moment(self) -> torch.Tensor:
        """Uncentred ``E[x xᵀ] = sxx/n + μμᵀ``."""
        if self.n < 1:
            raise InputError("no rows: the second moment is undefined")
        return self.sxx / self.n + torch.outer(self.mean_x, self.mean_x)

    def into(self, fitter: Any) -> Any:
        """Load this state into a LEACE fitter: ``conceptkit_erasure.LeaceFitter`` (which wraps
        concept-erasure's, fields ``n, mean_x, mean_z, sigma_xx_, sigma_xz_``) or any object
        with ``n, mean_x, mean_z, sxx, sxz``. Returns the fitter."""
        if self.mean_z is None or self.sxz is None:
            raise InputError("a LEACE fitter needs labelled moments (pass labels)")
        target = getattr(fitter, "_fitter", fitter)
        dtype = target.mean_x.dtype
        if hasattr(target, "sigma_xz_"):  # concept-erasure's layout
            target.n = torch.tensor(self.n, device=target.mean_x.device)
            target.sigma_xz_ = self.sxz.to(dtype).clone()
            if getattr(target, "sigma_xx_", None) is not None:
                target.sigma_xx_ = self.sxx.to(dtype).clone()
        else:
            target.n, target.sxz = self.n, self.sxz.to(dtype).clone()
            if getattr(target, "sxx", None) is not None:
                target.sxx = self.sxx.to(dtype).clone()
        target.mean_x, target.mean_z = self.mean_x.to(dtype).clone(), self.mean_z.to(dtype).clone()
        for obj in (fitter, target):
            if hasattr(obj, "_eraser"):
                obj._eraser = None
        return fitter

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"n": torch.tensor(self.n), "mean_x": self.mean_x, "sxx": self.sxx}
        if self.mean_z is not None and self.sxz is not None:
            out.update(mean_z=self.mean_z, sxz=self.sxz)
        return out
