"""Right preconditioners from a subspace embedding: the step shared by lstsq and leverage scores."""

from __future__ import annotations

from .._backend import linalg_modules
from ._numerics import apply_qt, cholesky_qr_factors, qr_rank_deficient, svd_rank, svd_signs

__all__ = ["SketchPreconditioner"]


class SketchPreconditioner:
    """``P`` with ``κ(A P) = O(1)`` from a sketch ``SA`` of A.

    Full rank: ``SA = QR`` (``orthonormalize``'s factorisation: Cholesky QR
    twice, or Householder where that is unsafe, with Q kept as ``Q₁ R₂⁻¹``
    unformed) and ``P = R⁻¹`` (triangular solves).
    Numerically rank deficient (the rule of ``_numerics``): ``SA = U Σ Vᵀ``
    and ``P = V_r Σ_r⁻¹`` with r the numerical rank of SA, so
    ``x = P y`` stays in the row space of A (minimum norm).  The SVD is
    taken of the small R, not of SA: ``R = U_R Σ Vᵀ`` gives ``SA = (Q U_R) Σ Vᵀ``,
    and ``U = Q U_R`` is never formed (``U_rᵀ Sb = U_{R,r}ᵀ Qᵀ Sb``).  On the
    2-core CPU an 8010 × 2000 SA of rank 1952 (``leverage_sample``'s sketch
    in ``independent_rows``) took 4.8 s to decompose whole, 2.2 s through R.

    Parameters
    ----------
    SA : (m, d) dense array
    xp : array module
    solve : bool
        Keep Q for ``sketched_solution``; ``False`` (the leverage scores, the
        Kronecker factor bases) lets a Householder route skip forming Q.
    """

    def __init__(self, SA, xp, solve=True):
        self.xp = xp
        self._la, _ = linalg_modules(xp)
        # Q = Q1 Rinv2 is never formed: only R and Qᵀ Sb are needed (cholesky_qr_factors);
        # without ``solve`` (no sketched_solution: the leverage scores) a Householder route
        # skips Q altogether.
        self._Q1, self.R, self._Rinv2 = cholesky_qr_factors(SA, xp, want_q="apply" if solve else False)
        if not solve:  # (CholeskyQR2 forms Q₁ on the way: not kept)
            self._Q1 = self._Rinv2 = None
        self.rank, self.rank_deficient = SA.shape[1], False
        if qr_rank_deficient(self.R, SA.shape):  # possibly: the SVD's rank rule decides
            U_R, s, Vt = xp.linalg.svd(self.R, full_matrices=False)
            r = svd_rank(s, SA.shape)
            if r < SA.shape[1]:
                # Each singular pair's sign fixed, so that P, and what a Gaussian through
                # it gives (the sketched leverage scores), does not hang on the SVD routine.
                sign = svd_signs(Vt[:r], xp)
                self.P = (Vt[:r] * sign[:, None]).T / s[:r]
                self._UR = U_R[:, :r] * sign
                self.rank, self.rank_deficient = r, True

    def apply(self, y):
        """``P y``."""
        return self.P @ y if self.rank_deficient else self._la.solve_triangular(self.R, y)

    def apply_t(self, z):
        """``Pᵀ z``."""
        return self.P.T @ z if self.rank_deficient else self._la.solve_triangular(self.R, z, trans="T")

    def sketched_solution(self, Sb):
        """``y`` minimising ``||SA P y - Sb||``: ``Qᵀ Sb`` (or ``U_rᵀ Sb = U_{R,r}ᵀ Qᵀ Sb``)."""
        if self._Q1 is None:
            raise RuntimeError("this SketchPreconditioner was built with solve=False: it kept no Q")
        y = apply_qt(self._Q1, Sb)
        y = y if self._Rinv2 is None else self._Rinv2.T @ y
        return self._UR.T @ y if self.rank_deficient else y
