"""Right preconditioners from a subspace embedding: the step shared by lstsq and leverage scores."""

from __future__ import annotations

import math

import numpy as np

from .._backend import is_sparse, linalg_modules, to_dense
from ._numerics import (
    _cholesky_inverse,
    _row_ranges,
    _solve_lower_or_upper,
    dense_times,
    apply_qt,
    cholesky_qr_factors,
    full_rank,
    svd_rank,
    svd_signs,
    unit_column_scales,
)

__all__ = ["SketchPreconditioner", "RefinedPreconditioner", "refine_preconditioner", "refine_pays", "finish_refinement",
           "REFINE_SKETCH_NNZ", "refinement_matrix", "gram_refines", "finish_gram_refinement",
           "GRAM_REFINE_COLUMNS_PER_ITERATION"]


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
        if not full_rank(self.R, SA.shape):  # possibly: the SVD's rank rule decides
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


class RefinedPreconditioner:
    """A sketch's preconditioner ``P₁`` refined by one Cholesky pass over ``A P₁``
    (``refine_preconditioner``), so that ``A P`` is orthonormal to round-off.

    Full rank (``P₁ = R⁻¹``): ``P = R₂⁻¹`` with ``R₂ = Lᵀ R``, applied by triangular
    solves.  Rank-deficient sketch (``P₁ = V_r Σ_r⁻¹``, d × r): ``P = P₁ L⁻ᵀ``, explicit,
    so x stays in SA's row space (the minimum-norm solution when that is A's)."""

    def __init__(self, xp, R=None, P=None):
        self.R, self.P, self.xp = R, P, xp
        self.rank_deficient = P is not None
        self.rank = (R if P is None else P).shape[1]
        self._la, _ = linalg_modules(xp)

    def apply(self, y):
        """``P y``."""
        return self.P @ y if self.rank_deficient else self._la.solve_triangular(self.R, y)

    def apply_t(self, z):
        """``Pᵀ z``."""
        return self.P.T @ z if self.rank_deficient else self._la.solve_triangular(self.R, z, trans="T")


#: ``refine_pays``: columns of A per expected LSMR iteration and column of b up to which
#: the refined route (``refine_preconditioner``'s pass, a sketch of ``REFINE_SKETCH_NNZ``
#: nonzeros a column, and the warm start's test in place of LSMR) is taken, per array module.
#: NumPy: on the 2-core CPU (``lstsq``, the route forced on → off, best of 3, two runs,
#: tol = 1e-10 / 1e-6; A graded to κ = 1e6): 65536 x 128 0.088-0.091 → 0.095-0.099 s /
#: 0.074-0.079 → 0.081 s, 200000 x 200 0.43-0.44 → 0.62 / 0.41-0.44 → 0.41-0.48 s,
#: 100000 x 300 0.38-0.62 → 0.49-0.77 / even, 65536 x 256 0.203-0.207 → 0.221-0.230 /
#: 0.198-0.203 → 0.166-0.178 s, 16384 x 512 0.24-0.25 → 0.18 / 0.24-0.26 → 0.14-0.15 s,
#: 65536 x 128 with 8 columns of b 0.097 → 0.25-0.26 / 0.088-0.094 → 0.18 s: 16 keeps the
#: wins (d <= 266 at 1e-10, 160 at 1e-6) and leaves the losses.  (It was 8 while the
#: route sketched with 8 nonzeros a column and ran LSMR's iteration.)
#: CuPy: from the parts of the H100 table of 2026-11-23 (``bench/results/linalg-gpu.md``,
#: fp64), not from the route itself: at 2^20 x 512 an LSMR iteration took 3.5 ms (29 in
#: 102 ms) and ``AᵀA`` 12 ms, so the pass (two such GEMMs) costs about 7 iterations of the
#: 16 it saves; at 2^18 x 2048 ``AᵀA`` took 56 ms, about the iterations saved.  64 refines
#: up to d ≈ 1060 at tol = 1e-10 (638 at 1e-6).  The route's GPU timing is owed
#: (``bench/linalg.py`` times both routes on every shape).
REFINE_COLUMNS_PER_ITERATION = {"numpy": 16, "cupy": 64}


