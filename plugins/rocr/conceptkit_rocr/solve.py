"""The ROCR closed form and the null-space projector (pure tensor functions, no model).

For one edit layer with key ``k`` ``[d_mlp]``, residual ``R`` ``[d]``, projector ``P``
``[d_mlp, d_mlp]`` onto the (approximate) null space of preserved keys and the keys of earlier
sequential edits ``C_prev = Σ k' k'ᵀ``, AlphaEdit's update is

    Δᵀ = (P (k kᵀ + C_prev) + λ I)⁻¹ P k Rᵀ          (``[d_mlp, d]``, TL ``[in, out]`` layout)

so ``Δᵀ = w Rᵀ`` with ``w = solve(P A + λ I, P k)``: rank one, and ``w ∈ range(P)`` (from
``λ w = P (k - A w)``), hence ``Δ k0 = 0`` for every key with ``P k0 = 0``. With ``P = I`` and
no earlier edits, ``w = k / (‖k‖² + λ)`` and ``Δ k = R ‖k‖² / (‖k‖² + λ) → R`` as ``λ → 0``.
Solved in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conceptkit.api import InputError


@dataclass
class Projector:
    """Projector onto the eigenvectors of a key second moment whose eigenvalue is below ``tau``."""

    P: torch.Tensor  # [d_mlp, d_mlp] float64
    tau: float  # the threshold actually used
    null_dim: int  # dimension of the protected-free subspace (columns kept)
    key_rank: int  # numerical rank of the second moment (eigenvalues > eps * max)
    eigenvalues: torch.Tensor  # [d_mlp] ascending, float64


def nullspace_projector(moment: torch.Tensor, threshold: float | None = 2e-2, relative: float | None = None) -> Projector:
    """``P = U_s U_sᵀ`` over eigenvectors with eigenvalue ``< tau``.

    ``tau`` is the absolute ``threshold`` (the reference's ``nullspace_threshold = 2e-2``), or
    ``relative * max eigenvalue`` when ``relative`` is given (scale-free; the larger of the two
    when both are given). The reference uses an SVD of the symmetric moment; ``eigh`` gives the
    same subspace for a positive semi-definite matrix.
    """
    M = moment.double()
    if M.dim() != 2 or M.shape[0] != M.shape[1]:
        raise InputError(f"a second moment must be square, got shape {tuple(M.shape)}")
    if threshold is None and relative is None:
        raise InputError("give a nullspace threshold, a relative threshold, or both")
    M = (M + M.T) / 2
    S, U = torch.linalg.eigh(M)
    top = float(S.max().clamp_min(0))
    taus = [t for t in (threshold, None if relative is None else relative * top) if t is not None]
    tau = max(taus)
    small = S < tau
    Us = U[:, small]
    # rank tolerance at float32 precision: the moments are sums of float32 products
    eps = torch.finfo(torch.float32).eps * M.shape[0] * max(top, 1e-300)
    return Projector(P=Us @ Us.T, tau=tau, null_dim=int(small.sum()), key_rank=int((S > eps).sum()), eigenvalues=S)


def rocr_key_factor(
    k: torch.Tensor, P: torch.Tensor | None = None, C_prev: torch.Tensor | None = None, lam: float = 1.0
) -> torch.Tensor:
    """The left factor ``w = (P (k kᵀ + C_prev) + λ I)⁻¹ P k`` (float64, ``[d_mlp]``).

    The update is ``Δᵀ = outer(w, R)`` in ``[in, out]`` layout for any residual ``R``.

    Computed without the dense ``d_mlp³`` product and solve of the written formula (which cost
    about a second per layer on two CPU cores): ``P k kᵀ`` is rank one, so with
    ``M = P C_prev + λ I`` Sherman-Morrison gives ``w = y / (1 + kᵀ y)``, ``y = M⁻¹ P k``. Without
    earlier edits ``M = λ I`` and ``w = P k / (kᵀ P k + λ)`` needs no solve at all. ``M`` is
    invertible for ``λ > 0`` (``P C_prev`` is a product of positive semi-definite matrices, so its
    eigenvalues are real and non-negative); for ``λ = 0`` with earlier edits the dense solve
    (:func:`rocr_key_factor_dense`) is used. When ``kᵀ P k + λ = 0`` (the key lies wholly in the
    protected subspace and ``λ = 0``) nothing can be written without touching preserved keys, and
    ``w = 0``.
    """
    k, P, C_prev = _checked(k, P, C_prev, lam)
    Pk = k if P is None else P @ k
    if C_prev is None:
        denom = float(k @ Pk) + lam
        return Pk / denom if denom > 0 else torch.zeros_like(k)
    if lam == 0:
        return rocr_key_factor_dense(k, P, C_prev, lam)
    M = (C_prev if P is None else P @ C_prev) + lam * torch.eye(k.numel(), dtype=torch.float64)
    y = torch.linalg.solve(M, Pk)
    return y / (1 + float(k @ y))


def rocr_key_factor_dense(
    k: torch.Tensor, P: torch.Tensor | None = None, C_prev: torch.Tensor | None = None, lam: float = 1.0
) -> torch.Tensor:
    """``w`` by the formula as written in the reference: ``solve(P (k kᵀ + C_prev) + λ I, P k)``.

    The reference computation that :func:`rocr_key_factor` must equal (tests), and its fallback
    for ``λ = 0`` with earlier edits.
    """
    k, P, C_prev = _checked(k, P, C_prev, lam)
    n = k.numel()
    P = torch.eye(n, dtype=torch.float64) if P is None else P
    A = torch.outer(k, k) if C_prev is None else torch.outer(k, k) + C_prev
    return torch.linalg.solve(P @ A + lam * torch.eye(n, dtype=torch.float64), P @ k)


def _checked(
    k: torch.Tensor, P: torch.Tensor | None, C_prev: torch.Tensor | None, lam: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Float64 copies with their shapes checked (errors name the bad value)."""
    k = k.double().reshape(-1)
    n = k.numel()
    if lam < 0:
        raise InputError(f"l2 (lambda) must be >= 0, got {lam}")
    if P is not None:
        P = P.double()
        if P.shape != (n, n):
            raise InputError(f"projector of shape {tuple(P.shape)} does not match a key of width {n}")
    if C_prev is not None:
        C_prev = C_prev.double()
        if C_prev.shape != (n, n):
            raise InputError(f"C_prev of shape {tuple(C_prev.shape)} does not match a key of width {n}")
    return k, P, C_prev


def rocr_update(
    k: torch.Tensor, R: torch.Tensor, P: torch.Tensor | None = None, C_prev: torch.Tensor | None = None, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(w [d_mlp], R [d])`` of one layer's rank-one update ``Δᵀ = w Rᵀ`` (float64)."""
    return rocr_key_factor(k, P, C_prev, lam), R.double().reshape(-1)
