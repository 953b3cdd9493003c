"""Numerical rules shared by the solvers: the one rank rule, and a fast orthonormalisation.

A value v (a singular value, or |R_ii| of a Householder QR) counts as zero when
``v <= max(shape) · ε · v_max`` — NumPy's ``matrix_rank`` rule, with ``shape``
the dimensions of the matrix whose rank is meant (A, even when v comes from a
sketch of A).  Where the solvers factor a float32 A in float64 (the direct solve,
IRLS, exact leverage scores), its R's d × d stand for A's n × d
(``factored_rank_shape``): only the entries' own rounding is left to allow for.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from .._backend import (
    array_namespace,
    device_block_rows,
    is_sparse,
    linalg_modules,
    scipy_blas_threaded,
    sparse_module,
    to_dense,
    to_host,
)

__all__ = [
    "dense_times",
    "rank_cut",
    "qr_rank_deficient",
    "full_rank",
    "unit_column_scales",
    "factored_rank_shape",
    "svd_rank",
    "matrix_rank",
    "proves_full_rank",
    "full_rank_provable",
    "orthonormalize",
    "normalized_basis",
    "cholesky_qr_factors",
    "streamed_cholesky_qr2",
    "qr_lstsq",
    "top_left_singular",
    "gram_svd",
    "svd_signs",
]


def dense_times(A, X, xp, transpose=False):
    """``A @ X`` (``A.T @ X`` with ``transpose``) as a dense array; a sparse A through the
    ``sparse_product`` kernel (threaded on the CPU, where SciPy's product takes one core)."""
    if is_sparse(A):
        return to_dense(_kernels.call("sparse_product", xp, A, X, transpose=transpose))
    return to_dense((A.T if transpose else A) @ X)


def rank_cut(vmax, shape, dtype):
    return max(shape) * np.finfo(dtype).eps * float(vmax)


def factored_rank_shape(shape, dtype):
    """The dimensions the rank rule takes for an n × d A of ``dtype`` whose QR the solvers
    computed in float64 (CholeskyQR2 and Householder, host and device): A's own for
    float64 A; for a lower precision, the d × d of its R.

    ``max(shape) ε`` allows for the rounding of a factorization carried out in A's
    precision over its n rows.  A float32 A factored in float64 carries only its
    entries' own rounding, about ``ε₃₂ σ_max``, and n ε₃₂ had cut every direction
    below 2.4 % of σ_max at 200000 rows: a float32 A of κ = 100 (200000 × 50, columns
    graded) lost 10 of its 50 directions, and the direct solve's cost came out 4.3x
    float64's, Huber IRLS's 10x.  ``d ε₃₂`` keeps the protection a float32 x needs
    (``_r_svd_lstsq``: past about ``1/(d ε₃₂)`` its own rounding would undo the fit).
    ``rank`` keeps NumPy's ``matrix_rank`` rule with A's shape."""
    return tuple(shape) if np.dtype(dtype).itemsize >= 8 else (shape[1], shape[1])


def qr_rank_deficient(R, shape):
    """True when the factored matrix may be numerically rank deficient: a diagonal entry
    of R is at or below the cut, R's estimated condition is near the rule's line
    (``_triangular_rcond``), or the matrix is wide.  Callers confirm with an SVD
    and ``svd_rank``, whose rule is the one rank rule.

    The cut scales with R's largest column norm (the factored matrix's largest
    column norm, within √d of σ_max and never above it), as ``svd_rank``'s
    scales with σ_max, so a matrix numerically of full rank by that rule is
    never flagged (``|R_kk| >= σ_min``).  The largest ``|R_kk|`` can sit far
    below σ_max without pivoting: a 68 × 17 matrix of rank 13 with columns
    scaled over six decades had max ``|R_kk|`` = 9e4 against σ_max = 1.1e7,
    its four null directions (``|R_kk|`` 1.6-5.4e-9) passed that cut (1.4e-9),
    and the direct solve's residual came out 1.07x the optimum.
    """
    if shape[0] < shape[1]:  # rank <= n < d, though R's n diagonal entries may all be large
        return True
    diag = abs(R.diagonal())
    if diag.size == 0:
        return True
    col_max = float((R * R).sum(axis=0).max()) ** 0.5
    if bool((diag <= rank_cut(col_max, shape, R.dtype)).any()):
        return True
    return bool(_triangular_rcond(R) <= _RCOND_FACTOR * rank_cut(1.0, shape, R.dtype))


def unit_column_scales(M, xp):
    """D with ``M D`` of unit columns (1 for a zero column), for dense M.  The norms are taken
    after dividing by each column's largest entry: squares of entries near 1e-300 underflow."""
    big = abs(M).max(axis=0)
    big = xp.where(big > 0, big, 1.0)
    norms = big * xp.sqrt(((M / big) ** 2).sum(axis=0))
    return xp.where(norms > 0, 1.0 / xp.where(norms > 0, norms, 1.0), 1.0)


def full_rank(R, shape):
    """Whether the solvers treat the matrix factored as ``QR`` as of full rank: R is not
    flagged (``qr_rank_deficient``), or R with its columns scaled to unit norm is of full
    rank by the rule (``R D`` is the R of ``A D``, flagged or not, confirmed by its
    singular values).

    Column scaling changes neither the column space, the leverage scores nor the
    least-squares fit, and Householder QR, the Cholesky factorization and the
    triangular solve are backward stable column by column (van der Sluis), so
    ``x = R⁻¹ Qᵀb`` is as accurate for A as for the equilibrated ``A D``, whose
    κ is within √d of the least over all column scalings.  The rule on A itself
    (NumPy's ``matrix_rank`` cut, ``max(shape) ε σ₁``) dropped columns whose units
    differ: 5000 × 12 with column scales from 1e-6 to 1e6 lost one direction
    (κ₂ 1e12, against 1.1 for the scaled A), Huber IRLS's cost came out 1.46x the
    unscaled problem's and the exact leverage scores 2.7e-3 off; from 1e-8 to
    1e8 three directions, 1.6x, and the direct and preconditioned solves warned.
    A matrix deficient at this test takes the unscaled rule's minimum-norm route
    (``_r_svd_lstsq``), as before.  The rule is taken at R's own precision.
    """
    if not qr_rank_deficient(R, shape):
        return True
    if shape[0] < shape[1] or R.shape[0] < R.shape[1]:
        return False
    xp = array_namespace(R)
    if not bool(abs(R).max(axis=0).all()):
        return False  # a zero column
    Rs = R * unit_column_scales(R, xp)
    if not qr_rank_deficient(Rs, shape):
        return True
    return svd_rank(xp.linalg.svd(Rs, compute_uv=False), shape) == R.shape[1]


#: ``qr_rank_deficient`` also flags R whose estimated reciprocal condition number is within
#: this factor of the rank rule's relative cut; the caller's SVD then decides the rank.
_RCOND_FACTOR = 10.0


def _triangular_rcond(R):
    """LAPACK's ``trcon`` estimate of the 1-norm reciprocal condition number of the upper
    triangular R (on the host: R is small).

    Unpivoted QR need not reveal rank in its diagonal: a rank-3 8 × 4 matrix
    (columns and rows scaled over three decades) had ``R_44 = 1.5e-11`` against
    σ₄ = 4e-13 and the rule's cut 6e-12, and the solve through it came out 1.05x
    the optimal residual.  ``κ₁(R) = κ₁(A)`` is within a factor d of κ₂, and
    the estimate seldom misses by more than 10: a numerically rank-deficient A
    (σ_min near ε σ_max) lands far below ``10 · max(shape) ε``, and a full-rank
    one flagged near that line only takes the SVD route, whose rank rule decides.
    """
    import scipy.linalg

    Rh = np.ascontiguousarray(to_host(R))
    trcon = scipy.linalg.lapack.get_lapack_funcs("trcon", (Rh,))
    rcond, info = trcon(Rh, norm="1", uplo="U", diag="N")
    return float(rcond) if info == 0 else 0.0


def svd_rank(s, shape, dtype=None):
    """Number of singular values ``s`` (descending) above the cut, at the precision of
    ``dtype`` (default ``s``'s)."""
    if s.size == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > rank_cut(s[0], shape, s.dtype if dtype is None else dtype)).sum())