#: Nonzeros per column of the default sparse sign when ``lstsq`` refines (8 otherwise).
#: Refinement asks of S only that ``A R⁻¹`` be of full rank and condition well below
#: ``u^{-1/2}`` (its Gram's accuracy); the iterations no longer hang on the embedding's
#: distortion.  κ(A R⁻¹) at m = 12d + 10, 20000 × 64, 10 seeds, nnz = 1 / 2 / 4 / 8
#: (median, max): graded Gaussian 1.77 / 1.76 / 1.76 / 1.74 (max 1.84); d rows of
#: leverage near 1 109 / 2.41 / 1.97 / 1.80 (max 141 / 3.73 / 2.15 / 1.85); one spike a
#: column plus 1e-3 noise 10.7 / 2.43 / 2.03 / 1.76.  Without the noise (rank hangs on
#: the spikes' buckets) SA lost rank in 1-2 of 300 seeds at nnz = 2, none at 3 or 4, and
#: 140-298 of 300 for CountSketch; a lost rank is refined too, and the normal equations'
#: check (``lstsq``'s ``_sketch_missed_directions``) sends the call to the direct solve.
#: The sketch's cost is its nonzeros: ``S.matmul_each(A, b)`` took 0.047 s at nnz = 2
#: against 0.142 s at 8 (2^20 × 16, m = 202; CPU), and on the H100 SparseSign(8) took
#: 5.6-7.6x CountSketch's time (``bench/results/operators-gpu-h100.md``: an atomic add
#: per nonzero).
REFINE_SKETCH_NNZ = 2


#: ``refine_preconditioner`` takes A's own Gram (``gram_refines``) where the estimate of
#: the sketch's ``κ₂(R)`` (``κ(A)`` within the embedding's distortion) is at most this.
#: ``AᵀA`` carries a rounding of about ``u ||A||²``, which ``G = R⁻ᵀ(AᵀA)R⁻¹`` scales by
#: ``||R⁻¹||²``: an error of about ``u κ(A)²`` ≈ 1e-8 here, so ``A R₂⁻¹`` is orthonormal
#: to about 1e-8 and an LSMR iteration, where the warm start fails its test, gains about
#: 8 digits.  Measured (2-core CPU, 200000 × 200 and 65536 × 128, A rotated with columns
#: graded to κ(A), b noisy / within 1e-6 of range(A)): iterations 0 / 1 as on the Gram
#: of ``A R⁻¹`` up to κ = 1e4, 1 / 1 at 1e5, 1 / 2 at 1e6, 2 / 3 at 1e7.
GRAM_REFINE_MAX_COND = 1e4

#: Power-iteration steps of ``_cond2_estimate``.
_COND_STEPS = 8


def _cond2_estimate(R, Rinv, xp):
    """``||R||₂ ||R⁻¹||₂`` estimated from below by ``_COND_STEPS`` steps of power iteration
    on ``RᵀR`` and on ``R⁻ᵀR⁻¹`` (d × d products; fixed starts, so the same R gives the same
    estimate).  LAPACK's ``trcon`` estimates κ₁, which overstated κ₂ 8-60 times on the
    graded R of 65536 × 128 to 20000 × 500 sketches (2.05e4 for κ₂ = 1.07e3 at
    d = 200); this estimate came within 10 % of κ₂ on the same R."""
    d = R.shape[0]
    start = xp.asarray(np.random.default_rng(0).standard_normal(d), dtype=R.dtype)

    def norm2(M):
        v = start / xp.linalg.norm(start)
        s = 0.0
        for _ in range(_COND_STEPS):
            w = M.T @ (M @ v)
            s = float(xp.linalg.norm(w))
            if not s > 0.0:
                return 0.0
            v = w / s
        return math.sqrt(s)

    return norm2(R) * norm2(Rinv)


