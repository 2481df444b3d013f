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
    """
    k = k.double().reshape(-1)
    n = k.numel()
    if lam < 0:
        raise InputError(f"l2 (lambda) must be >= 0, got {lam}")
    P = torch.eye(n, dtype=torch.float64) if P is None else P.double()
    if P.shape != (n, n):
        raise InputError(f"projector of shape {tuple(P.shape)} does not match a key of width {n}")
    A = torch.outer(k, k)
    if C_prev is not None:
        if C_prev.shape != (n, n):
            raise InputError(f"C_prev of shape {tuple(C_prev.shape)} does not match a key of width {n}")
        A = A + C_prev.double()
    lhs = P @ A + lam * torch.eye(n, dtype=torch.float64)
    return torch.linalg.solve(lhs, P @ k)


def rocr_update(
    k: torch.Tensor, R: torch.Tensor, P: torch.Tensor | None = None, C_prev: torch.Tensor | None = None, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(w [d_mlp], R [d])`` of one layer's rank-one update ``Δᵀ = w Rᵀ`` (float64)."""
    return rocr_key_factor(k, P, C_prev, lam), R.double().reshape(-1)