def matrix_rank(M, shape, xp, certify=True):
    """``svd_rank`` of M's singular values (the rank rule with the dimensions ``shape``),
    its SVD skipped where a proof of full rank succeeds (tried only with ``certify``:
    callers pass False where M is likely rank deficient), and for float32 M past that
    proof's reach wherever M's float64 Gram decides (``_gram_rank``, whatever ``certify``).

    Where no proof of full rank succeeds, on the host a column-pivoted QR decides
    wherever its bounds place every singular value on one side of the cut
    (``_pivoted_rank``; a numerically rank-deficient M with a clear gap), at about
    half the SVD's time; else the SVD decides.

    M (or Mᵀ, when wide) is factored ``QR``; ``σ_i(M) = σ_i(R)``.  Since
    ``σ_max <= ||R||_F`` and ``σ_min >= 1/||R⁻¹||_F``, full rank is certain
    when ``1/||R⁻¹||_F`` exceeds twice the cut taken at ``||R||_F`` (twice:
    room for the rounding of R⁻¹).  The bounds lose at most a factor
    ``min(M.shape)`` in the condition number, so this certifies every M of
    full rank with ``κ₂(M) <= 1 / (2 max(shape) ε min(M.shape))`` (2·10⁸ for
    a 2406 × 2406 sketch of a 4000 × 3000 A in float64); past that, or when
    M is rank deficient, the SVD of R decides, as it would for M.  A QR and a
    triangular inverse cost about a quarter of the SVD's time on the 2-core
    CPU (4000 × 3000: 1.3-1.5 s and 0.17 s against 5.5-5.7 s), so a full-rank
    M costs about a third of the SVD, and a rank-deficient one up to 1.3x
    (square M; a tall M's SVD runs on R, R from the QR the SVD would do).
    """
    if M.size == 0:
        return 0
    if M.dtype.itemsize < 8 and not _qr_provable(min(M.shape), shape, M.dtype):
        r = _gram_rank(M, shape, xp)
        return r if r is not None else svd_rank(xp.linalg.svd(M, compute_uv=False), shape)
    proved, R = proves_full_rank(M, shape, xp) if certify else (False, None)
    if proved:
        return min(M.shape)
    F = M if R is None else R
    r = _pivoted_rank(F, shape, xp)
    return r if r is not None else svd_rank(xp.linalg.svd(F, compute_uv=False), shape)


def _pivoted_rank(M, shape, xp):
    """The rank rule's answer for M (dimensions ``shape``) from a column-pivoted QR
    ``M P = Q R``, where its bounds decide it; else None (the SVD decides).  On the host
    only: cuSOLVER has no pivoted QR.

    With ``R = [R₁₁ R₁₂; 0 R₂₂]`` split after r columns, and M's singular values
    those of R, ``σ_r >= σ_min(R₁₁) >= 1/||R₁₁⁻¹||_F`` (R₁₁ is a submatrix of
    R) and ``σ_{r+1} <= ||R₂₂||₂`` (``[R₁₁ R₁₂; 0 0]`` has rank r), while
    ``|R₀₀|`` (the largest column norm) ``<= σ₁ <= min(||R||_F,
    (||R||₁ ||R||_∞)^{1/2})``.  r is the count of ``|R_ii|`` above the cut at
    ``|R₀₀|``, and stands when ``1/||R₁₁⁻¹||_F`` exceeds twice the cut at σ₁'s
    upper bound and ``||R₂₂||₂`` (its Frobenius norm, or where that is too
    coarse the SVD of the small ``R₂₂``) is at most half the cut at ``|R₀₀|``:
    the margins of two are room for rounding, as in ``full_rank_inverse``.
    A numerically rank-deficient M with a clear gap at the cut (an exactly
    low-rank M in floating point) is decided so; singular values near the
    cut, or an ``R₁₁`` beyond about ``κ = 1/(4 max(shape) ε r)``, leave it to
    the SVD.  On the 2-core CPU a 3000 × 3000 pivoted QR took 1.9 s against
    3.9 s for the singular values.
    """
    if xp is not np or M.size == 0:
        return None
    import scipy.linalg

    W = M if M.shape[0] >= M.shape[1] else M.T
    k = W.shape[1]
    if not bool(np.isfinite(W).all()):
        return None
    with scipy_blas_threaded():
        R = scipy.linalg.qr(W, mode="r", pivoting=True, check_finite=False)[0][:k]
    diag = np.abs(R.diagonal())
    top = float(diag[0])
    if top == 0.0:
        return 0
    lo_cut = rank_cut(top, shape, M.dtype)
    small = np.flatnonzero(diag <= lo_cut)
    r = int(small[0]) if small.size else k
    if r > 0:
        sigma1_hi = min(float(np.linalg.norm(R)), math.sqrt(float(np.abs(R).sum(axis=0).max())
                                                            * float(np.abs(R).sum(axis=1).max())))
        trtri = scipy.linalg.lapack.get_lapack_funcs("trtri", (R,))
        inv, info = trtri(np.ascontiguousarray(R[:r, :r]), lower=0)
        inv_fro = float(np.linalg.norm(inv)) if info == 0 else math.inf
        if not (math.isfinite(inv_fro) and inv_fro * 2.0 * rank_cut(sigma1_hi, shape, M.dtype) < 1.0):
            return None
    if r < k:
        R22 = R[r:, r:]
        tail = float(np.linalg.norm(R22))
        if 2.0 * tail > lo_cut:
            tail = float(np.linalg.svd(R22, compute_uv=False)[0])
        if 2.0 * tail > lo_cut:
            return None
    return r