def gram_refines(A, pre, M):
    """Whether ``refine_preconditioner`` forms ``G = R⁻ᵀ(AᵀA)R⁻¹`` from A's own Gram (one
    SYRK over A, ``n d²`` flops, and ``Aᵀb``) in place of the Gram of ``A R⁻¹`` formed
    block by block (a GEMM and a SYRK, ``3 n d²``): a float64 A (a float32 A's Gram in
    float32 would carry ``u₃₂ κ²``), a full-rank sketch, and ``κ₂(R)`` estimated at most
    ``GRAM_REFINE_MAX_COND`` (``_cond2_estimate``; M is ``refinement_matrix``'s R⁻¹).

    The Gram, its products with M and the Cholesky are invariant to a column scaling of A
    in floating point (each term scales as its sum does), so their accuracy follows the
    least κ over scalings: past the bound, κ of R with unit columns decides (``R E``,
    inverse ``E⁻¹M``).  Columns in other units then refine as unscaled A does: 200000 x 50
    with scales 1e-6 .. 1e6 had taken the Gram of ``A R⁻¹``."""
    if A.dtype != np.float64 or pre.rank_deficient:
        return False
    xp = pre.xp
    R = pre.R.astype(M.dtype, copy=False)
    if _cond2_estimate(R, M, xp) <= GRAM_REFINE_MAX_COND:
        return True
    E = unit_column_scales(R, xp)
    return _cond2_estimate(R * E, M / E[:, None], xp) <= GRAM_REFINE_MAX_COND


def finish_gram_refinement(GA, cA, pre, M, xp):
    """``finish_refinement`` from A's own Gram ``GA = AᵀA`` and ``cA = Aᵀb`` (``gram_refines``):
    ``G = Mᵀ GA M`` and ``c = Mᵀ cA`` with ``M = R⁻¹`` (``refinement_matrix``)."""
    return finish_refinement(M.T @ GA @ M, M.T @ cA, pre, M, xp)


#: ``refine_pays``' ``c`` for the band where only A's own Gram refines (``gram_refines``:
#: ``n d²`` flops, a third of the Gram of ``A R⁻¹``), per array module.  NumPy, on the
#: 2-core CPU (``lstsq``, κ(A) = 100, refinement forced on → off, best of 3, two runs):
#: 100000 x 300 at tol = 1e-10 0.233-0.235 → 0.53-0.54 s, 65536 x 256 at 1e-6 0.156-0.162
#: → 0.248-0.255 s, 16384 x 512 at 1e-10 0.186-0.212 → 0.207-0.210 s (even) and at 1e-6
#: 0.178-0.221 → 0.170-0.175 s (a loss, left out), 20000 x 1000 at 1e-10 0.73-0.76 →
#: 0.79-0.95 s (left out): 32 takes d <= 531 at 1e-10, 319 at 1e-6.  CuPy: twice
#: ``REFINE_COLUMNS_PER_ITERATION``'s by the same count of GEMMs (one where that has two);
#: its GPU timing is owed.
GRAM_REFINE_COLUMNS_PER_ITERATION = {"numpy": 32, "cupy": 128}


