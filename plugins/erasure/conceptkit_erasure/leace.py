"""LEACE (Belrose et al., 2023): least-squares concept erasure, fitted by streaming statistics.

A :class:`LeaceFitter` accumulates means, the covariance of ``x`` and the cross-covariance of
``x`` and ``z`` batch by batch (Welford), so any number of activations fits in ``O(d^2)``
memory. Its :attr:`~LeaceFitter.eraser` is a frozen :class:`LeaceEraser`:
``r(x) = x - L R (x - b)`` with ``L = W⁺U`` and ``R = UᵀW`` (``W`` the whitening matrix, ``U``
the left singular vectors of ``W Σ_xz``). After erasure no linear classifier beats a constant
one, and among all such maps it moves ``x`` least.

Differences from the reference implementation (EleutherAI/concept-erasure): integer class
labels are one-hot encoded (the reference silently treats ``[n]`` integer labels as one
numeric feature), inputs are checked, and erasers are plain data that the store can keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from conceptkit.api import InputError

Method = Literal["leace", "orth"]


def one_hot_labels(z: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """``[n]`` integer labels -> ``[n, k]`` one-hot; float labels pass through as ``[n, k]``."""
    if z.dim() == 1 and not z.is_floating_point():
        k = n_classes or int(z.max()) + 1
        if int(z.min()) < 0:
            raise InputError(f"class labels must be >= 0, got {int(z.min())}")
        return torch.nn.functional.one_hot(z.long(), k)
    return z.reshape(z.shape[0], -1)


def shrink_covariance(S: torch.Tensor, n: int) -> torch.Tensor:
    """Optimal linear shrinkage toward a scaled identity (random-matrix theory, arXiv 1308.2608).

    Returns ``a S + (1 - a) (tr S / p) I`` with ``a = 1 - (tr(S)^2 / n) / (||S||_F^2 - tr(S)^2 / p)``,
    the Frobenius-optimal mix when ``p`` and ``n`` grow together.
    """
    p = S.shape[-1]
    tr = torch.diagonal(S).sum()
    target_sq = tr * tr / p  # ||(tr S / p) I||_F^2, also <S, (tr S / p) I>
    eps = torch.finfo(S.dtype).eps
    a = 1 - (tr * tr * target_sq / n + eps) / ((S * S).sum() * target_sq - target_sq * target_sq + eps)
    b = (1 - a) * (target_sq + eps) / (target_sq + eps)
    return a * S + b * (tr / p) * torch.eye(p, dtype=S.dtype, device=S.device)


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
    """Streaming LEACE statistics; ``update`` with batches, read ``eraser`` at any time."""

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
        self.x_dim, self.z_dim, self.method = x_dim, z_dim, method
        self.affine, self.constrain_cov_trace, self.shrinkage, self.svd_tol = affine, constrain_cov_trace, shrinkage, svd_tol
        self.n = 0
        self.mean_x = torch.zeros(x_dim, dtype=dtype)
        self.mean_z = torch.zeros(z_dim, dtype=dtype)
        self.sxz = torch.zeros(x_dim, z_dim, dtype=dtype)
        self.sxx = torch.zeros(x_dim, x_dim, dtype=dtype) if method == "leace" else None
        self._eraser: LeaceEraser | None = None

    @classmethod
    def fit(cls, x: torch.Tensor, z: torch.Tensor, **kwargs: object) -> "LeaceFitter":
        z2 = one_hot_labels(z)
        fitter = cls(x.shape[-1], z2.shape[-1], **kwargs)  # type: ignore[arg-type]
        return fitter.update(x, z2)

    def update(self, x: torch.Tensor, z: torch.Tensor) -> "LeaceFitter":
        """Add a batch: ``x [n, d]`` (leading dims flattened), ``z [n]`` class ids or ``[n, k]``."""
        x = x.reshape(-1, self.x_dim) if x.shape[-1] == self.x_dim else x
        if x.shape[-1] != self.x_dim:
            raise InputError(f"this fitter is for width {self.x_dim}, got activations of width {x.shape[-1]}")
        z = one_hot_labels(z, self.z_dim) if z.dim() == 1 and not z.is_floating_point() else z.reshape(z.shape[0], -1)
        if z.shape[0] != x.shape[0]:
            raise InputError(f"{z.shape[0]} labels for {x.shape[0]} activations: the lengths must match")
        if z.shape[1] != self.z_dim:
            raise InputError(f"labels have {z.shape[1]} columns, the fitter expects {self.z_dim}")
        x, z = x.to(self.mean_x.dtype), z.to(self.mean_x.dtype)
        # A column sum is non-finite if any entry is (cheaper than an elementwise check).
        if not (torch.isfinite(x.sum(0)).all() and torch.isfinite(z.sum(0)).all()):
            raise InputError("activations or labels contain NaN or Inf")
        self.n += x.shape[0]
        dx = x - self.mean_x
        self.mean_x += dx.sum(0) / self.n
        dx2 = x - self.mean_x
        if self.sxx is not None:
            self.sxx += dx.T @ dx2
        dz = z - self.mean_z
        self.mean_z += dz.sum(0) / self.n
        self.sxz += dx.T @ (z - self.mean_z)
        self._eraser = None
        return self

    @property
    def sigma_xx(self) -> torch.Tensor:
        if self.sxx is None:
            raise InputError("method 'orth' does not track the covariance of x")
        self._need_data()
        S = (self.sxx + self.sxx.T) / 2
        return shrink_covariance(S / self.n, self.n) if self.shrinkage else S / (self.n - 1)

    @property
    def sigma_xz(self) -> torch.Tensor:
        self._need_data()
        return self.sxz / (self.n - 1)

    def _need_data(self) -> None:
        if self.n < 2:
            raise InputError(f"LEACE needs at least 2 examples, got {self.n}")

    @property
    def eraser(self) -> LeaceEraser:
        if self._eraser is None:
            self._eraser = self._compute()
        return self._eraser

    def _compute(self) -> LeaceEraser:
        self._need_data()
        if self.z_dim > 1 and (self.mean_z.max() > 1 - 1e-12):
            raise InputError("the labels hold one class only: there is no concept to erase")
        if torch.count_nonzero(self.sxz) == 0:
            raise InputError("the labels do not vary (one class only): there is no concept to erase")
        d = self.x_dim
        eye = torch.eye(d, dtype=self.mean_x.dtype)
        if self.method == "leace":
            sigma = self.sigma_xx
            evals, evecs = torch.linalg.eigh(sigma)
            keep = evals > evals[-1] * d * torch.finfo(evals.dtype).eps
            evals = evals.clamp_min(0)
            W = (evecs * torch.where(keep, evals.rsqrt(), 0.0)) @ evecs.T
            W_pinv = (evecs * torch.where(keep, evals.sqrt(), 0.0)) @ evecs.T
        else:
            W = W_pinv = eye
        U, s, _ = torch.linalg.svd(W @ self.sigma_xz, full_matrices=False)
        U = U * (s > self.svd_tol)
        left, right = W_pinv @ U, U.T @ W
        if self.constrain_cov_trace and self.method == "leace":
            left, right = self._constrain_trace(left, right, U, eye)
        return LeaceEraser(left, right, self.mean_x.clone() if self.affine else None)

    def _constrain_trace(self, left: torch.Tensor, right: torch.Tensor, U: torch.Tensor, eye: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """If erasing would increase the total variance, mix toward the orthogonal projection
        ``Q = I - U Uᵀ`` just enough that it does not (repeated erasure cannot blow up norms)."""
        sigma = self.sigma_xx
        P = eye - left @ right
        target = torch.trace(sigma)
        a = torch.trace(P @ sigma @ P.T)
        if a <= target:
            return left, right
        Q = eye - U @ U.T
        b = torch.trace(P @ sigma @ Q.T)
        c = torch.trace(Q @ sigma @ Q.T)
        # tr((tP + (1-t)Q) Σ (tP + (1-t)Q)ᵀ) = target  <=>  t²(a - 2b + c) + 2t(b - c) + (c - target) = 0
        quad = a - 2 * b + c
        root = torch.sqrt((b - c) ** 2 - quad * (c - target))
        t1, t2 = (c - b - root) / quad, (c - b + root) / quad
        t = (t1 if t1 > 0 else t2).clamp(0, 1)
        P = t * P + (1 - t) * Q
        u, s, vh = torch.linalg.svd(eye - P)
        return u * s.sqrt(), vh * s.sqrt()[:, None]


@dataclass(frozen=True)
class OracleEraser:
    """The oracle: ``x - (z - E[z]) coefᵀ``, the least-squares residual (needs ``z`` at apply time)."""

    coef: torch.Tensor  # [d, k]
    mean_z: torch.Tensor  # [k]

    def __call__(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z = one_hot_labels(z, self.coef.shape[1]).to(x.dtype)
        return x - (z - self.mean_z.to(x.dtype)) @ self.coef.to(x.dtype).T


class OracleFitter(LeaceFitter):
    """Streaming statistics for the oracle eraser (a lower bound on LEACE's squared error)."""

    def __init__(self, x_dim: int, z_dim: int, *, svd_tol: float = 0.01, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(x_dim, z_dim, "orth", svd_tol=svd_tol, shrinkage=False, dtype=dtype)
        self.szz = torch.zeros(z_dim, z_dim, dtype=dtype)

    def update(self, x: torch.Tensor, z: torch.Tensor) -> "OracleFitter":
        z = one_hot_labels(z, self.z_dim) if z.dim() == 1 and not z.is_floating_point() else z.reshape(z.shape[0], -1)
        dz = z.to(self.mean_z.dtype) - self.mean_z
        super().update(x, z)
        self.szz += dz.T @ (z.to(self.mean_z.dtype) - self.mean_z)
        return self

    @property
    def oracle(self) -> OracleEraser:
        self._need_data()
        sigma_zz = self.szz / (self.n - 1)
        coef = self.sigma_xz @ torch.linalg.pinv(sigma_zz, atol=self.svd_tol)
        return OracleEraser(coef, self.mean_z.clone())