def full_rank_provable(k, shape, dtype):
    """Whether ``proves_full_rank`` can succeed on a matrix whose shorter side is k: the QR
    route needs ``2 k max(shape) ε < 1`` (``||R||_F ||R⁻¹||_F >= k``; float32 fails it from
    about ``k · max(shape) = 4·10⁶``), and float32 past that has the Gram route."""
    return _qr_provable(k, shape, dtype) or np.dtype(dtype).itemsize < 8


def _qr_provable(k, shape, dtype):
    return 2.0 * rank_cut(k, shape, dtype) < 1.0


def proves_full_rank(M, shape, xp):
    """``(proved, R)``: whether M has full rank by the rank rule with the dimensions
    ``shape`` (``matrix_rank``), shown without an SVD, and the R of M's QR where one was
    taken (``min(M.shape)`` square, with M's singular values), else None.

    A QR of M (of Mᵀ when wide) and ``full_rank_inverse``'s bound where that can
    succeed (``_qr_provable``); otherwise, for float32 M, its float64 Gram
    (``_gram_rank``).  False is no proof of deficiency: the SVD decides.
    """
    k = min(M.shape)
    if _qr_provable(k, shape, M.dtype):
        R = xp.linalg.qr(M if M.shape[0] >= M.shape[1] else M.T, mode="r")
        R = R[:k]
        return full_rank_inverse(R, shape, xp) is not None, R
    if M.dtype.itemsize < 8:
        return _gram_rank(M, shape, xp) == k, None
    return False, None


def _gram_rank(M, shape, xp):
    """The rank rule's answer for a float32 M from the eigenvalues of its float64 Gram, or
    None where they leave it open (the SVD decides).

    ``G = WᵀW`` (W = M or Mᵀ, s × k with s >= k, cast exactly) is formed and
    solved (``eigvalsh``) in float64: each eigenvalue is within
    ``δ = 1.1 (s + 4k + 2) ε₆₄ tr G`` of ``σ_i²`` (the Gram's rounding,
    ``γ_s ||W||_F²``, and the symmetric eigensolver's backward error, by
    Weyl).  ``σ_i`` is counted when ``λ_i − δ`` is above the square of the cut
    taken at ``√(λ_max + δ)``, left out when ``λ_i + δ`` is at or below the
    cut at ``√(λ_max − δ)``; one in between leaves the answer open.  The
    float32 rule cuts at ``max(shape) ε₃₂ σ₁``, and δ reaches about
    ``√((s + 4k) k ε₆₄) σ₁``, far below it: only singular values within about
    that of the cut are left open.  On the 2-core CPU a float32
    ``rank(A)`` of a full-rank 20000 × 3000 A took 7.8 s, 7.5 of them in the
    SVDs this replaces.
    """
    W = (M if M.shape[0] >= M.shape[1] else M.T).astype(xp.float64)
    s, k = W.shape
    G = W.T @ W
    trace = float(xp.trace(G))
    if not math.isfinite(trace):
        return None
    if trace == 0.0:
        return 0
    above, below = _gram_sides(xp.linalg.eigvalsh(G), trace, s, k, shape, M.dtype)
    above, below = int(above.sum()), int(below.sum())
    return above if above + below == k else None


def _gram_sides(lam, trace, s, k, shape, dtype, slack=0.0):
    """``(above, below)``: the eigenvalues ``lam`` of the float64 Gram of an s × k matrix
    (trace ``trace``) that lie surely above, and surely at or below, the square of the rank
    rule's cut at ``dtype``; each is within ``δ = 1.1 (s + 4k + 2) ε₆₄ tr G`` of ``σ_i²``
    (``_gram_rank``).  ``slack`` widens the open band by that relative amount."""
    delta = 1.1 * (s + 4 * k + 2) * float(np.finfo(np.float64).eps) * trace
    top = float(lam.max())
    hi = rank_cut(math.sqrt(top + delta), shape, dtype) ** 2 * (1 + slack)
    lo = rank_cut(math.sqrt(max(top - delta, 0.0)), shape, dtype) ** 2 * (1 - slack)
    return lam - delta > hi, lam + delta <= lo


def full_rank_inverse(R, shape, xp):
    """``R⁻¹`` for a square upper triangular R whose inverse proves it of full rank by the
    rank rule with the dimensions ``shape`` (``1/||R⁻¹||_F`` above twice the cut at
    ``||R||_F``, as in ``matrix_rank``), else None (no proof: the SVD decides).  A
    non-square R (the wide R of a QR of a wide matrix) has no inverse: None."""
    if R.shape[0] == 0 or R.shape[0] != R.shape[1] or not _qr_provable(R.shape[0], shape, R.dtype):
        return None  # (no Gram route here)
    fro = float(xp.linalg.norm(R))
    inv = _triangular_inverse(R, xp) if fro > 0.0 else None
    if inv is None:
        return None
    inv_fro = float(xp.linalg.norm(inv))
    return inv if math.isfinite(inv_fro) and inv_fro * 2.0 * rank_cut(fro, shape, R.dtype) < 1.0 else None


def _triangular_inverse(R, xp):
    """``R⁻¹`` of an upper triangular R (LAPACK ``trtri`` on the host, a cuBLAS
    triangular solve on the GPU), or None when a diagonal entry is zero."""
    if xp is np:
        import scipy.linalg

        trtri = scipy.linalg.lapack.get_lapack_funcs("trtri", (R,))
        inv, info = trtri(R, lower=0)
        return inv if info == 0 else None
    if not bool((R.diagonal() != 0).all()):
        return None
    return _solve_lower_or_upper(R, xp.eye(R.shape[0], dtype=R.dtype), False, xp)


def _solve_lower_or_upper(T, B, lower, xp):
    """``T⁻¹B`` for a small triangular T of modest condition (the CholeskyQR factors):
    cupyx's ``solve_triangular`` on the GPU; on the CPU, NumPy's LAPACK (an LU solve
    of T, backward stable with partial pivoting), not SciPy's.  NumPy and SciPy wheels
    each bundle an OpenBLAS with its own threads, and alternating them makes each wait
    on the other's spinning threads: a 504 × 50 CholeskyQR2 solve took 8-10 ms with
    SciPy's TRSM between NumPy GEMMs on 2 cores, against 0.6 ms for its parts apart.
    """
    if xp is np:
        return np.linalg.solve(T, B)
    la, _ = linalg_modules(xp)
    return la.solve_triangular(T, B, lower=lower)


