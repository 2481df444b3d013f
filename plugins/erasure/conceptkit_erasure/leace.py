"""LEACE (Belrose et al., 2023): least-squares concept erasure, fitted by streaming statistics.

The mathematics is EleutherAI's ``concept-erasure`` (the reference implementation by the
paper's authors): its ``LeaceFitter`` accumulates means, the covariance of ``x`` and the
cross-covariance of ``x`` and ``z`` batch by batch (Welford, ``O(d^2)`` memory) and computes
``r(x) = x - L R (x - b)`` with ``L = W⁺U``, ``R = UᵀW`` (``W`` the whitening matrix, ``U`` the
left singular vectors of ``W Σ_xz``), with optional covariance shrinkage and a trace
constraint. After erasure no linear classifier beats a constant one, and among all such maps it
moves ``x`` least.

What this module adds on top, for conceptkit's streaming scrubber and its store:

* integer class labels are one-hot encoded (the library treats ``[n]`` integer labels as one
  numeric feature, which erases the wrong thing for three or more classes);
* inputs are checked with conceptkit errors (widths, label counts, NaN/Inf, a single class)
  instead of ``assert``;
* statistics are float64 by default, whatever the activations' dtype;
* the eraser is frozen, plain data (its tensors are copies: the library's eraser shares the
  fitter's running mean, which a later ``update`` changes in place) that the store can keep and
  the core's ``Affine`` intervention can apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from conceptkit.api import InputError, MissingDependencyError

Method = Literal["leace", "orth"]


def _reference() -> Any:
    try:
        import concept_erasure
    except ImportError:
        raise MissingDependencyError("concept-erasure", "pip install concept-erasure") from None
    return concept_erasure


def one_hot_labels(z: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """``[n]`` integer labels -> ``[n, k]`` one-hot; float labels pass through as ``[n, k]``."""
    if z.dim() == 1 and not z.is_floating_point():
        k = n_classes or int(z.max()) + 1
        if int(z.min()) < 0:
            raise InputError(f"class labels must be >= 0, got {int(z.min())}")
        return torch.nn.functional.one_hot(z.long(), k)
    return z.reshape(z.shape[0], -1)


def _checked_batch(x: torch.Tensor, z: torch.Tensor, x_dim: int, z_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, d]`` (leading dims flattened) and ``z [n, k]`` in ``dtype``, or a clear error."""
    x = x.reshape(-1, x_dim) if x.shape[-1] == x_dim else x
    if x.shape[-1] != x_dim:
        raise InputError(f"this fitter is for width {x_dim}, got activations of width {x.shape[-1]}")
    z = one_hot_labels(z, z_dim) if z.dim() == 1 and not z.is_floating_point() else z.reshape(z.shape[0], -1)
    if z.shape[0] != x.shape[0]:
        raise InputError(f"{z.shape[0]} labels for {x.shape[0]} activations: the lengths must match")
    if z.shape[1] != z_dim:
        raise InputError(f"labels have {z.shape[1]} columns, the fitter expects {z_dim}")
    x, z = x.to(dtype), z.to(dtype)
    # A column sum is non-finite if any entry is (cheaper than an elementwise check).
    if not (torch.isfinite(x.sum(0)).all() and torch.isfinite(z.sum(0)).all()):
        raise InputError("activations or labels contain NaN or Inf")
    return x, z


