"""The one numerical-rank rule shared by the solvers.

A value v (a singular value, or |R_ii| of a Householder QR) counts as zero when
``v <= max(shape) · ε · v_max`` — NumPy's ``matrix_rank`` rule, with ``shape``
the dimensions of the matrix whose rank is meant (A, even when v comes from a
sketch of A).
"""

from __future__ import annotations

import numpy as np

__all__ = ["rank_cut", "qr_rank_deficient", "svd_rank"]


def rank_cut(vmax, shape, dtype):
    return max(shape) * np.finfo(dtype).eps * float(vmax)


def qr_rank_deficient(R, shape):
    """True when a diagonal entry of R is at or below the cut."""
    diag = abs(R.diagonal())
    if diag.size == 0:
        return True
    return bool((diag <= rank_cut(diag.max(), shape, R.dtype)).any())


def svd_rank(s, shape):
    """Number of singular values ``s`` (descending) above the cut."""
    if s.size == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > rank_cut(s[0], shape, s.dtype)).sum())