def orthonormalize(Y, xp):
    """``(Q, R)`` with ``Y = QR``, Q orthonormal: Cholesky QR twice, Householder when that is unsafe.

    CholeskyQR2 (Fukaya, Nakatsukasa, Yanagisawa, Yamamoto 2014) is two
    passes of ``R = chol(YᵀY)``, ``Q = Y R⁻¹``: two GEMM-shaped passes over
    the tall Y instead of Householder's panel factorisation (on an H100,
    200000 × 60 fp64: 1.25 ms per pass against 4.6 ms for cuSOLVER geqrf).
    It is as accurate as Householder while ``κ(Y) ε^{1/2} ≪ 1``.  Its own
    test decides: the first pass's Q must have ``||Q₁ᵀQ₁ − I||_max <= 0.1``
    (that holds up to κ(Y) ≈ 10⁷ in float64; float32 Y is factored in
    float64 and rounded back, as in mixed-precision CholeskyQR, since in
    float32 the test fails beyond κ ≈ 10³); a failed Cholesky, a non-finite
    factor or a worse Q₁ falls back to ``xp.linalg.qr``, whose signs are then
    flipped so that ``diag(R) >= 0``: for full-rank Y the factorisation is the
    unique one whichever route (or LAPACK/cuSOLVER build) produced it.
    """
    if Y.dtype.kind == "f" and Y.dtype.itemsize < 8 and Y.shape[0] >= 2 * Y.shape[1]:
        Q, R = orthonormalize(Y.astype(xp.float64), xp)  # Q formed in float64, rounded once
        return Q.astype(Y.dtype), R.astype(Y.dtype)
    Q1, R, Rinv2 = cholesky_qr_factors(Y, xp)
    return (Q1, R) if Rinv2 is None else (Q1 @ Rinv2, R)


class HouseholderQ:
    """The Q of a host Householder QR ``Y = QR`` kept as LAPACK's reflectors (``geqrf``),
    applied by ``ormqr`` and never formed; columns scaled by ``sign`` (±1), as
    ``cholesky_qr_factors`` makes ``diag(R) >= 0``.  ``qt(v)`` is ``Qᵀv`` (Q's l
    columns), in ``dtype``."""

    def __init__(self, h, tau, sign, dtype):
        self.h, self.tau, self.sign, self.dtype = h, tau, sign, np.dtype(dtype)

    def astype(self, dtype):
        return HouseholderQ(self.h, self.tau, self.sign, dtype)

    def _ormqr(self, trans, c):
        """The reflectors applied to the Fortran-ordered c (overwritten), in c's dtype, which
        is the reflectors' or wider (a float64 v keeps its digits against a float32 Q)."""
        h, tau = self.h.astype(c.dtype, copy=False), self.tau.astype(c.dtype, copy=False)
        with scipy_blas_threaded():
            return _apply_reflectors(h, tau, trans, c)

    def qt(self, v):
        c = np.array(v.reshape(v.shape[0], -1), dtype=np.result_type(self.h.dtype, v.dtype), order="F")
        out = self._ormqr("T", c)[: self.tau.size] * self.sign[:, None]
        return (out.reshape(-1) if v.ndim == 1 else out).astype(np.result_type(self.dtype, v.dtype), copy=False)

    def q(self, V):
        """``Q V`` for V of Q's l rows (one or more columns): ``Q`` itself for ``V = I``."""
        V2 = V.reshape(V.shape[0], -1)
        c = np.zeros((self.h.shape[0], V2.shape[1]), dtype=np.result_type(self.h.dtype, V.dtype), order="F")
        c[: V2.shape[0]] = V2 * self.sign[:, None]
        out = self._ormqr("N", c)
        return (out.reshape(-1) if V.ndim == 1 else out).astype(np.result_type(self.dtype, V.dtype), copy=False)


def _apply_reflectors(h, tau, trans, c):
    """LAPACK ``ormqr``: the Householder reflectors ``(h, tau)`` of a ``geqrf`` applied from
    the left to the Fortran-ordered c (overwritten), ``trans`` ``"N"`` for Q c, ``"T"`` for Qᵀc."""
    import scipy.linalg

    ormqr = scipy.linalg.lapack.get_lapack_funcs("ormqr", (h,))
    _, work, _ = ormqr("L", trans, h, tau, c, -1)  # workspace query
    out, _, info = ormqr("L", trans, h, tau, c, max(1, int(work[0].real)), overwrite_c=1)
    if info != 0:
        raise RuntimeError(f"LAPACK ormqr failed (info={info})")
    return out


def apply_qt(Q1, v):
    """``Q₁ᵀ v`` for Q₁ an array or a ``HouseholderQ``."""
    return Q1.qt(v) if isinstance(Q1, HouseholderQ) else Q1.T @ v


def _householder_reflectors(Y):
    """``(HouseholderQ, R)`` of a host Householder QR of the tall Y (``geqrf`` only, in place
    on a Fortran-order copy, SciPy's BLAS on its threads), with ``diag(R) >= 0``."""
    import scipy.linalg

    Yf = np.array(Y, order="F")
    with scipy_blas_threaded():
        (h, tau), R = scipy.linalg.qr(Yf, mode="raw", overwrite_a=True, check_finite=False)
    R = R[: Y.shape[1]]
    sign = np.where(R.diagonal() < 0, -1.0, 1.0).astype(R.dtype)
    return HouseholderQ(h, tau, sign, Y.dtype), R * sign[:, None]


#: ``normalized_basis`` keeps its one Cholesky QR pass where LAPACK's estimate of R's
#: reciprocal condition number is at least this many times ``√ε`` (κ(Y) below about
#: ``√ε⁻¹ / 100``, so ``||QᵀQ − I|| ≈ κ² ε`` stays below about 1e-3 even if the estimate
#: is 10x off).
_NORMALIZE_RCOND = 100.0


def normalized_basis(Y, xp):
    """A well-conditioned basis of range(Y) (tall Y): one Cholesky QR pass ``Q = Y R⁻¹``
    where R's condition allows, else ``orthonormalize``'s Q.

    For the intermediate bases of subspace iteration, which need a basis of the
    same span whose condition is near 1, not an orthonormal one (scikit-learn
    normalizes them by LU; Halko et al. note any stable normalization will do):
    half of CholeskyQR2's passes over Y.  In float64 (a float32 Y is cast and
    the basis rounded back).  Falls back where the Cholesky fails or R is
    ill-conditioned (``_NORMALIZE_RCOND``).
    """
    n, l = Y.shape
    if n < 2 * l or Y.dtype.kind != "f":
        return orthonormalize(Y, xp)[0]
    Y64 = Y.astype(xp.float64, copy=False)
    first = _cholesky_inverse(Y64.T @ Y64, xp)
    if first is None:
        return orthonormalize(Y, xp)[0]
    Rinv, L = first
    if not _triangular_rcond(L.T) >= _NORMALIZE_RCOND * math.sqrt(float(np.finfo(np.float64).eps)):
        return orthonormalize(Y, xp)[0]
    return (Y64 @ Rinv).astype(Y.dtype, copy=False)