@dataclass(frozen=True)
class LeaceEraser:
    """A frozen affine eraser: ``x - ((x - bias) Rᵀ) Lᵀ``."""

    proj_left: torch.Tensor  # [d, r]
    proj_right: torch.Tensor  # [r, d]
    bias: torch.Tensor | None  # [d] or None

    @property
    def dim(self) -> int:
        return int(self.proj_left.shape[0])

    @property
    def P(self) -> torch.Tensor:
        """The ``[d, d]`` projection matrix ``I - L R``."""
        eye = torch.eye(self.dim, dtype=self.proj_left.dtype, device=self.proj_left.device)
        return eye - self.proj_left @ self.proj_right

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise InputError(f"this eraser was fitted for width {self.dim}, got activations of width {x.shape[-1]}")
        delta = x - self.bias.to(x.dtype) if self.bias is not None else x
        return x - (delta @ self.proj_right.to(x.dtype).T) @ self.proj_left.to(x.dtype).T

    def as_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` with ``eraser(x) == x @ weight.T + bias`` (for the core's Affine)."""
        LR = self.proj_left @ self.proj_right
        weight = torch.eye(self.dim, dtype=LR.dtype) - LR
        bias = LR @ self.bias if self.bias is not None else torch.zeros(self.dim, dtype=LR.dtype)
        return weight, bias

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {f"{prefix}proj_left": self.proj_left, f"{prefix}proj_right": self.proj_right}
        if self.bias is not None:
            out[f"{prefix}bias"] = self.bias
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> "LeaceEraser":
        return cls(tensors[f"{prefix}proj_left"], tensors[f"{prefix}proj_right"], tensors.get(f"{prefix}bias"))

    @classmethod
    def fit(cls, x: torch.Tensor, z: torch.Tensor, **kwargs: object) -> "LeaceEraser":
        return LeaceFitter.fit(x, z, **kwargs).eraser  # type: ignore[arg-type]


class LeaceFitter:
    """Streaming LEACE statistics (``concept_erasure.LeaceFitter``); ``update`` with batches,
    read ``eraser`` at any time."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        method: Method = "leace",
        *,
        affine: bool = True,
        constrain_cov_trace: bool = True,
        shrinkage: bool = True,
        svd_tol: float = 0.01,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if method not in ("leace", "orth"):
            raise InputError(f"method must be 'leace' or 'orth', got {method!r}")
        if svd_tol <= 0:
            raise InputError(f"svd_tol must be positive, got {svd_tol}")
        self.x_dim, self.z_dim, self.method, self.dtype = x_dim, z_dim, method, dtype
        self.affine, self.constrain_cov_trace, self.shrinkage, self.svd_tol = affine, constrain_cov_trace, shrinkage, svd_tol
        self._fitter = _reference().LeaceFitter(
            x_dim, z_dim, method, affine=affine, constrain_cov_trace=constrain_cov_trace, shrinkage=shrinkage, svd_tol=svd_tol, dtype=dtype
        )
        self._eraser: LeaceEraser | None = None

    @classmethod
    def fit(cls, x: torch.Tensor, z: torch.Tensor, **kwargs: object) -> "LeaceFitter":
        z2 = one_hot_labels(z)
        fitter = cls(x.shape[-1], z2.shape[-1], **kwargs)  # type: ignore[arg-type]
        return fitter.update(x, z2)

    def update(self, x: torch.Tensor, z: torch.Tensor) -> "LeaceFitter":
        """Add a batch: ``x [n, d]`` (leading dims flattened), ``z [n]`` class ids or ``[n, k]``."""
        x, z = _checked_batch(x, z, self.x_dim, self.z_dim, self.dtype)
        self._fitter.update(x, z)
        self._eraser = None
        return self

    @property
    def n(self) -> int:
        return int(self._fitter.n)

    @property
    def mean_x(self) -> torch.Tensor:
        return self._fitter.mean_x

    @property
    def mean_z(self) -> torch.Tensor:
        return self._fitter.mean_z

    @property
    def sigma_xx(self) -> torch.Tensor:
        if self.method != "leace":
            raise InputError("method 'orth' does not track the covariance of x")
        self._need_data()
        return self._fitter.sigma_xx

    @property
    def sigma_xz(self) -> torch.Tensor:
        self._need_data()
        return self._fitter.sigma_xz

    def _need_data(self) -> None:
        if self.n < 2:
            raise InputError(f"LEACE needs at least 2 examples, got {self.n}")

    @property
    def eraser(self) -> LeaceEraser:
        if self._eraser is None:
            self._need_data()
            if self.z_dim > 1 and (self.mean_z.max() > 1 - 1e-12):
                raise InputError("the labels hold one class only: there is no concept to erase")
            if torch.count_nonzero(self._fitter.sigma_xz_) == 0:
                raise InputError("the labels do not vary (one class only): there is no concept to erase")
            ref = self._fitter.eraser
            bias = ref.bias.clone() if ref.bias is not None else None
            self._eraser = LeaceEraser(ref.proj_left.clone(), ref.proj_right.clone(), bias)
        return self._eraser


@dataclass(frozen=True)
class OracleEraser:
    """The oracle: ``x - (z - E[z]) coefᵀ``, the least-squares residual (needs ``z`` at apply time)."""

    coef: torch.Tensor  # [d, k]
    mean_z: torch.Tensor  # [k]

    def __call__(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z = one_hot_labels(z, self.coef.shape[1]).to(x.dtype)
        return x - (z - self.mean_z.to(x.dtype)) @ self.coef.to(x.dtype).T


class OracleFitter:
    """Streaming statistics for the oracle eraser (``concept_erasure.OracleFitter``; a lower
    bound on LEACE's squared error)."""

    def __init__(self, x_dim: int, z_dim: int, *, svd_tol: float = 0.01, dtype: torch.dtype = torch.float64) -> None:
        if svd_tol <= 0:
            raise InputError(f"svd_tol must be positive, got {svd_tol}")
        self.x_dim, self.z_dim, self.dtype = x_dim, z_dim, dtype
        self._fitter = _reference().OracleFitter(x_dim, z_dim, svd_tol=svd_tol, dtype=dtype)

    def update(self, x: torch.Tensor, z: torch.Tensor) -> "OracleFitter":
        x, z = _checked_batch(x, z, self.x_dim, self.z_dim, self.dtype)
        self._fitter.update(x, z)
        return self

    @property
    def n(self) -> int:
        return int(self._fitter.n)

    @property
    def oracle(self) -> OracleEraser:
        if self.n < 2:
            raise InputError(f"the oracle eraser needs at least 2 examples, got {self.n}")
        ref = self._fitter.eraser
        return OracleEraser(ref.coef.clone(), ref.mean_z.clone())
