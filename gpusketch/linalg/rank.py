"""Rank and independent rows by rank-preserving sketches (Chepurko et al. Algorithms 3-5)."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np

from .. import _kernels
from .._backend import (
    as_matrix,
    check_memory,
    check_seed,
    is_sparse,
    scipy_blas_threaded,
    sparse_module,
    to_dense,
    to_host,
)
from .._nvtx import annotate
from .._random import derive_seed
from ..operators import Gaussian, SparseSign
from ._numerics import full_rank_provable, matrix_rank, proves_full_rank
from .leverage import leverage_sample

__all__ = ["rank", "independent_rows"]

# Algorithm 3's constant c: z = c·(nnz(A)/log n)^{1/2}, and k1 < z/c certifies the sketch.
_C = 2
# Nonzeros per column of the rank-preserving sketches (Theorem 7.7 has 2; see _rank_preserving).
_NNZ = 3


def _rank_preserving(z, n, seed, xp, dtype, nnz=_NNZ, cols=None):
    """A z × n rank-preserving sketch (Definition 7.6) as a CSC matrix on ``xp``.

    Column j has ``min(3, z)`` nonzeros in distinct rows (SparseSign's hashed
    blocks) with values ``±(1 + u)``, u uniform on (0, 1), so that
    ``min(rank(SM), z/c) = min(rank(M), z/c)`` w.h.p. for c = 2.

    Deviation from Theorem 7.7 (Cheung, Kwok and Lau's construction, with
    c = 11): that construction puts 2 nonzeros per column with *random field
    elements* as values.  With ±1 values (a plain SparseSign) two columns
    are parallel with probability about ``1/z²``; on A with k independent
    rows of one nonzero each, ``rank`` came out one short in 1-5 % of calls,
    whatever the size.  With continuous values the sketch loses rank only
    where the hashing does (some t needed rows landing in fewer than t
    rows: a failed 2-choice cuckoo hashing), and at c = 2 the load k/z
    reaches 1/2, 2-choice hashing's threshold: 1-5 % of 300 draws per k
    failed in a simulation of the doubling loop (k = 3 .. 2000).  Three
    nonzeros per column keep c = 2 (the sketch sizes, and the cost of the
    SVD on them) and failed in none of 2700; their threshold is a load of
    0.92.
    """
    nnz = min(nnz, z)
    a, b = (0, n) if cols is None else cols  # columns a:b only (a row block's slice of S)
    S = SparseSign(z, n, nnz=nnz, seed=seed)
    buckets, signs = (S if cols is None else S[:, a:b]).hashes(xp)
    u = _kernels.uniforms((b - a) * nnz, derive_seed(seed, 1), xp, start=a * nnz).reshape(b - a, nnz)
    values = (signs * (1.0 + u)).astype(dtype, copy=False)
    indptr = xp.arange(0, (b - a) * nnz + 1, nnz, dtype=xp.int64)
    return sparse_module(xp).csc_matrix((values.ravel(), buckets.ravel(), indptr), shape=(z, b - a))


def _sketch_rows(M, z, seed, xp, nnz=_NNZ, rows=None):
    """``S M`` for a fresh rank-preserving z × rows(M) sketch S (sparse where M is), with
    ``nnz`` nonzeros per column; ``rows = (a, b, n)``: M is rows a:b of an n-row matrix,
    sketched by S's columns a:b (a block's part of the whole sketch)."""
    S = (_rank_preserving(z, M.shape[0], seed, xp, M.dtype, nnz) if rows is None
         else _rank_preserving(z, rows[2], seed, xp, M.dtype, nnz, cols=rows[:2]))
    if is_sparse(M):
        return _kernels.call("csc_times_sparse", xp, S, M)
    check_memory(z * M.shape[1] * M.dtype.itemsize, f"rank(A): a {z} x {M.shape[1]} sketch", xp)
    return _kernels.call("csc_times_dense", xp, S, M)


#: Host row blocks in which ``_pivot_rows`` gathers the candidate rows' chosen columns.
_PIVOT_BLOCK_BYTES = 32 << 20


def _pivot_rows(sub, k, dims, seed, xp, first=None):
    """k rows of ``sub`` (s × k', dense or sparse on xp, of rank k) that are independent
    by the rank rule, or None (``dims = (n, d)``: A's shape, whose rows sub's stand for).

    The pivot rows of an LU with partial pivoting of a full-column-rank matrix
    are independent (each Schur complement keeps full column rank, so no pivot
    column is zero).  So sub is first cut to k independent columns J
    (``_independent_columns``), gathered by row blocks straight into the
    Fortran-ordered s × k matrix that LAPACK factors in place (on the host:
    CuPy's LU is square only).  The chosen rows of sub are then checked by
    the rank rule, so that a numerically poor choice returns None rather
    than dependent rows: the rule of the k × d matrix they pick from A
    (``np.linalg.matrix_rank(A[rows])``'s cut, ``max(k, d) ε σ₁``).  With A's own
    dimensions the cut allowed float32 selections a condition number of only
    about ``1/(2 max(n, d) ε₃₂)`` (210 for 20000 × 3000), which square ones
    seldom meet (LU picks: κ 660-940), and the call fell back to the pivoted
    QR of all of A (32 s there, against 3.9 s in float64).

    ``first`` (sorted positions of at most ``_FIRST_ROWS · k`` rows of sub,
    ``_first_rows``) are factored alone first, and their pivot rows returned
    when a proof shows them independent (``proves_full_rank``, no SVD; not
    tried where none could succeed, ``full_rank_provable``); a
    subset that spans range(subᵀ) keeps J's columns independent.  Otherwise
    all s rows are, as above.  The LU costs ``s k²``: on a 100000 × 2000 CSR
    matrix of rank 1952 (s ≈ 45000) the gather and LU of all candidates took
    5.5-6 of the call's 18 s.
    """
    s, width = sub.shape
    rule = (k, dims[1])  # the rank rule of the k × d rows picked from A
    J = _independent_columns(sub, k, seed, xp) if width > k else None
    if first is not None and full_rank_provable(k, rule, sub.dtype):
        part = sub[xp.asarray(first)]
        picked = _lu_rows(part, J, k)
        if proves_full_rank(to_host(to_dense(part[xp.asarray(picked)])), rule, np)[0]:
            return first[picked]
    picked = _lu_rows(sub, J, k)
    return picked if matrix_rank(to_host(to_dense(sub[xp.asarray(picked)])), rule, np) >= k else None


def _lu_rows(sub, J, k):
    """The first k pivot rows of an LU with partial pivoting of ``sub[:, J]`` (all columns
    when J is None), gathered by row blocks into a Fortran-ordered host matrix."""
    s, width = sub.shape
    dtype = sub.dtype if sub.dtype.kind == "f" else np.dtype(np.float64)
    C = np.empty((s, k), dtype=dtype, order="F")
    step = max(1, _PIVOT_BLOCK_BYTES // (dtype.itemsize * width))
    for a in range(0, s, step):
        block = to_host(to_dense(sub[a : a + step]))
        C[a : a + step] = block if J is None else np.take(block, J, axis=1)
    return _lu_pivots(C, k, overwrite=True)


#: ``_pivot_rows`` tries this many times k of the candidate rows first.
_FIRST_ROWS = 2


def _first_rows(keep, k, count, seed, xp):
    """Sorted positions of the ``_FIRST_ROWS · k`` of ``count`` candidates that
    ``_pivot_rows`` factors first, or None when there are no more candidates than that.

    With the leverage sample's keep probabilities ``keep`` (``f_i ≈ min(1, s p_i)``),
    the largest of them: rows of high leverage hold directions few other rows
    do.  Ties (``f_i = 1``), and every row when ``keep`` is None (all rows are
    candidates), are broken by seeded uniforms.
    """
    size = _FIRST_ROWS * k
    if count <= size:
        return None
    u = to_host(_kernels.uniforms(count, seed, xp))
    order = np.lexsort((u,) if keep is None else (u, -to_host(keep)))
    return np.sort(order[:size])


def _lu_pivots(C, k, overwrite=False):
    """The first k pivot rows of an LU with partial pivoting of C (on the host; C is
    overwritten with ``overwrite`` when it is Fortran ordered)."""
    import scipy.linalg

    with warnings.catch_warnings():  # a rank-deficient C (lost rank) warns of a zero pivot
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        _, swaps = scipy.linalg.lu_factor(C, overwrite_a=overwrite, check_finite=False)
    order = np.arange(C.shape[0])
    for i, j in enumerate(swaps[:k]):  # LAPACK's row interchanges, in order
        order[[i, j]] = order[[j, i]]
    return order[:k]


def _independent_columns(sub, k, seed, xp):
    """k columns of the s × k' matrix ``sub`` of rank k that are independent (w.h.p.), sorted.

    ``X = (W sub)ᵀ`` with W a rank-preserving sketch of ``z = 2k + 10`` rows
    (``_sketch_rows``; none when ``s <= z``): ``rank(W sub) = rank(sub)``
    means W is one-to-one on range(sub), so a set of columns is independent
    in ``W sub`` exactly when it is in sub.  A z × k Gaussian G then brings X
    to k columns (``XG`` keeps rank k with probability 1), and the pivot rows
    of its LU are k independent columns.  Cost ``O(nnz(sub) + k' z k)``.
    Bringing the s × k' candidate rows themselves to k columns by a Gaussian,
    as before, cost ``s k' k`` with ``s ≈ 4k ln k``, about ln k times more.
    """
    z = 2 * k + 10
    WC = to_host(to_dense(sub if sub.shape[0] <= z else _sketch_rows(sub, z, derive_seed(seed, 1), xp)))
    X = (Gaussian(k, WC.shape[0], seed=seed) @ WC).T if WC.shape[0] > k else WC.T
    return np.sort(_lu_pivots(X, k))


#: The first size of ``_sketch_rank``'s nested sketches.
_INNER_Z = 64
#: Nonzeros per column of ``_sketch_rank``'s sketch to ``enough`` rows.
_ENOUGH_NNZ = 8


def _sketch_rank(M, scale_dims, seed, xp, lower=0, enough=None):
    """Rank of the dense sketch ``M = S A Rᵀ`` (at most z × z), in time adaptive to it.

    Algorithm 3 takes ``rank(SAR)`` with CKL-RE, whose cost is
    ``O(nnz(SAR) log k₁ + min(k₁^ω, k₁ nnz(SAR)))``: adaptive to the rank k₁, not
    the z³ of an SVD of SAR.  Here M is sketched again, on both sides, by
    rank-preserving sketches to ``z' = 64, 128, ...`` (fresh ones each time): a
    composition of rank-preserving sketches is one, so ``k' < z'/c`` certifies
    ``rank(M) = k'``: a rank certified so costs SVDs of at most ``max(4k₁, 64)``
    square.  Sizes grow by ``_next_size`` (at least double, and past c times
    the rank found) and start past c times a rank already found (``lower``:
    a sketch's rank is a lower bound); once z' would exceed half of M's
    shorter side, M is factored whole, so that a rank near z pays at most
    the smaller SVDs before it, of at most half M's size.
    Each step costs ``O(nnz(M))`` for the sketches and ``O(z'³)``.  A/B in
    one run (2-core CPU), dense A: 3000 × 20000 of rank 500 (z = 4924)
    0.075-0.079x the time of ``rank`` with one SVD of M (9.2-9.5 s), and
    ``independent_rows`` 0.08-0.10x; 20000 × 2000 of rank 100 0.11-0.12x;
    at full rank 3000 × 20000 0.87x (with the right sketch by columns,
    ``csc_times_dense``), 20000 × 3000 1.04-1.05x, 4000 × 4000 1.02-1.05x.

    ``enough``: the caller needs rank(M) only below ``enough``; a lower bound
    of at least ``enough`` may be returned instead (a sketch's rank bounds
    M's from below).  Before M is factored whole, a sketch of ``enough`` rows
    is then tried, and a QR that proves it of full rank ends the call.  That
    sketch has ``_ENOUGH_NNZ`` nonzeros per column: at 3, a sketch of half of
    M's rows leaves about ``e⁻⁶`` of its rows empty (3.6 of 1439 rows from
    2877), and so is rank deficient itself.
    """
    z = max(_INNER_Z, _C * lower + 1)
    full = True  # the last sketch had full rank (or none was taken): M may well have too
    for attempt in itertools.count():
        if 2 * z > min(M.shape):
            if enough is not None and enough < M.shape[0] and enough <= M.shape[1]:
                Me = _sketch_rows(M, enough, derive_seed(seed, 2 * attempt), xp, _ENOUGH_NNZ)
                if proves_full_rank(Me, scale_dims, xp)[0]:
                    return enough
            return matrix_rank(M, scale_dims, xp, certify=full)
        Mz = M
        if z < M.shape[0]:
            Mz = _sketch_rows(Mz, z, derive_seed(seed, 2 * attempt), xp)
        if z < M.shape[1]:
            Mz = _sketch_rows(Mz.T, z, derive_seed(seed, 2 * attempt + 1), xp).T
        k = matrix_rank(Mz, scale_dims, xp, certify=full)
        if k < z / _C or (enough is not None and k >= enough):
            return k
        full = k == min(Mz.shape)
        z = _next_size(z, k)


def _next_size(z, k):
    """The next sketch size after a sketch of size z whose rank k (a lower bound on the
    rank sought) could not certify itself: double z, and at least ``c·k + 1``, the
    smallest size at which rank k could (4z when the sketch came out of full rank z)."""
    return max(2 * z, _C * k + 1)


def rank(A, *, seed=None):
    """Numerical rank of A by Algorithm 3 (RANK) of Chepurko et al.

    Parameters
    ----------
    A : (n, d) array or sparse matrix
    seed : int, optional

    Returns
    -------
    int

    Notes
    -----
    With ``z = ⌈c·(nnz(A)/ln n)^{1/2}⌉`` (c = 2), A is sketched on both sides
    by rank-preserving sketches (Theorem 7.7; 3 nonzeros per column with
    random values, see ``_rank_preserving``) to ``S A Rᵀ`` of size at most ``z × z``; a side
    shorter than z is left unsketched.  If the sketch's rank ``k₁ < z/c``
    (or ``k₁ = min(n, d)``, which no rank can exceed) it is returned.
    Otherwise the paper computes the rank of A itself; here z doubles (fresh
    sketches) until the sketch certifies itself or covers A, so a rank-k A
    costs ``O(k³)`` on a sketch of at most ``4k × 4k`` rather than an SVD of
    all of A (a 2000 × 100000 CSR matrix of full row rank: 43 s before, 3 s
    after).  The rank of each sketch is itself found adaptively, as the
    paper's CKL-RE does, by sketching it again (``_sketch_rank``): a dense A
    of rank k ≪ z costs one pass over A and SVDs of at most ``4k × 4k``,
    not the ``z³`` of the sketch's SVD.  A matrix whose rank is taken that
    a QR proves of full rank skips its SVD (``matrix_rank``): at full rank,
    rank 4.0-4.3 s against 8.0-8.3 s for a dense 4000 × 3000 A, 2.4-2.5 s
    against 7.9-8.4 s for 20000 × 3000 (2-core CPU, A/B in one run; ranks
    well below z unchanged).  A sketch of both of A's sides whose rank is
    z/c or more certifies nothing, and the next size is 2z whatever its rank:
    there a z/c-row sketch of it proved of full rank ends the step
    (``_sketch_rank``'s ``enough``).  Where no proof of full rank succeeds, a
    pivoted QR decides on the host (``matrix_rank``).  Both together, A/B in
    one run: a 6000 × 3000 A of rank 2500 10.5 → 4.7-4.9 s (NumPy's
    ``matrix_rank`` 5.1-5.2 s), of rank 1000 3.9 → 2.4 s, 4000 × 3000 of
    rank 2900 7.9 → 4.5 s, at full rank 4.0-4.1 → 1.9-2.2 s (its 2406 × 2406
    first sketch, of rank 2341, no longer factored).  A sketch, or the dense copy of a
    sparse A, that cannot fit in memory raises ``MemoryError`` naming its
    size.  The tolerance
    rule, on the sketch and on A alike, counts singular values above
    ``σ₁ · max(n, d) · ε`` — NumPy's ``matrix_rank`` rule with the dimensions
    of A, so that sketching does not change what counts as zero.  The paper
    uses exact-arithmetic rank (CKL); numerically this is the rank at that
    relative tolerance.

    Examples
    --------
    >>> import numpy as np, gpusketch
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((400, 7)) @ rng.standard_normal((7, 60))
    >>> gpusketch.rank(A, seed=1)
    7
    """
    with annotate("gpusketch.rank"):
        A, xp = as_matrix(A, allow_empty=True)
        seed = check_seed(seed)
        nnz = A.nnz if is_sparse(A) else A.shape[0] * A.shape[1]
        return sketched_rank(A.shape, nnz, lambda z, s: _sketch_rows(A, z, s, xp), lambda: A, seed, xp)


def sketched_rank(shape, nnz, sketch_rows, whole, seed, xp):
    """``rank``'s loop for an n × d A given by ``sketch_rows(z, seed)`` (``S A`` for the
    rank-preserving S of ``_sketch_rows`` with that seed) and ``whole()`` (A itself,
    where z reaches n), with nnz(A) (n d for a dense A)."""
    n, d = shape
    if nnz == 0:
        return 0
    z = int(math.ceil(_C * math.sqrt(nnz / math.log(max(n, d, 3)))))
    lower = 0
    for attempt in itertools.count():
        M = sketch_rows(z, derive_seed(seed, 2 * attempt)) if z < n else whole()
        if z < d:
            M = _sketch_rows(M.T, z, derive_seed(seed, 2 * attempt + 1), xp).T
        elif z >= n and is_sparse(M):  # A itself, densified below
            check_memory(n * d * 8, f"rank(A): a dense copy of the sparse {n} x {d} A", xp)
        # With both of A's sides sketched, a rank of z/c or more is only a lower bound, and
        # the next size is 2z whatever it is: the sketch's exact rank is not needed then.
        enough = math.ceil(z / _C) if min(M.shape) < min(n, d) else None
        k1 = _sketch_rank(to_dense(M), (n, d), derive_seed(seed, 2 * attempt + 1_000_000), xp, lower, enough)
        lower = k1  # a sketch's rank (or the lower bound returned) is a lower bound on A's
        # The sketch's rank never exceeds A's, so k1 = min(n, d) is final as well.
        if k1 < z / _C or k1 == min(n, d) or (z >= n and z >= d):
            return k1
        # A sketch of c·min(n, d) + 1 rows certifies any rank: never sketch to more.
        z = min(_next_size(z, k1), _C * min(n, d) + 1)


def independent_rows(A, *, seed=None):
    """Indices of rank(A) linearly independent rows of A spanning its row space.

    Parameters
    ----------
    A : (n, d) array or sparse matrix
    seed : int, optional

    Returns
    -------
    index array (sorted), on the device of A

    Notes
    -----
    Algorithm 5 (INDEPENDENTROWS) in its practical form: k = rank(A); the
    columns are reduced by a rank-preserving sketch (as in ``rank``) to ``B = A Rᵀ`` with
    ``min(d, 2k + 10)`` columns (row dependencies are kept w.h.p.); rows are
    drawn by leverage-score sampling of B (Algorithm 2, ``s = 4k ln k + 20``);
    the pivot rows of an LU with partial pivoting of those rows, cut to k
    independent columns (``_pivot_rows``, on the host: CuPy's LU is square
    only), are k independent ones, checked by the rank rule.  As in
    the proof of Theorem 7.12, rows M with ``B_M = A_M Rᵀ`` of rank k are
    independent rows of A, so A's rows (of length d) are never factored: on
    a 200000 × 200000 CSR matrix of rank 40 (2·10⁶ nonzeros) the pivoted QR
    of the sampled rows of A took 27 of the call's 28 s.  The paper's final
    step, a column-pivoted QR of the sampled rows (BLAS-2 bound, and its R
    is s × k'), took 97 of 104 s on a 10⁶ × 2000 CSR matrix of full
    column rank (s = 60800); with the LU the call takes 17 s against 110 s
    (2-core CPU; 4000 × 3000 dense: 13 s against 20 s, and 5.8-6.3 s since
    ``rank`` and the final check skip the SVDs a QR proves unneeded).
    Before all s candidates, the 2k of largest keep probability (random ones
    when every row is a candidate) are factored alone, and their pivot rows
    kept when a QR proves them independent (``_first_rows``): the LU's
    ``s k²`` becomes ``2k³``.  A/B in one run (2-core CPU): the 100000 × 2000
    CSR matrix of rank 1952, 19.5-19.7 s before both steps, 18.2 s with the
    QR proofs alone, 12.0-12.6 s with both; 20000 × 3000 dense 15.4-15.8 s,
    6.7 s, 3.9-4.1 s.  Where the 2k rows do not span, the call pays that extra LU and
    QR (2k³ and about k³ flops) and factors all candidates.
    Algorithm 4's repeated ROWREDUCTION (which only shrinks n before this
    step) is not needed for correctness and is omitted.  If the sample
    misses part of the row space, s is doubled (at most 4 tries, or until
    every row is a candidate) before falling back to a pivoted QR of all
    rows of A (which holds even where the column sketch lost rank).

    Examples
    --------
    >>> import numpy as np, gpusketch
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((300, 4)) @ rng.standard_normal((4, 30))
    >>> rows = gpusketch.independent_rows(A, seed=1)
    >>> len(rows), int(np.linalg.matrix_rank(A[rows]))
    (4, 4)
    """
    with annotate("gpusketch.independent_rows"):
        A, xp = as_matrix(A, allow_empty=True)
        seed = check_seed(seed)
        k = rank(A, seed=derive_seed(seed, 0))
        if k == 0:
            return xp.zeros(0, dtype=xp.int64)
        B = A
        if 2 * k + 10 < A.shape[1]:
            B = to_dense(_sketch_rows(A.T, 2 * k + 10, derive_seed(seed, 1), xp).T)
        return sampled_independent_rows(A.shape, k, lambda s, sd: leverage_sample(B, s, seed=sd),
                                        lambda cand: B if cand is None else B[xp.asarray(cand)], lambda: A, seed, xp)


def sampled_independent_rows(shape, k, sample, rows_of_B, whole, seed, xp):
    """``independent_rows``' loop for an n × d A of rank k, given B (A itself, or A's columns
    sketched to ``2k + 10``) by ``sample(s, seed)`` (``leverage_sample(B, s, seed=seed)``) and
    ``rows_of_B(cand)`` (B's rows cand; all of B for None), and A by ``whole()`` for the
    final pivoted QR that decides when four samples do not."""
    import scipy.linalg

    n, d = shape
    s = int(4 * k * math.log(max(k, 2))) + 20
    for attempt in range(4):
        if s >= n:
            cand, keep = np.arange(n), None
        else:
            S = sample(s, derive_seed(seed, 2 + attempt))
            cand, at = np.unique(to_host(S.indices), return_index=True)
            keep = 1.0 / to_host(S.scale)[at] ** 2  # the keep probabilities f_i: scale = 1/√f_i
        sub = rows_of_B(None if s >= n else cand)  # Theorem 7.12: B's rows stand for A's
        first = _first_rows(keep, k, cand.size, derive_seed(seed, 20 + attempt), xp)
        picked = _pivot_rows(sub, k, (n, d), derive_seed(seed, 10 + attempt), xp, first)
        if picked is not None:
            return xp.asarray(np.sort(cand[picked]))
        if s >= n:  # every row was a candidate: B lost rank, not the sample
            break
        s *= 2
    Ad = to_host(to_dense(whole()))
    with scipy_blas_threaded():  # (only the pivots: no Q)
        piv = scipy.linalg.qr(Ad.T, mode="r", pivoting=True, check_finite=False)[1]
    return xp.asarray(np.sort(piv[:k]))