def cholesky_qr_factors(Y, xp, want_q=True):
    """``orthonormalize`` without its last product: ``(Q₁, R, Rinv₂)`` with ``Y = QR``, ``Q = Q₁ Rinv₂``.

    ``Rinv₂`` is the second CholeskyQR pass's ``R₂⁻¹`` (upper triangular,
    ``κ ≈ 1``), or ``None`` when Q₁ is Q already (the Householder route).
    Callers that need only R and ``Qᵀv = Rinv₂ᵀ (Q₁ᵀ v)`` skip the ``n × l × l``
    GEMM that forms Q: a third of CholeskyQR2's work.  With ``want_q=False``
    the Householder route returns ``Q₁ = None`` and does not form Q (LAPACK's
    ``orgqr``, more work than the factorisation itself: 8010 × 2000 took
    1.1 s for R alone against 2.8-3.2 s with Q on the 2-core CPU).  With
    ``want_q="apply"`` a host float64 Householder route returns Q₁ as its reflectors
    (``HouseholderQ``; ``apply_qt`` takes ``Q₁ᵀv`` from either form): a
    20000 × 2000 Y of rank 1500 took 7.2 s with Q formed, 2.5-2.7 s without.
    """
    n, l = Y.shape

    def householder():
        if want_q == "apply" and xp is np and n >= l and Y.dtype == np.float64:
            Q, R = _householder_reflectors(Y)
            return Q, R, None
        Q, R = xp.linalg.qr(Y) if want_q else (None, xp.linalg.qr(Y, mode="r"))
        sign = xp.where(R.diagonal() < 0, -1.0, 1.0).astype(R.dtype)
        return (None if Q is None else Q * sign), R * sign[:, None], None

    if n < 2 * l or Y.dtype.kind != "f":
        return householder()
    if Y.dtype.itemsize < 8:  # mixed precision: the passes in float64 reach κ ≈ 10⁷, not 10³
        Q1, R, Rinv2 = cholesky_qr_factors(Y.astype(xp.float64), xp, want_q)
        return (None if Q1 is None else Q1.astype(Y.dtype), R.astype(Y.dtype),
                None if Rinv2 is None else Rinv2.astype(Y.dtype))

    first = _cholesky_inverse(Y.T @ Y, xp)
    if first is None:
        return householder()
    Q1 = Y @ first[0]
    G2 = Q1.T @ Q1
    second = _cholesky_inverse(G2, xp)
    if second is None or not _orthonormal_enough(G2, xp):
        return householder()
    Rinv2, L2 = second
    return Q1, L2.T @ first[1].T, Rinv2


def _cholesky_inverse(G, xp):
    """``(R⁻¹, L)`` for the Gram ``G = LLᵀ = RᵀR``, or None when the Cholesky fails.

    R⁻¹ as an l × l matrix: ``Z R⁻¹`` is then one GEMM (1.5× a TRSM with n
    right-hand sides on the CPU); CholeskyQR2's orthogonality test guards its accuracy.
    """
    try:
        L = xp.linalg.cholesky(G)
        if not bool(xp.isfinite(L).all()):
            return None
        return _solve_lower_or_upper(L, xp.eye(G.shape[0], dtype=L.dtype), True, xp).T, L
    except np.linalg.LinAlgError:  # not PD, or a zero pivot (SciPy raises; CuPy leaves NaN/Inf)
        return None


def _orthonormal_enough(G, xp):
    """CholeskyQR2's test on the first pass's ``Q₁ᵀQ₁``: ``||Q₁ᵀQ₁ − I||_max <= 0.1``.
    ``not >`` would pass a NaN (CuPy's cholesky does not raise on a non-PD matrix by default)."""
    return float(xp.abs(G - xp.eye(G.shape[0], dtype=G.dtype)).max()) <= 0.1


#: CPU row blocks of ``qr_lstsq``'s streamed CholeskyQR2: a block of ``diag(s) A``
#: and of ``Q₁`` stays in cache between its product and its Gram.
_QR_BLOCK_BYTES = 1 << 20


# The GPU's workspace per row and column of A in one CholeskyQR2 block: Y, Q₁ and a
# product of the same size, in float64.
_DEVICE_BYTES_PER_ENTRY = 24