def refine_pays(n, d, k, tol, xp, A=None):
    """Where refinement should cost less than the LSMR iterations it saves (two
    memory-bound passes over A per iteration and column of b): ``"any"``, ``"gram"`` or
    None.

    ``"any"`` where ``n >= 2d`` and ``d <= c k ln(1/tol)/ln 4`` for k columns of b
    (``ln(1/tol)/ln 4`` iterations: the unrefined preconditioner's count at the
    default sketch size, 13-16 at tol = 1e-10 and 8-9 at 1e-6), c from
    ``REFINE_COLUMNS_PER_ITERATION`` for ``xp``'s device: either Gram of
    ``refine_preconditioner`` pays, the ``3nd²`` of ``A R⁻¹``'s included, and the
    sketch may be the refined route's (``REFINE_SKETCH_NNZ``).  ``"gram"`` where d is
    within that bound at ``GRAM_REFINE_COLUMNS_PER_ITERATION``'s c: only A's own Gram
    (``n d²``) pays, taken where κ(R) allows it (``gram_refines``); the sketch is the
    one of R alone, which iterates where it does not.

    A sparse A (CSR, passed as ``A``) refines only from its own Gram, a sparse
    product of about ``Σ nnz_i²`` multiply-adds over its rows plus the ``4d³`` that
    take it to R's coordinates: ``"any"`` where ``3 Σ nnz_i² + d³/50 <= 2 k nnz
    ln(1/tol)/ln 4`` (each term in units of a sparse product's cost per nonzero:
    on the 2-core CPU SciPy's Gram took 2-21 ns per ``nnz_i²`` and ``A x`` 0.7-7 ns
    per nonzero, BLAS 0.006-0.024 ns per flop, from 1e6 × 100 at 1 % to
    20000 × 1000 at 20 %), else None.  Its sketch is then the
    refined route's too: a sparse A's sketch is mostly hashing, and the sketch of R
    alone with 2 nonzeros a column took the same LSMR iterations as with 8 on
    random sparse A (``"sparse_sign"`` at κ = 1e6: 1e6 × 100 at 1 % 22 → 21,
    200000 × 500 29 and 29, 1e6 × 50 at 10 % 16 and 16; the call 0.72 → 0.49 s,
    0.36 → 0.26 s, 1.05 → 0.63 s).
    """
    if n < 2 * d:
        return None
    iterations = max(1, k) * math.log(1.0 / tol) / math.log(4.0)
    if A is not None and is_sparse(A):
        row_nnz = (A.indptr[1:] - A.indptr[:-1]).astype(xp.float64)
        gram = 3.0 * float((row_nnz * row_nnz).sum()) + d**3 / 50.0
        return "any" if gram <= 2.0 * iterations * A.nnz else None
    dev = "numpy" if xp is np else "cupy"
    if d <= REFINE_COLUMNS_PER_ITERATION[dev] * iterations:
        return "any"
    return "gram" if d <= GRAM_REFINE_COLUMNS_PER_ITERATION[dev] * iterations else None


def inverse_r(R, xp):
    """``R⁻¹`` of a sketch's R as a d × d matrix: ``A_blk R⁻¹`` is then one GEMM per block."""
    return _solve_lower_or_upper(R, xp.eye(R.shape[0], dtype=R.dtype), False, xp)


