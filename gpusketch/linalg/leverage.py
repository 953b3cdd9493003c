"""Leverage scores and leverage-score sampling (Chepurko et al. Lemma 7.2, Lemma 7.3, Algorithm 2)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _kernels
from .._backend import (
    all_blas_serial,
    array_namespace,
    as_matrix,
    check_positive_int,
    check_real_in,
    check_seed,
    device_block_rows,
    free_bytes,
    is_sparse,
    to_dense,
)
from .._nvtx import annotate
from .._random import derive_seed
from ..operators import Composed, Gaussian, Sampling, SparseSign, row_reduction
from ..operators._base import MAX_SKETCH_ROWS, ROWS_LIMIT
from ._numerics import factored_rank_shape, full_rank, householder_tsqr, streamed_cholesky_qr2, svd_rank
from ._precondition import SketchPreconditioner

__all__ = ["leverage_scores", "leverage_sample"]


def embedding_rows(d):
    """Rows of the OSNAP behind R: ``4d + 10`` (a constant-distortion embedding)."""
    return 4 * d + 10


def embedding_osnap(n, d, seed):
    """The OSNAP with ``4d + 10`` rows behind R; the identity when that is not fewer than n
    (``row_reduction``)."""
    return row_reduction("sparse_sign", embedding_rows(d), n, seed=derive_seed(seed, 0))


def _preconditioner(A, xp, seed):
    """R⁻¹ (or V_r Σ_r⁻¹) from the sketch ``embedding_osnap(n, d, seed) @ A``."""
    return SketchPreconditioner(to_dense(embedding_osnap(*A.shape, seed) @ A), xp, solve=False)


def jl_columns(n):
    """Gaussian columns of the JL step of the row-norm estimate: ``⌈8 ln n⌉ + 8``."""
    return int(math.ceil(8 * math.log(max(n, 2)))) + 8


def _gaussian(rows, d, seed, xp, dtype):
    """A (d, rows) matrix with N(0, 1/rows) entries (the transpose of a Gaussian sketch)."""
    return Gaussian(rows, d, seed=seed).todense(xp).T.astype(dtype)


def _row_norms2(X):
    return (X * X).sum(axis=1)


#: CPU row blocks of ``A M`` of about this many bytes: the block stays in cache
#: between the product and its row norms.
_PRODUCT_BLOCK_BYTES = 2 << 20


def _product_row_norms2(A, M, xp, at=None):
    """``||(A M)_i||²`` for every row i (or for rows ``at`` of A), without holding
    the product, or the rows ``A[at]``, on the CPU.

    A whole ``A M`` (n × t, t = O(log n) JL columns: 119 at n = 10⁶) and its
    square made two passes over about a GB; in ~2 MiB row blocks with
    ``einsum`` it took 0.38-0.78x the time (CPU, n = 2·10⁵-10⁶, d = 5-500).
    On a GPU the whole product is one cuBLAS call while it and its square
    take at most half the free device memory (for t > d it is larger than
    A); past that, row blocks of an eighth of it.  A sparse A's blocks run
    on threads (SciPy's sparse products take one core), a CSR A's as views
    of its arrays (``csr_row_view``; SciPy's row slices copy): 100000 × 2000
    CSR at 17.8 % with t = 16, 0.10-0.14 s against 0.56-0.59 s (2 cores).
    """
    n, t = (A.shape[0] if at is None else at.size), M.shape[1]
    if xp is np:
        rows = max(256, _PRODUCT_BLOCK_BYTES // (8 * max(t, 1)))
    else:  # the product and its square, float64
        rows = device_block_rows(n, 16 * max(t, 1), xp, share=8, minimum=256)
        if rows >= n:
            return _row_norms2(to_dense((A if at is None else A[at]) @ M))
    out = xp.empty(n, dtype=np.result_type(A.dtype, M.dtype))
    csr = xp is np and at is None and is_sparse(A) and A.format == "csr"

    def block(a):
        c = min(n, a + rows)
        if at is not None:
            rows_ac = A[at[a:c]]
        else:
            rows_ac = _kernels.csr_row_view(A, a, c) if csr else A[a:c]
        X = to_dense(rows_ac @ M)
        out[a:c] = xp.einsum("ij,ij->i", X, X)

    threads = _kernels._cpu_threads(A.nnz * t) if xp is np and is_sparse(A) else 1
    if threads > 1:  # SciPy's sparse products take one core (dense A: BLAS threads the GEMMs)
        with all_blas_serial, ThreadPoolExecutor(threads) as ex:
            list(ex.map(block, range(0, n, rows)))
    else:
        for a in range(0, n, rows):
            block(a)
    return out


def _exact_scores(A, xp):
    """Exact leverage scores: row norms of Q from CholeskyQR2 streamed over row blocks of A
    (neither Q₁ nor Q held whole on the CPU; a sparse A densified a block at a time), or
    from a Householder QR where CholeskyQR2 is unsafe or its R is rank deficient by the
    rule (flagged, and confirmed by R's singular values), and
    for a rank-deficient A the row norms of ``Q U_R`` over R's kept singular directions
    (``R = U_R Σ Vᵀ``, so ``A = (Q U_R) Σ Vᵀ``).  A may also be a ``RowSlices`` matrix.

    On the host the Householder QR is a TSQR (``householder_tsqr``: row blocks read
    as needed, Q applied a block at a time, never formed).  It replaced a ``geqrf`` of
    a Fortran-order copy of all of A, Q formed whole by ``ormqr``, and for a flagged
    CholeskyQR2 an SVD of all of A.  2-core CPU, A/B in one run, best of 3: columns
    graded to κ = 1e10, 2^20 × 64 8.4-9.1 → 1.55-1.64 s, 200000 × 200 4.0-4.1 → 1.65-1.71 s;
    200000 × 200 of rank 150 1.9-2.4 → 1.34-1.35 s; host peak 3.0x → 1.16x A's bytes.
    Where R's singular values clear a flag (200000 × 200 at κ = 1e10 is of full rank by
    the rule, whose cut is 4.4e-11), the streamed Q itself: 1.6-1.7 → 0.58-0.62 s.  On
    a GPU, cuSOLVER's QR, Q formed (and no longer an SVD of A for a flagged R).
    """
    n, d = A.shape
    dtype = A.dtype if A.dtype.kind == "f" else np.dtype(np.float64)
    shape = factored_rank_shape(A.shape, dtype)  # (the QRs below run in float64)
    streamed = streamed_cholesky_qr2(A, xp) if n >= 2 * d and A.dtype.kind == "f" else None
    if streamed is not None and (full_rank(streamed[0].astype(A.dtype), shape)
                                 or _full_rank_by_svd(streamed[0], shape, A.dtype, xp)):
        # (a flag near the rule's line that R's singular values lift: the streamed Q
        # serves, as qr_lstsq's does; 200000 × 200 graded to κ = 1e10, within 3e-15 of
        # Householder's)
        out = xp.empty(n, dtype=A.dtype)
        for a, c, Q in streamed[3]():
            out[a:c] = xp.einsum("ij,ij->i", Q, Q)
        return out
    if xp is np:
        Q, R = householder_tsqr(A)
    else:
        Q, R = xp.linalg.qr((A.toarray() if is_sparse(A) else A[0:n]).astype(xp.float64, copy=False))
    if not full_rank(R.astype(dtype, copy=False), shape):
        U_R, s, _ = xp.linalg.svd(R)
        V = U_R[:, : svd_rank(s, shape, dtype)]
    else:
        V = None
    if xp is np:
        return Q.row_norms2(V).astype(dtype, copy=False)
    return _row_norms2(Q if V is None else Q @ V).astype(dtype, copy=False)


def _full_rank_by_svd(R, shape, dtype, xp):
    """Whether the rank rule keeps every singular value of R (values only, d × d)."""
    s = xp.linalg.svd(R, compute_uv=False)
    return svd_rank(s, shape, dtype) == R.shape[1]


def leverage_scores(A, *, exact=False, seed=None):
    """Leverage scores ``ℓ_i = ||U_i||²`` of the rows of A (U an orthonormal basis of range(A)).

    Parameters
    ----------
    A : (n, d) array or sparse matrix, n >= d
    exact : bool
        ``True``: from a thin QR of A (Cholesky QR twice over row blocks of
        A, ``streamed_cholesky_qr2``, so neither Q₁ nor Q is held whole; or
        Householder where that is unsafe, a TSQR on the host; with the SVD
        of R when A is rank deficient); sparse A is densified a block at a
        time (on a GPU, whole in the Householder route).
        ``False`` (default): Lemma 7.2 with a Johnson–Lindenstrauss estimate
        of the row norms.
    seed : int, optional

    Returns
    -------
    array of shape (n,), on the device of A; the scores sum to rank(A)
    (exactly, or within the constant factor of the Notes).

    Notes
    -----
    Approximate route: ``SA`` with an OSNAP S of ``4d + 10`` rows, ``SA = QR``,
    then ``ℓ_i ≈ ||A_i R⁻¹ G||²`` for a Gaussian G with ``t = ⌈8 ln n⌉ + 8``
    columns, computed as ``A (R⁻¹ G)`` so A is read once.  Lemma 7.2 scales
    S so that ``||Ax|| <= ||SAx|| <= β||Ax||`` and gets
    ``ℓ_i/β² <= ||A_i R⁻¹||² <= ℓ_i``; our OSNAP is unscaled, a
    ``(1 ± ε)`` embedding, so ``ℓ_i/(1+ε)² <= ||A_i R⁻¹||² <= ℓ_i/(1−ε)²``:
    the estimates may exceed ℓ_i (at 10⁶ × 20 they summed to 24.7, not 20).
    The JL step adds a ``1 ± O(1/√t)`` factor.  The
    paper's FastEmbedding (fewer rows) is replaced by the OSNAP: same
    guarantee, and the OSNAP is the faster kernel on a GPU.  When
    ``4d + 10 >= n`` the sketch would have no fewer rows than A, and a
    square OSNAP of an A with n close to d is badly conditioned on its range
    (8 × 8 Gaussian A: estimates off by factors up to e^5); the scores are
    then exact, from the QR that the sketch's would have cost.

    Examples
    --------
    >>> import numpy as np, gpusketch
    >>> A = np.random.default_rng(0).standard_normal((500, 5))
    >>> float(gpusketch.leverage_scores(A, exact=True).sum())  # doctest: +ELLIPSIS
    5.0...
    """
    with annotate("gpusketch.leverage_scores"):
        A, xp = as_matrix(A)
        n, d = A.shape
        if n < d:
            raise ValueError(f"leverage scores need n >= d, got A of shape {A.shape}")
        if exact or embedding_rows(d) >= n:
            return _exact_scores(A, xp)
        seed = check_seed(seed)
        return _sketched_scores(_preconditioner(A, xp, seed), n, A.dtype, seed,
                                lambda P: _product_row_norms2(A, P, xp), xp)


def _sketched_scores(pre, n, dtype, seed, product_row_norms2, xp):
    """Lemma 7.2's estimates ``||A_i R⁻¹G||²`` from the preconditioner of A's sketch and
    a function giving ``||(A P)_i||²`` for every row."""
    if pre.rank == 0:  # A = 0 (its sketch is 0 only then, with probability 1)
        return xp.zeros(n, dtype=dtype)
    G = _gaussian(jl_columns(n), pre.rank, derive_seed(seed, 1), xp, dtype)
    return product_row_norms2(pre.apply(G))


class RowSlices:
    """``diag(s) [A b]`` for a dense A (s and b optional), read a row slice at a time.

    ``M[a:c]`` forms rows a..c-1 only (``M[0:n]`` the whole matrix); ``shape``
    and ``dtype`` are those of the product.  Lewis weights take leverage scores
    of such a matrix at every step without forming it whole
    (``streamed_leverage_scores``), on the host and on a device short of memory.
    """

    def __init__(self, A, s=None, b=None):
        self._A, self._s, self._b = A, s, b
        self._xp = array_namespace(A)
        n, d = A.shape
        self.shape = (n, d + (b is not None))
        self.dtype = np.result_type(A.dtype, *(() if b is None else (b.dtype,)))

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError(f"RowSlices takes row slices M[a:c], got {key!r}")
        B = self._unscaled(key)
        if self._s is None:
            return B
        if not B.flags.owndata:  # a view of A
            return B * self._s[key, None]
        B *= self._s[key, None]
        return B

    def _unscaled(self, key):
        """Rows ``key`` of ``[A b]`` (a view of A when b is None)."""
        A = self._A[key]
        if self._b is None:
            return A
        d = A.shape[1]
        B = self._xp.empty((A.shape[0], d + 1), dtype=self.dtype)
        B[:, :d] = A
        B[:, d] = self._b[key]
        return B

    def product_row_norms2(self, P):
        """``||(M P)_i||²`` for every row: ``s_i² ||[a_i b_i] P||²`` in row blocks, the
        scaling applied to the norms rather than to the rows (``_product_row_norms2``)."""
        n, xp = self.shape[0], self._xp
        out = xp.empty(n, dtype=np.result_type(self.dtype, P.dtype))
        rows = max(256, _block_bytes(_PRODUCT_BLOCK_BYTES, xp) // (8 * max(P.shape[1], 1)))
        for a in range(0, n, rows):
            X = self._unscaled(slice(a, a + rows)) @ P
            out[a : a + rows] = xp.einsum("ij,ij->i", X, X)
        if self._s is not None:
            out *= self._s * self._s
        return out


#: CPU row blocks of the sketch in ``streamed_leverage_scores``, in bytes: well above the
#: size from which the CPU sketch kernels run on several threads (2²¹ entries); at 32 MiB
#: ``lp_regression`` at 10⁶ × 20 took 1.07x the time of 128 MiB blocks, at 512 MiB 1.01x.
_SLICE_BLOCK_BYTES = 64 << 20


def _block_bytes(cpu_bytes, xp):
    """Bytes per streamed block: ``cpu_bytes`` on the CPU; on a GPU, which streams only
    when short of memory, an eighth of its free memory (at least 1 MiB)."""
    if xp is np:
        return cpu_bytes
    return max(1 << 20, (free_bytes(xp) or 0) // 8)


def streamed_leverage_scores(M, *, exact, seed):
    """``leverage_scores(M)`` for a ``RowSlices`` M, which is never formed whole.

    The same OSNAP, Gaussians and preconditioner as ``leverage_scores`` for the
    same seed: the sketch ``SM`` is summed over row blocks ``S[:, a:c] M[a:c]``
    (equal to the whole product to round-off), the row norms of ``M R⁻¹G`` come
    from A's rows scaled afterwards (``RowSlices.product_row_norms2``), and the
    exact route's CholeskyQR2 reads M by row blocks.  On the device of M's A.
    """
    n, d = M.shape
    xp = M._xp
    if exact or embedding_rows(d) >= n:
        return _exact_scores(M, xp)
    S = embedding_osnap(n, d, seed)
    rows = max(1, _block_bytes(_SLICE_BLOCK_BYTES, xp) // (8 * d))
    SM = None
    for a in range(0, n, rows):
        part = to_dense(S[:, a : a + rows] @ M[a : a + rows])
        SM = part if SM is None else SM + part
    return _sketched_scores(SketchPreconditioner(SM, xp, solve=False), n, M.dtype, seed, M.product_row_norms2, xp)


def leverage_sample(A, s, *, gamma=0.5, osnap=None, seed=None):
    """Leverage-score row sampling (Algorithm 2 with Lemma 7.3's two-stage sampler).

    Row i is kept independently with probability ``f_i ≈ min(1, s·p_i)``,
    ``p_i = ||A_i R⁻¹||²/||AR⁻¹||_F²`` (about s rows in expectation), and scaled
    by ``1/√f_i``; for ``s = O(d log d / ε²)`` the result is a ``(1 ± ε)``
    subspace embedding of range(A) (Theorem 7.1).

    Parameters
    ----------
    A : (n, d) array or sparse matrix
    s : int
        Expected sample size.  Lemma 7.3's parameter is ``4s``: its
        guarantee ``min(1, 4s·p_i) >= f_i >= min(1, s·p_i/4)`` then brackets
        the expected count ``Σ f_i ≈ s``.
    gamma : float in (0, 1]
        Lemma 7.3's trade-off: the coarse pass uses ``⌈1/γ⌉ + 1`` Gaussian
        columns and oversamples by ``n^γ``; the fine pass uses ``O(log n)``
        columns only on the rows the coarse pass kept.
    osnap : int, optional
        If given, the sample is composed with an OSNAP (SparseSign, 8
        nonzeros) down to ``osnap`` rows, as in Theorem 7.4, and a
        ``Composed`` operator of shape ``(osnap, n)`` is returned.
    seed : int, optional

    Returns
    -------
    Sampling or Composed
        ``Sampling`` of shape ``(kept, n)`` with the kept row indices (sorted)
        and scales ``1/√f_i``; with ``osnap``, ``Composed([OSNAP, Sampling])``.

    Notes
    -----
    With ``s' = 4s``: stage 1 computes ``z_i = 2 n^γ ||A_i R⁻¹ G_4||² / F``
    and keeps i with probability ``q_i = min(1, s' z_i)``; stage 2 computes
    ``||A_i R⁻¹ G_3||²`` for the kept rows only and accepts with probability
    ``min(1, (s'/4)||A_i R⁻¹ G_3||²/F) / q_i``.  Random decisions use Philox
    uniforms, so CPU and GPU keep the same rows.

    F estimates ``||AR⁻¹||_F²``.  Lemma 7.3 takes ``||G_1 A R⁻¹ G_2||_F²``
    with small Gaussians on both sides; we take ``F = ||A R⁻¹ G_2||_F²``
    (the row norms of one ``n × c`` product, same pass over A) with
    ``c = max(8, ⌈128/r⌉)`` columns, r = rank(A), so F has at least 128
    degrees of freedom.  With ``G_1`` and ``c = 8`` it had ``8r`` at most,
    and the sample count followed it: for d = 1 the 5-95 % range of
    ``kept/s`` was 0.40-4.52 (s = 50, 150 seeds), and at s = 6, 1.3 % of
    seeds kept no row at all.

    Examples
    --------
    >>> import numpy as np, gpusketch as gs
    >>> A = np.random.default_rng(0).standard_normal((20000, 5))
    >>> S = gs.leverage_sample(A, 500, seed=1)
    >>> sv = np.linalg.svd(S @ np.linalg.qr(A)[0], compute_uv=False)   # a subspace embedding
    >>> bool(0.6 < sv.min() ** 2 and sv.max() ** 2 < 1.4)
    True
    """
    with annotate("gpusketch.leverage_sample"):
        A, xp = as_matrix(A)
        s, gamma, osnap = check_leverage_sample(s, gamma, osnap)
        seed = check_seed(seed)
        idx, f = sampled_rows(A, s, gamma, seed, xp)
        return sample_result(idx, f, A.shape, s, osnap, seed, xp)


def check_leverage_sample(s, gamma, osnap):
    """``leverage_sample``'s ``(s, gamma, osnap)`` validated."""
    s = check_positive_int(s, "s")
    gamma = check_real_in(gamma, "gamma", 0, 1, closed="(]")
    if osnap is not None:
        osnap = check_positive_int(osnap, "osnap", maximum=MAX_SKETCH_ROWS, why=ROWS_LIMIT)
    return s, gamma, osnap


def sample_result(idx, f, shape, s, osnap, seed, xp):
    """``leverage_sample``'s operator for the kept rows idx (probabilities f) of an A of this shape."""
    if idx.size == 0:
        raise ValueError(f"no rows were sampled: s={s} is too small for A of shape {shape}")
    S = sample_operator(idx, f, shape[0], xp)
    if osnap is None:
        return S
    return Composed([SparseSign(osnap, S.shape[0], nnz=min(8, osnap), seed=derive_seed(seed, 8)), S])


def sample_operator(idx, f, n, xp):
    """The sample as an operator: rows ``idx`` scaled by ``1/√f_i``, so that ``E[SᵀS] = I``."""
    return Sampling(idx, n, scale=1.0 / xp.sqrt(f))


def sampled_rows(A, s, gamma, seed, xp):
    """``leverage_sample``'s rows and keep probabilities ``(idx, f)`` on validated input; idx may be empty."""
    P2, P4, P3 = sample_products(_preconditioner(A, xp, seed), A.shape, gamma, seed, xp, A.dtype)
    frob = float(_product_row_norms2(A, P2, xp).sum())
    return kept_rows(A, P4, P3, frob, 0, A.shape[0], s, gamma, seed)


def sample_products(pre, shape, gamma, seed, xp, dtype):
    """``(R⁻¹G₂, R⁻¹G₄, R⁻¹G₃)`` of ``leverage_sample`` (Notes), for the preconditioner of
    the sketch of an A of this shape."""
    r = pre.rank
    if r == 0:
        raise ValueError(f"A of shape {shape} is zero: it has no leverage scores to sample by")
    # ||A R⁻¹ G2||_F² estimates ||A R⁻¹||_F² with c·r >= 128 degrees of freedom (Notes).
    c = max(8, math.ceil(128 / r))
    t4 = int(math.ceil(1 / gamma)) + 1
    # Unscaled N(0, 1) columns for the coarse, one-sided estimate.
    G4 = _gaussian(t4, r, derive_seed(seed, 4), xp, dtype) * math.sqrt(t4)
    return (pre.apply(_gaussian(c, r, derive_seed(seed, 3), xp, dtype)), pre.apply(G4),
            pre.apply(_gaussian(jl_columns(shape[0]), r, derive_seed(seed, 6), xp, dtype)))


def kept_rows(A, P4, P3, frob, start, n, s, gamma, seed):
    """Lemma 7.3's two stages for rows ``start:start + rows(A)`` of an n-row matrix (A those
    rows), with ``frob`` the estimate of ``||AR⁻¹||_F²``: global indices of the rows kept and
    their probabilities f (the uniforms are those of the global rows)."""
    xp = array_namespace(P4)
    s4 = 4 * s  # Lemma 7.3's s
    z = 2 * n**gamma * _product_row_norms2(A, P4, xp) / frob
    q = xp.minimum(1.0, s4 * z)
    m = A.shape[0]
    keep = xp.flatnonzero(_kernels.uniforms(m, derive_seed(seed, 5), xp, start=start) < q)
    fine = _product_row_norms2(A, P3, xp, at=keep)
    # f <= q on Lemma 7.3's good event; the clamp keeps f/q a probability off it.
    f = xp.minimum(xp.minimum(1.0, (s4 / 4) * fine / frob), q[keep])
    accept = _kernels.uniforms(m, derive_seed(seed, 7), xp, start=start)[keep] < f / q[keep]
    return keep[accept] + start, f[accept]