def _row_ranges(n, d, xp):
    """Row blocks of the streamed passes.

    On the CPU, blocks of ``max(_QR_BLOCK_BYTES / 8d, 8d)`` rows (at least 8d rows
    keep the blocks' GEMMs efficient for wide A).  On the GPU one block, one cuBLAS
    call per pass, while that block's workspace (``_DEVICE_BYTES_PER_ENTRY`` bytes
    per entry of A) takes at most half the free device memory; past that, blocks
    whose workspace is a quarter of it (``device_block_rows``).
    """
    d = max(d, 1)
    if xp is np:
        rows = max(_QR_BLOCK_BYTES // (8 * d), 8 * d, 1)
    else:
        rows = max(1, device_block_rows(n, _DEVICE_BYTES_PER_ENTRY * d, xp, share=4, minimum=8 * d))
    return [(a, min(n, a + rows)) for a in range(0, n, rows)]


def _scaled(M, scale, dtype=None):
    """``diag(scale) M`` as a dense array (M itself when dense, unscaled and of ``dtype``)."""
    Y = to_dense(M)
    if dtype is not None:
        Y = Y.astype(dtype, copy=False)
    if scale is None:
        return Y
    s = scale[:, None] if Y.ndim == 2 else scale
    if Y is not M and np.result_type(Y.dtype, s.dtype) == Y.dtype:
        Y *= s  # Y is a copy made here (densified or cast): scale it in place
        return Y
    return Y * s


def streamed_cholesky_qr2(A, xp, *, b=None, scale=None):
    """CholeskyQR2 of ``Y = diag(s) A`` streamed over row blocks: ``(R, Rinv₂, y, q_blocks)``,
    or None where the first Cholesky fails or ``Q₁`` fails the orthogonality test.

    ``Y = QR`` with ``Q = Q₁R₂⁻¹``; ``y = Q₁ᵀ diag(s) b`` when b is given (else None);
    ``q_blocks()`` yields ``(a, c, Q[a:c])``, recomputed from A block by block.
    Y and Q₁ are formed one row block at a time and never held whole (on the CPU):
    a pass for ``YᵀY``, one for ``Q₁ᵀQ₁`` (and ``Q₁ᵀ(s∘b)``).  With one block (the
    GPU's, or a small A) Y and Q₁ are formed once, as by ``cholesky_qr_factors``.
    The passes run in float64 (mixed precision for float32 A, as there).  Needs a
    float A with ``n >= 2d``.
    """
    n, d = A.shape
    ranges = _row_ranges(n, d, xp)
    one = len(ranges) == 1

    def rows(M, a, c):
        return _scaled(M[a:c], None if scale is None else scale[a:c], xp.float64)

    G = xp.zeros((d, d), dtype=xp.float64)
    for a, c in ranges:
        Y = rows(A, a, c)
        G += Y.T @ Y
    first = _cholesky_inverse(G, xp)
    if first is None:
        return None
    Rinv1 = first[0]
    G2 = xp.zeros((d, d), dtype=xp.float64)
    y = None if b is None else xp.zeros((d,) + tuple(b.shape[1:]), dtype=xp.float64)
    for a, c in ranges:
        Q1 = (Y if one else rows(A, a, c)) @ Rinv1
        G2 += Q1.T @ Q1
        if b is not None:
            y += Q1.T @ rows(b, a, c)
    second = _cholesky_inverse(G2, xp)
    if second is None or not _orthonormal_enough(G2, xp):
        return None
    Rinv2, L2 = second

    # Blocks of Q after the passes: one GEMM with R₁⁻¹R₂⁻¹ per block.  Its row norms
    # (leverage scores) matched Q₁R₂⁻¹'s to the first pass's accuracy, ε κ(A): max
    # relative error 8e-14 / 2.7e-11 / 4.7e-10 at κ = 1e3 / 1e6 / 1e7 against 8e-14 /
    # 2.5e-11 / 4.6e-10 (100000 × 40, Householder reference).
    Rinv = None if one else Rinv1 @ Rinv2

    def q_blocks():
        for a, c in ranges:
            yield a, c, Q1 @ Rinv2 if one else rows(A, a, c) @ Rinv

    return L2.T @ first[1].T, Rinv2, y, q_blocks


#: Largest κ(A) at which a sparse A is solved by the corrected semi-normal equations
#: (κ(A) taken as κ(L) of the Gram's Cholesky factor, from an SVD of L); past it, the
#: dense QR routes.
_SEMINORMAL_MAX_COND = 1e6


def _sparse_seminormal(A, b, xp, scale):
    """``min ||diag(s)(Ax − b)||`` for a sparse A by corrected semi-normal equations, or None.

    ``Y = diag(s) A`` stays sparse: its Gram ``YᵀY = RᵀR`` is a sparse product
    (``Σ_i nnz(a_i)²`` flops, where a dense pass costs ``n d²``), then
    ``x = (RᵀR)⁻¹ Yᵀ(s∘b)`` and two corrections ``x += (RᵀR)⁻¹ Yᵀ(s∘b − Yx)``,
    each two sparse products (Björck, "Stability analysis of the method of
    seminormal equations", 1987: one correction reaches the accuracy of a QR
    solve while ``κ(A) √ε`` is small).  In float64 throughout.  None (the
    dense routes then) where the Cholesky fails or ``κ(R) > 1e6``, κ taken with
    Y's columns scaled to unit norm (as ``full_rank`` takes the rank).  Measured
    against ``numpy.linalg.lstsq`` on weighted 20000 × 40 CSR problems with
    pairs of nearly collinear columns: relative errors in x of 2.7e-14 /
    1.2e-12 / 1.7e-10 at κ ≈ 65 / 6.5e3 / 6.5e5, within 2× of CholeskyQR2 on
    the densified A (2.4e-14 / 8.3e-13 / 9.6e-11); at κ ≈ 6.5e6, 6.6e-8
    against 8.1e-10, hence the bound.
    """
    spm = sparse_module(xp)
    Y = A.tocsr().astype(xp.float64)  # CSR throughout: cupyx's SpGEMM takes CSR operands
    sb = b.astype(xp.float64, copy=False)
    if scale is not None:
        s = scale.astype(xp.float64, copy=False)
        Y = (spm.diags(s) @ Y).tocsr()
        sb = sb * (s[:, None] if sb.ndim == 2 else s)
    Yt = Y.T.tocsr()
    G = to_dense(Yt @ Y)
    # Columns to unit norm first (D G D = L Lᵀ, so YᵀY = D⁻¹LLᵀD⁻¹): the κ bound then holds
    # for the equilibrated A, as ``full_rank``'s rule does, and columns in other units pass.
    diag = xp.diagonal(G)
    if not bool((diag > 0).all()):
        return None  # a zero column: the dense routes' rank rule decides
    D = 1.0 / xp.sqrt(diag)
    try:
        L = xp.linalg.cholesky(G * D[:, None] * D[None, :])
    except np.linalg.LinAlgError:
        return None
    if not bool(xp.isfinite(L).all()):  # CuPy leaves NaN where the Cholesky fails
        return None
    sv = xp.linalg.svd(L, compute_uv=False)
    if not float(sv[-1]) * _SEMINORMAL_MAX_COND >= float(sv[0]):
        return None
    Dz = D[:, None] if b.ndim == 2 else D

    def solve(z):  # (YᵀY)⁻¹ z = D (LLᵀ)⁻¹ D z
        return Dz * _solve_lower_or_upper(L.T, _solve_lower_or_upper(L, Dz * z, True, xp), False, xp)

    x = solve(to_dense(Yt @ sb))
    for _ in range(2):
        x = x + solve(to_dense(Yt @ (sb - to_dense(Y @ x))))
    return x


def _r_svd_lstsq(R, z, A, xp, route, dtype):
    """``qr_lstsq``'s answer from ``A = QR`` (Q orthonormal) and ``z = Qᵀb`` when R may be rank
    deficient: ``A = (QU) Σ Vᵀ`` with ``R = UΣVᵀ``, so the SVD of the d × d R gives A's
    singular values, its rank by the one rule, and the minimum-norm ``x = V_r Σ_r⁻¹ U_rᵀ z``,
    without the SVD of the n × d A that ``lstsq`` took (1.65 s against 2.75 s for a
    rank-deficient 200000 × 100 through Householder, 0.19 s against 0.89 s at κ = 1e11
    through CholeskyQR2; CPU).  R is computed in float64 on the host whatever A's dtype;
    x is the minimum-norm solution at the rank that x's own ``dtype`` (A's, b's and the
    scale's together) carries, and the flag takes the rule at A's precision, each with
    ``factored_rank_shape``'s dimensions.  (At float64's rank, a float32 x of a float32 A
    past κ ≈ 1e6 had fitted the rounding of A with entries ~κ, and their own rounding to
    float32 left residuals up to 45 times ``||b||``: 50 × 50 and 51 × 50 at κ = 1e9 and
    1e13.)"""
    U, s, Vt = xp.linalg.svd(R)
    r = svd_rank(s, factored_rank_shape(A.shape, dtype), dtype)
    deficient = svd_rank(s, factored_rank_shape(A.shape, A.dtype), A.dtype) < R.shape[1]
    if r == R.shape[1]:
        la, _ = linalg_modules(xp)
        return la.solve_triangular(R, z), deficient, route + "+svd"
    x = Vt[:r].T @ ((U[:, :r].T @ z) / (s[:r, None] if z.ndim == 2 else s[:r]))
    return x, deficient, route + "+svd"


def _tsqr_blocks(n, width):
    """Row blocks of a host TSQR of an n-row matrix of ``width`` columns: near-equal blocks
    of at most ``max(_QR_BLOCK_BYTES / 8 width, 8 width)`` rows (at least 8 width rows keep
    ``geqrf`` efficient for a wide matrix; with several blocks, none has fewer than 4 width)."""
    return _kernels._even_row_blocks(n, max(_QR_BLOCK_BYTES // (8 * width), 8 * width))


def _householder_r_qtb(M, b, xp, scale=None):
    """``(R, Qᵀ diag(s) b)`` of the Householder QR ``diag(s) M = QR`` (M tall, dense or
    sparse, b of one or more columns, ``scale`` s or None for none), in float64 on the host.

    On the host, a TSQR of ``[M b]``: each row block (``_tsqr_blocks``), copied into a
    Fortran-order buffer, gives the R factor of its Householder QR (LAPACK ``geqrf``,
    R only), the blocks on threads with BLAS on one thread each; the stacked block
    Rs are factored once more, with SciPy's BLAS on its threads.  The last k columns
    of that R are ``Qᵀb`` (Q never formed), and TSQR is as backward stable as one
    Householder QR.  It replaced one ``qr_multiply`` of the whole M (a transposing
    copy to Fortran order, then ``geqrf`` and ``ormqr``): 2-core CPU, κ(M) = 1e10,
    2^20 × 64 2.76 → 0.72 s, 200000 × 200 1.24 → 0.64 s, 100000 × 800 3.4 → 3.0 s,
    x equal to 4e-15; since the blocks are freed as factored, 0.54-0.57 s and 0.51-0.52 s,
    host peak 1.16x → 0.12x M's bytes.  The blocks are read from M as they are factored
    (a sparse M densified, the scaling applied, a block at a time): no copy of all of M
    (``qr_lstsq`` had formed ``diag(s) M`` whole, dense, first).  On a GPU,
    cuSOLVER's Q (CuPy has no ``ormqr``), of ``diag(s) M`` formed whole.
    """
    if xp is not np:  # (in float64, as on the host)
        Q, R = xp.linalg.qr(_scaled(M, scale, xp.float64))
        return R, Q.T @ _scaled(b, scale, xp.float64)
    import scipy.linalg

    n, d = M.shape
    if is_sparse(M) and M.format != "csr":
        M = M.tocsr()  # row slices
    b2 = b.reshape(n, -1)
    width = d + b2.shape[1]
    # In float64 for float32 data too, as LAPACK's lstsq and mixed-precision CholeskyQR work:
    # float32 reflectors applied by ormqr lost digits against NumPy's formed Q (60 x 40 at
    # κ = 1e3: x to 9.6e-7 against 1.9e-7), and a float64 b keeps its own.
    dtype = np.result_type(M.dtype, b.dtype, np.float64)

    def block_r(block):
        a, e = block
        blk = np.empty((e - a, width), dtype=dtype, order="F")
        blk[:, :d], blk[:, d:] = to_dense(M[a:e]), b2[a:e]
        if scale is not None:
            blk *= scale[a:e, None]
        # (mode "raw": R alone, min(rows, width) × width; mode "r" returns R as a block-sized
        # array, whose first rows as a view kept every block alive: a copy of all of M)
        return scipy.linalg.qr(blk, mode="raw", overwrite_a=True, check_finite=False)[1]

    Rs = _kernels._thread_map(block_r, _tsqr_blocks(n, width), n * width)
    R = Rs[0]
    if len(Rs) > 1:
        with scipy_blas_threaded():
            stacked = np.asfortranarray(np.concatenate(Rs))
            R = scipy.linalg.qr(stacked, mode="r", overwrite_a=True, check_finite=False)[0]
    R, z = R[:d, :d], R[:d, d:]
    return R, (z.reshape(-1) if b.ndim == 1 else z)


class TSQRQ:
    """The Q of a host TSQR ``M = QR`` (``householder_tsqr``), never formed whole.

    ``Q = diag(Q_1, …, Q_p) Q_s``: each row block's ``Q_i`` kept as LAPACK's
    reflectors (``geqrf``), ``Q_s`` the explicit Q of the p stacked d × d block Rs
    (None for one block), Q's columns scaled by ``sign`` (±1) as ``diag(R) >= 0``.
    """

    def __init__(self, blocks, reflectors, Qs, sign):
        self.blocks, self.reflectors, self.Qs, self.sign = blocks, reflectors, Qs, sign

    def row_norms2(self, V=None):
        """``||(Q V)_i||²`` for every row (V of Q's d rows; ``None`` for ``V = I``), in
        float64: a row block of Q V at a time (``ormqr`` on ``Q_s``'s d rows of the
        block times V), the blocks on threads."""
        d = self.sign.size
        W = np.diag(self.sign) if V is None else V * self.sign[:, None]
        n = self.blocks[-1][1]
        out = np.zeros(n)
        if W.shape[1] == 0:
            return out

        def block(i):
            (a, e), (h, tau) = self.blocks[i], self.reflectors[i]
            c = np.zeros((e - a, W.shape[1]), order="F")
            c[:d] = W if self.Qs is None else self.Qs[i * d : (i + 1) * d] @ W
            QV = _apply_reflectors(h, tau, "N", c)
            out[a:e] = np.einsum("ij,ij->i", QV, QV)

        _kernels._thread_map(block, range(len(self.blocks)), n * W.shape[1])
        return out


def householder_tsqr(M):
    """``(TSQRQ, R)``: a host Householder QR of the tall M (n >= d) as a TSQR, in float64,
    with ``diag(R) >= 0``.

    Each row block (``_tsqr_blocks``; a sparse M or a ``RowSlices`` densified a
    block at a time as read) is copied into a Fortran-order float64 buffer and
    factored in place by ``geqrf``, on threads with BLAS on one thread each; the
    block reflectors are kept (about M's size in float64) and the stacked block
    Rs factored once more with Q (``p d × d``).  TSQR is as backward stable as
    one Householder QR, and unlike ``_householder_reflectors`` needs no
    Fortran-order copy of all of M made by one transposing pass, nor
    ``ormqr`` over all of M on one call.
    """
    import scipy.linalg

    n, d = M.shape
    if is_sparse(M) and M.format != "csr":
        M = M.tocsr()  # row slices

    def factor(block):
        a, e = block
        Y = np.empty((e - a, d), order="F")
        Y[:] = to_dense(M[a:e])
        (h, tau), R = scipy.linalg.qr(Y, mode="raw", overwrite_a=True, check_finite=False)
        return (h, tau), R[:d]

    blocks = _tsqr_blocks(n, d)
    parts = _kernels._thread_map(factor, blocks, n * d)
    Qs, R = None, parts[0][1]
    if len(parts) > 1:
        with scipy_blas_threaded():
            Qs, R = scipy.linalg.qr(np.concatenate([p[1] for p in parts]), mode="economic", overwrite_a=True,
                                    check_finite=False)
    sign = np.where(R.diagonal() < 0, -1.0, 1.0)
    return TSQRQ(blocks, [p[0] for p in parts], Qs, sign), R * sign[:, None]


def qr_lstsq(A, b, xp, scale=None):
    """Dense least squares ``min ||diag(s)(Ax − b)||`` by QR: ``(x, rank_deficient, route)``.

    ``x = R⁻¹(Qᵀ diag(s) b)`` from CholeskyQR2 (route ``"cholesky_qr2"``), with
    ``diag(s) A`` and ``Q = Q₁R₂⁻¹`` formed a row block at a time
    (``streamed_cholesky_qr2``), so on the CPU no n × d array is made beside
    A.  A sparse A first tries the corrected semi-normal equations (route
    ``"seminormal"``, ``_sparse_seminormal``: sparse products only, while
    κ(A) <= 1e6), else it is densified block by block.  Where CholeskyQR2 is
    unsafe (its orthogonality test fails, or ``n < 2d``) a Householder QR of
    the whole ``diag(s) A`` (route ``"householder"``).  When R may be numerically
    rank deficient (``qr_rank_deficient``, at A's precision), the SVD of R decides
    and, deficient, gives the minimum-norm solution (routes ``"cholesky_qr2+svd"``,
    ``"householder+svd"``; ``_r_svd_lstsq``).  A wide A takes ``xp.linalg.lstsq``
    (an SVD; route ``"svd"``), whose rank then gives ``rank_deficient``.
    b may have several columns; ``scale`` (the row scaling s, ``None`` for
    none) serves weighted least squares (``irls``).  x has the dtype of
    ``A``, b and s together.
    """
    n, d = A.shape
    dtype = xp.result_type(A.dtype, b.dtype, *(() if scale is None else (scale.dtype,)))
    la, _ = linalg_modules(xp)
    if is_sparse(A) and n >= d:
        x = _sparse_seminormal(A, b, xp, scale)
        if x is not None:
            return x.astype(dtype, copy=False), False, "seminormal"
    if n >= d:
        streamed = streamed_cholesky_qr2(A, xp, b=b, scale=scale) if n >= 2 * d and dtype.kind == "f" else None
        if streamed is not None:
            R, Rinv2, y, _ = streamed
            if full_rank(R.astype(A.dtype), factored_rank_shape(A.shape, A.dtype)):
                x = _solve_lower_or_upper(R, Rinv2.T @ y, False, xp)
                if bool(xp.isfinite(x).all()):  # (a column scaled to ~1e-300 could overflow x)
                    return x.astype(dtype, copy=False), False, "cholesky_qr2"
            x, deficient, route = _r_svd_lstsq(R, Rinv2.T @ y, A, xp, "cholesky_qr2", dtype)
            return x.astype(dtype, copy=False), deficient, route
        # Householder: κ(A) may be large, keep the backward-stable TRSV
        R, z = _householder_r_qtb(A, b, xp, scale)
        if full_rank(R.astype(A.dtype), factored_rank_shape(A.shape, A.dtype)):  # (at A's precision)
            x = la.solve_triangular(R, z)
            if bool(xp.isfinite(x).all()):
                return x.astype(dtype, copy=False), False, "householder"
        x, deficient, route = _r_svd_lstsq(R, z, A, xp, "householder", dtype)
        return x.astype(dtype, copy=False), deficient, route
    x, _, _, sv = xp.linalg.lstsq(_scaled(A, scale), _scaled(b, scale), rcond=None)
    # The flag by the one rank rule at A's precision (LAPACK works in float64 for a float32 A)
    return x, n < d or svd_rank(sv, A.shape, A.dtype) < d, "svd"


def gram_svd(M, shape, xp):
    """``(W, σ, Zᵀ)`` of a tall float32 M (``W Σ Zᵀ = M`` on the directions the rank rule
    with the dimensions ``shape`` keeps) from the ``eigh`` of its float64 Gram, or None:
    for float64 M, a wide M, or where an eigenvalue leaves the rule open (the SVD decides).

    ``MᵀM = Z Λ Zᵀ`` in float64 (M cast exactly); ``σ = √Λ`` and
    ``W = M Z Σ⁻¹`` for the σ above the float32 cut, zero columns for the rest
    (which the rule drops).  Each eigenvalue is within ``δ`` of ``σ_i²`` (as in
    ``_gram_rank``); the float32 cut ``max(shape) ε₃₂ σ₁`` squared lies far
    above δ, so kept σ come out to about ``δ/σ²`` relative accuracy (1e-8 or
    better) and their W columns orthonormal to about ``δ/σ_min²``: more
    accurate than the float32 SVD it replaces, and on the 2-core CPU 2.7x
    faster with the vectors at 1000 × 1000 (0.115 s against 0.31 s).
    """
    s, c = M.shape
    if M.dtype.itemsize >= 8 or s < c or M.size == 0:
        return None
    M64 = M.astype(xp.float64)
    lam, Z = xp.linalg.eigh(M64.T @ M64)
    lam, Z = lam[::-1], Z[:, ::-1]
    trace = float(lam.sum())
    if not math.isfinite(trace) or float(lam[0]) <= 0.0:
        return None
    # (slack 1e-5: room for σ's rounding to float32, in which the caller applies the rule)
    keep, below = _gram_sides(lam, trace, s, c, shape, M.dtype, slack=1e-5)
    if int(keep.sum()) + int(below.sum()) != c:
        return None
    sig = xp.sqrt(xp.maximum(lam, 0.0))
    W = (M64 @ Z) * xp.where(keep, 1.0 / xp.where(keep, sig, 1.0), 0.0)
    return W.astype(M.dtype), sig.astype(M.dtype), Z.T.astype(M.dtype)


def top_left_singular(Z, k, xp):
    """An orthonormal basis of the top-k left singular space of the short, wide ``Z`` (c × d).

    For ``c <= d`` it is the top-k eigenvectors of the float64 Gram ``Z Zᵀ``
    (``c²d`` flops and a ``c × c`` ``eigh``, against ``O(c²d)`` with a
    larger constant and an ``O(c³)`` bidiagonalisation for the SVD, which
    on a GPU is cuSOLVER's slowest routine).  Squaring costs accuracy only
    in the directions: an eigenvector of the Gram is off by about
    ``ε σ₁² / (σ_k² − σ_{k+1}²)`` in float64, so the subspace is as good as the
    SVD's for any gap above ``10⁻⁷ σ₁``; with no gap, any basis of the
    near-degenerate space gives the same Frobenius error.  Taller Z goes
    through the SVD.
    """
    c, d = Z.shape
    if c > d:
        return xp.linalg.svd(Z, full_matrices=False)[0][:, :k]
    Z64 = Z.astype(xp.float64, copy=False)
    _, V = xp.linalg.eigh(Z64 @ Z64.T)  # ascending eigenvalues
    return V[:, ::-1][:, :k].astype(Z.dtype)


def svd_signs(Vt, xp):
    """Signs (±1 per row) that make the largest-magnitude entry of each right singular
    vector (row of Vt) positive: multiplying a pair ``(u_j, v_j)`` by them fixes the SVD's
    sign freedom, so that results do not hang on the routine (LAPACK's and cuSOLVER's
    signs need not agree); scikit-learn's ``svd_flip`` convention, decided on V."""
    if Vt.shape[0] == 0:
        return xp.ones(0, dtype=Vt.dtype)
    pick = xp.abs(Vt).argmax(axis=1)
    return xp.where(Vt[xp.arange(Vt.shape[0]), pick] < 0, -1.0, 1.0).astype(Vt.dtype)