def refine_preconditioner(A, b, pre, xp, gram_only=False):
    """``(RefinedPreconditioner, y0)`` from a ``SketchPreconditioner`` ``pre`` of A, or None
    (also, with ``gram_only``, where A's own Gram would not serve: ``refine_pays``' ``"gram"``).

    ``A R⁻¹`` has condition ``(1+ε)/(1−ε)`` for a subspace embedding of distortion
    ε, so its Gram ``G = R⁻ᵀ AᵀA R⁻¹`` is formed accurately whatever κ(A) (the
    randomized Cholesky QR of Fan, Guo and Lin, 2021, and Balabanov, 2022; forming
    ``AᵀA`` itself would square κ(A)).  With ``G = LLᵀ``, ``R₂ = Lᵀ R`` makes
    ``A R₂⁻¹`` orthonormal to round-off, and ``y0 = L⁻¹ (A R⁻¹)ᵀ b`` solves the
    preconditioned normal equations: it passes LSMR's stopping test as it is, or
    after an iteration, where with R alone LSMR takes about ``log(tol)/log(ε)``.  One pass over A in
    row blocks (``A_blk R⁻¹`` by GEMM with R's explicit inverse, its Gram and its
    product with b), ``3 n d²`` flops in BLAS-3 (``refine_pays`` says when that is
    less than the iterations saved).  Where κ(A) is small enough for A's own Gram
    (``gram_refines``: ``κ₂(R) <= 1e4``, float64 A), ``G = R⁻ᵀ(AᵀA)R⁻¹`` instead: one
    SYRK and one GEMV over A, ``n d²`` flops (2-core CPU, whole ``lstsq`` calls, A/B at
    κ(A) = 1e2-1e3: 2^20 × 64 0.47-0.49 → 0.40-0.41 s, 200000 × 200 0.43-0.46 →
    0.25-0.27 s, 65536 × 128 0.079-0.086 → 0.046-0.059 s; iterations unchanged up to
    κ = 1e4).
    None where the Cholesky of G fails.

    A rank-deficient sketch's ``V_r Σ_r⁻¹`` (``pre.P``) is refined the same way, its r
    columns in place of R⁻¹'s d: ``A V_r Σ_r⁻¹`` has full column rank r and condition
    ``O(1)`` when S kept A's rank, and ``P = V_r Σ_r⁻¹ L⁻ᵀ`` keeps x in SA's row space.
    """
    n, d = A.shape
    M = refinement_matrix(pre, xp.result_type(A.dtype, b.dtype), xp)
    if gram_refines(A, pre, M):
        if is_sparse(A):  # (Aᵀ to CSR, as _sparse_seminormal's: cupyx's SpGEMM takes CSR operands)
            GA = to_dense(A.T.tocsr() @ A.tocsr())
            return finish_gram_refinement(GA, dense_times(A, b, xp, transpose=True), pre, M, xp)
        return finish_gram_refinement(A.T @ A, A.T @ b, pre, M, xp)
    if gram_only or is_sparse(A):  # (a sparse A's A R⁻¹ would be dense: R alone iterates)
        return None
    r = M.shape[1]
    G = xp.zeros((r, r), dtype=M.dtype)
    c = xp.zeros((r,) + b.shape[1:], dtype=M.dtype)
    ranges = _row_ranges(n, d, xp)
    buf = xp.empty((max(e - a for a, e in ranges), r), dtype=M.dtype)  # reused: no fresh pages per block
    for a, e in ranges:
        Q = xp.matmul(A[a:e], M, out=buf[: e - a])
        G += Q.T @ Q
        c += Q.T @ b[a:e]
    return finish_refinement(G, c, pre, M, xp)


def refinement_matrix(pre, dtype, xp):
    """The d × r matrix ``M`` whose ``A M`` is refined: R⁻¹ as a matrix (``A_blk R⁻¹`` is then
    one GEMM per block), or a rank-deficient sketch's ``V_r Σ_r⁻¹``; in the dtype of
    ``dtype`` and ``pre``'s together (a float64 b gets a float64 x, as with R alone)."""
    M = pre.P if pre.rank_deficient else pre.R
    M = M.astype(xp.result_type(dtype, M.dtype), copy=False)
    return M if pre.rank_deficient else inverse_r(M, xp)




def finish_refinement(G, c, pre, M, xp):
    """``refine_preconditioner``'s result from the Gram ``G`` of ``A M`` and ``c = (A M)ᵀ b``
    (however they were summed: in row blocks here, over Dask's blocks in ``gpusketch.dask``),
    M from ``refinement_matrix(pre, ...)``."""
    chol = _cholesky_inverse(G, xp)
    if chol is None:
        return None
    L = chol[1]
    y0 = _solve_lower_or_upper(L, c, True, xp)
    if pre.rank_deficient:
        return RefinedPreconditioner(xp, P=_solve_lower_or_upper(L, M.T, True, xp).T), y0
    return RefinedPreconditioner(xp, R=L.T @ pre.R.astype(M.dtype, copy=False)), y0
