"""Right preconditioners from a subspace embedding: the step shared by lstsq and leverage scores."""

from __future__ import annotations

from .._backend import linalg_modules
from ._numerics import orthonormalize, qr_rank_deficient, svd_rank

__all__ = ["SketchPreconditioner"]


class SketchPreconditioner:
    """``P`` with ``κ(A P) = O(1)`` from a sketch ``SA`` of A.

    Full rank: ``SA = QR`` (``orthonormalize``: Cholesky QR twice, or
    Householder where that is unsafe) and ``P = R⁻¹`` (triangular solves).
    Numerically rank deficient (the rule of ``_numerics``): ``SA = U Σ Vᵀ``
    and ``P = V_r Σ_r⁻¹`` with r the numerical rank of SA, so
    ``x = P y`` stays in the row space of A (minimum norm).
    """

    def __init__(self, SA, xp):
        self.xp = xp
        self._la, _ = linalg_modules(xp)
        self.Q, self.R = orthonormalize(SA, xp)
        self.rank_deficient = qr_rank_deficient(self.R, SA.shape)
        if self.rank_deficient:
            U, s, Vt = xp.linalg.svd(SA, full_matrices=False)
            r = svd_rank(s, SA.shape)
            self.P = Vt[:r].T / s[:r]
            self.U = U[:, :r]
            self.rank = r
        else:
            self.rank = SA.shape[1]

    def apply(self, y):
        """``P y``."""
        return self.P @ y if self.rank_deficient else self._la.solve_triangular(self.R, y)

    def apply_t(self, z):
        """``Pᵀ z``."""
        return self.P.T @ z if self.rank_deficient else self._la.solve_triangular(self.R, z, trans="T")

    def sketched_solution(self, Sb):
        """``y`` minimising ``||SA P y - Sb||``: ``Qᵀ Sb`` (or ``U_rᵀ Sb``)."""
        return (self.U if self.rank_deficient else self.Q).T @ Sb
