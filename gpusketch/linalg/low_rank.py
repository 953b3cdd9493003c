"""(1+ε) rank-k approximation in input-sparsity time (Chepurko et al. Theorem 7.13, Lemma 7.16)."""

from __future__ import annotations

import math
import time

from .. import _kernels
from .._backend import as_matrix, check_positive_int, check_real_in, check_seed, is_sparse, sparse_module, to_dense
from .._nvtx import annotate
from .._random import derive_seed
from ..operators import CountSketch, row_reduction
from ._numerics import full_rank_inverse, gram_svd, orthonormalize, svd_rank, top_left_singular
from .leverage import sample_operator
from .results import LowRankResult
from .svd import randomized_svd

__all__ = ["low_rank"]


def _orth(M, xp):
    return orthonormalize(M, xp)[0]


def _col_sq_norms(A, xp):
    if is_sparse(A):
        return xp.asarray((A.multiply(A)).sum(axis=0)).ravel()
    return xp.einsum("ij,ij->j", A, A)  # no n × d temporary (5000 × 1000: 2.4 ms against 9-50)


def _hashed_columns(A, T, xp):
    """``A Tᵀ`` for a sparse A and a CountSketch T, kept sparse (at most nnz(A) entries).

    Column j of A is added, with sign σ(j), to column h(j): ``A @ T.T`` would
    return it dense, n × t (5 GB for a 400000 × 2000 CSR A at k = 20, t = 1600).
    """
    buckets, signs = T.hashes(xp)
    d = A.shape[1]
    H = sparse_module(xp).csr_matrix(
        (signs.ravel().astype(A.dtype), buckets.ravel(), xp.arange(d + 1)), shape=(d, T.shape[0]))
    return (A @ H).tocsr()


def right_sample_size(k, eps):
    """Rows of the right factor's leverage sample: ``⌈4k·max(2, ln(k+1))/ε⌉``, ``O(k log k / ε)``.

    The sketched X has ``E||A − VX||² ≈ (1 + k/s)||A − VVᵀA||²`` (measured
    mean excess k/s), with heavy tails when s is small: rows of small
    leverage come with weights ``1/f_i``.  ``4k ln(k+1)/ε`` gave k = 1 only
    6 rows at ε = 0.5; the excess then reached 1.6 over 60 seeds (2.1 for
    k = 2 with 18 rows), and some samples held no row.  With the floor 2 on
    the log factor (it acts for k <= 6) the largest excess over 60 seeds was
    0.52 at ε = 0.5 and 0.23 at ε = 0.1 (k = 1, 2, 3; three 2000 × 500
    matrices), and 0.17 / 0.024 at k = 10, where the size is unchanged
    (figures from sampling by leverage alone, before ``_sketched_right_factor``
    mixed in uniform).
    """
    return int(math.ceil(4 * k * max(2.0, math.log(k + 1)) / eps))


def _sketched_right_factor(A, V, k, eps, seed, xp, info):
    """``argmin_X ||S(VX − A)||_F`` for a sample S of V's rows, or None.

    Row i is kept with probability ``f_i = min(1, s (ℓ_i/(2k) + 1/(2n)))``,
    half its leverage ``ℓ_i = ||V_i||²`` (exact: V is orthonormal, so the
    scores cost one pass over V) and half uniform, and scaled by ``1/√f_i``.
    Deviation: the paper samples by leverage alone.  The leverage half keeps
    Lemma 7.2's embedding of V at twice the sample; the uniform half bounds
    every weight ``1/f_i`` by ``2n/s``.  By leverage alone, a row of tiny
    leverage that was drawn entered with a weight of 8·10⁴ to 6·10⁵ (the three
    failing seeds of ``test_low_rank_right_factor_with_planted_heavy_rows``,
    each with 3 rows sampled), and its residual moved X: on A with k planted
    heavy rows and 0.01-noise elsewhere (about 1100 cases, k = 1..9) the
    sample held about k + 1 rows and
    ``||A − VX||`` was p99 1.34, max 2.29 times the optimum (the best X for the
    same V: 1.00-1.09); with the mix p99 1.065, max 1.11.  On 700 matrices of
    varied spectra: mean 1.0168 → 1.0150, max 1.139 → 1.081, with 10-40 %
    more sampled rows.

    A sample whose ``SV`` has rank below k (no rows, or too few distinct
    ones) cannot determine X: the sample size is doubled with a fresh seed, at
    most four times; None then asks the caller for the exact ``VᵀA``.
    """
    n = V.shape[0]
    p = 0.5 * xp.einsum("ij,ij->i", V, V) / k + 0.5 / n
    s = right_sample_size(k, eps)
    for attempt in range(4):
        f = xp.minimum(1.0, s * p)
        idx = xp.flatnonzero(_kernels.uniforms(n, derive_seed(seed, 4 if attempt == 0 else 5 + attempt), xp) < f)
        if idx.size >= k:
            S = sample_operator(idx, f[idx], n, xp)
            X = right_from_sample(S @ V, lambda: to_dense(S @ A), k, xp)
            if X is not None:
                info["right_rows"] = int(idx.size)
                return X
        s *= 2
    return None


def right_from_sample(SV, sampled_A, k, xp):
    """``argmin_X ||SV X − SA||_F`` (SA from ``sampled_A()``, read only when needed), or None
    when SV has rank below k.

    The SVD that decides SV's rank also solves: ``X = Z Σ⁻¹ Wᵀ (SA)`` for
    ``SV = W Σ Zᵀ``, one GEMM over SA's d columns (the least-squares solution
    lstsq would give, whose SVD-based driver took 0.75 of a 5.6 s call at
    d = 5000 on the 2-core CPU).
    """
    W, sv, Zt = xp.linalg.svd(SV, full_matrices=False)
    if svd_rank(sv, SV.shape) < k:
        return None
    return Zt.T @ ((W.T @ sampled_A()) / sv[:, None])


def check_low_rank(shape, k, eps, right):
    """``low_rank``'s ``(k, eps)`` validated for an A of this shape, and ``right``."""
    k = check_positive_int(k, "k")
    if k >= min(shape):
        raise ValueError(f"k must be < min(n, d) = {min(shape)}, got k={k}")
    eps = check_real_in(eps, "eps", 0, 1, closed="()")
    if right not in ("sketch", "exact"):
        raise ValueError(f"right must be 'sketch' or 'exact', got {right!r}")
    return k, eps


def column_sketch(d, k, seed):
    """Step 1's CountSketch T of ``t = min(d, 4k²)`` columns (None when t = d: AT is A)."""
    t = min(d, 4 * k * k)
    return None if t == d else CountSketch(t, d, seed=derive_seed(seed, 0))


def row_embedding(n, t, seed):
    """Step 1's OSNAP of ``min(n, 4t + 10)`` rows for ``SAT`` (the identity from n on)."""
    return row_reduction("sparse_sign", min(n, 4 * t + 10), n, seed=derive_seed(seed, 1))


def chosen_columns(SAT, k, seed, xp):
    """Step 2: the 2k columns of SAT of largest leverage in its top-k right singular space
    (only k singular vectors are needed: a randomized SVD once SAT is much wider than k)."""
    t = SAT.shape[1]
    if t > 4 * (k + 10):
        _, _, Vt = randomized_svd(SAT, k, power_iters=2, seed=derive_seed(seed, 5))
    else:
        _, _, Vt = xp.linalg.svd(SAT, full_matrices=False)
    lev = (Vt[:k] ** 2).sum(axis=0)
    return xp.argsort(-lev)[: min(t, 2 * k)]


def _constant_factor_subspace(A, k, seed, xp):
    """Steps 1-2 of ``low_rank``: an orthonormal U (n × 2k) with ``||A − UUᵀA||_F = O(1) · opt_k``.

    Returns ``(U, t, ms, c)``: t the CountSketch columns, ms the OSNAP rows
    and c the number of columns of ``SAT`` chosen.
    """
    n, d = A.shape
    # 1. Projection-cost-preserving column sketch and a row embedding of it.
    T = column_sketch(d, k, seed)
    if T is None:
        AT = A
    elif is_sparse(A):
        AT = _hashed_columns(A, T, xp)
    else:
        AT = to_dense(A @ T.T)
    t = AT.shape[1]
    S = row_embedding(n, t, seed)
    ms = S.shape[0]
    SAT = to_dense(S @ AT)
    omega = chosen_columns(SAT, k, seed, xp)
    if is_sparse(AT):  # the chosen columns only, as a product with a 0/1 selection
        pick = sparse_module(xp).csc_matrix(
            (xp.ones(omega.size, dtype=AT.dtype), omega, xp.arange(omega.size + 1)), shape=(t, omega.size))
        chosen = to_dense(AT @ pick)
    else:
        chosen = AT[:, omega]
    return _orth(chosen, xp), t, ms, int(omega.size)


def low_rank(A, k, *, eps=0.1, right="sketch", seed=None):
    """Rank-k approximation ``A ≈ V X`` with ``||A − VX||_F² <= (1+O(ε)) ||A − [A]_k||_F²``.

    Parameters
    ----------
    A : (n, d) array or sparse matrix
    k : int
        Target rank, ``1 <= k < min(n, d)``.
    eps : float in (0, 1)
        Accuracy: the residual sample has ``⌈4k/ε⌉`` columns in expectation.
    right : {"sketch", "exact"}
        How X is found given V: ``"sketch"`` solves ``min_X ||S(VX − A)||_F``
        with a sample S of ``O(k log k / ε)`` rows of V, half by leverage and
        half uniform (``right_sample_size``, ``_sketched_right_factor``; reads
        only those rows of A, and falls back to ``VᵀA`` if four samples fail
        to determine X); ``"exact"`` takes ``X = VᵀA`` (one more pass over A,
        the optimal X for V).
    seed : int, optional

    Returns
    -------
    LowRankResult
        ``.V`` (n × k, orthonormal columns), ``.X`` (k × d), ``.info``.

    Notes
    -----
    Left factor (Lemma 7.16):

    1. ``AT`` with a CountSketch T of ``t = min(d, 4k²)`` columns (a
       projection-cost-preserving sketch) and ``SAT`` with an OSNAP S of
       ``min(n, 4t + 10)`` rows (a subspace embedding for AT);
    2. an O(k)-column subset Ω of SAT — here the ``2k`` columns of largest
       leverage with respect to the top-k right singular space of SAT (a
       practical stand-in for Boutsidis–Woodruff's CUR selection; both give
       an O(1)-approximate subspace ``U = orth(AT Ω)``).  When SAT has more
       than ``4(k + 10)`` columns that space comes from ``randomized_svd``
       (two power iterations), ``O(nnz(SAT) k)`` instead of a full SVD's
       ``O(ms t²)``: the selection needs a good k-space, not an exact one;
    3. residual sampling of columns of A (Lemma 7.15) with probabilities
       ``∝ ||(I − UUᵀ)A_j||²`` — computed exactly as ``||A_j||² − ||UᵀA_j||²``
       (one GEMM pass) rather than by Lemma 7.3's Gaussian estimates; a
       difference below ``8·2k·ε_mach·||A_j||²`` is round-off and counts as 0;
    4. ``M = [U, A_{S_res}]`` and the affine-embedding solve
       ``min_{rank-k X} ||T₁(MX − A)||_F`` with an OSNAP T₁ of ``4c + 10``
       rows (c the columns of M); V is an orthonormal basis of ``M X₁``.
       When no residual column is drawn (A lies in span(U): ``d <= 2k`` or
       ``rank(A) <= 2k``), the exact ``UᵀA`` of step 3 gives V directly:
       U times the top-k left singular vectors of ``UᵀA``.  T₁'s distortion
       decides among directions of close singular values, and there it had
       a squared error up to 1.60 times the optimum (5000 × 20 matrices with
       one nonzero per column, k = 19, 10) and 1.109 (800 × 50 of slowly
       decaying spectrum, k = 30, ε = 0.1).  Rows of T₁ growing as 1/ε
       (``max(4, 1/(2ε))·c + 10``) were tried on top: over 60 matrices of
       varied spectra at ε = 0.1 the squared error went from mean 1.0086,
       max 1.042 to 1.0080, 1.036, within what the draws vary, at up to
       1.07x the time, and were not kept.
       Only sketches of M are factored: ``T₁M = [T₁U, (T₁A)_{S_res}]``
       reuses ``T₁A``, and with ``T₁M = QC RC``, ``RC = W Σ Zᵀ``, the solve
       takes the top-k left singular space ``U_k`` of ``WᵀQCᵀ T₁A`` (from the
       float64 ``eigh`` of its Gram, ``top_left_singular``) and
       ``X₁ = Z Σ⁻¹ U_k``, leaving out directions of M below the rank rule
       (duplicated columns, columns already in span(U)).  Where ``RC⁻¹``'s
       norm proves T₁M of full rank by that rule (``full_rank_inverse``,
       ``matrix_rank``'s proof; never in float32 once ``2c·max(n, c)·ε₃₂ >= 1``),
       nothing is left out and ``X₁ = RC⁻¹ U_k`` with ``U_k`` from
       ``QCᵀT₁A`` itself: the same solve without the SVD of RC (c × c;
       20000 × 3000 fp64, k = 100: 3.8 → 3.3-3.4 s on the 2-core CPU).
       Otherwise a float32 RC's SVD comes from the eigenvalues of its
       float64 Gram (``gram_svd``: the float32 rule's cut lies far above the
       Gram's round-off), not from a float32 SVD.
       ``M X₁ = U X₁' + A_{S_res} X₁''`` is the only product over n rows: M itself, n × c and
       most of A's columns at small ε, is never formed (its CholeskyQR2 took
       13 of 20 s on a 400000 × 2000 CSR matrix, k = 20, ε = 0.1).

    Right factor: Section 7.4.3 refines X with BSS sampling and a second
    residual sample; ``right="sketch"`` keeps its first step (sampling of
    V's rows, by leverage mixed with uniform, and a sketched regression),
    ``right="exact"`` computes the optimal ``VᵀA``.  Deviation: the BSS
    step's input ``S_lev(I − VVᵀ)AT`` needs ``Vᵀ(AT)`` over all n rows, and
    the residual sample a pass ``AU``: passes over A that cost about what
    ``VᵀA`` does, which is already the optimal X; the sample alone reads
    only its ``O(k log k / ε)`` rows of A.

    Examples
    --------
    >>> import numpy as np, gpusketch
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 300)) + 1e-3 * rng.standard_normal((500, 300))
    >>> res = gpusketch.low_rank(A, 6, seed=1)
    >>> res.V.shape, res.X.shape
    ((500, 6), (6, 300))
    >>> s = np.linalg.svd(A, compute_uv=False)
    >>> bool(np.linalg.norm(A - res.V @ res.X) <= 1.1 * np.sqrt((s[6:] ** 2).sum()))
    True
    """
    with annotate("gpusketch.low_rank"):
        A, xp = as_matrix(A)
        n, d = A.shape
        k, eps = check_low_rank(A.shape, k, eps, right)
        seed = check_seed(seed)
        info = {"seed": seed, "timings": {}}
        t0 = time.perf_counter()
        U, t, ms, chosen = _constant_factor_subspace(A, k, seed, xp)
        # 3. Residual sampling of columns (Lemma 7.15).
        UtA = to_dense(A.T @ U).T  # (c, d): one pass over A
        colsq = _col_sq_norms(A, xp)
        cols = residual_columns(colsq, UtA, k, eps, seed, xp)
        if cols.size == 0:
            # A lies in span(U) (d <= 2k, or rank(A) <= 2k): UᵀA, exact and at hand, gives the
            # best rank-k approximation itself, where the sketched solve below would choose
            # among A's directions through T1's distortion (squared error up to 1.6x the
            # optimum on 5000 × 20 A with one nonzero per column, k = 19).
            V = U @ top_left_singular(UtA, k, xp)
            info["timings"]["left_s"] = time.perf_counter() - t0
            info.update({"t": t, "sketch_rows": ms, "omega": chosen, "residual_columns": 0, "affine_rows": 0})
            return _with_right_factor(A, V, k, eps, right, seed, xp, info)
        # 4. Affine embedding: min_{rank-k X} ||T1 M X - T1 A||_F for M = [U  A_cols], solved on
        # the sketch.  T1 M = [T1 U  (T1 A)_cols], so M (n × c, most of A's columns at small ε)
        # is never formed or factored; only the final product M X touches n rows.
        T1 = affine_sketch(n, U.shape[1] + int(cols.size), seed)
        m1 = T1.shape[0]
        T1A, T1U = T1.matmul_each(A, U)  # T1's hashes once for both
        coef_u, coef_a = affine_coefficients(to_dense(T1A), T1U, colsq, cols, n, k, xp)
        V = _orth(U @ coef_u + to_dense(A[:, cols] @ coef_a), xp)
        info["timings"]["left_s"] = time.perf_counter() - t0
        info.update({"t": t, "sketch_rows": ms, "omega": chosen, "residual_columns": int(cols.size),
                     "affine_rows": m1})
        return _with_right_factor(A, V, k, eps, right, seed, xp, info)


def residual_columns(colsq, UtA, k, eps, seed, xp):
    """Step 3 (Lemma 7.15): the columns of A drawn with probabilities
    ``min(1, s r_j / Σ r)``, ``s = ⌈4k/ε⌉``, for ``r_j = ||A_j||² − ||UᵀA_j||²``, sorted."""
    resid = colsq - (UtA * UtA).sum(axis=0)
    # The difference cancels: a residual within round-off of its column's norm is zero, so a
    # column already in span(U) (every column when d <= 2k) is never drawn on noise alone.
    noise = 8 * UtA.shape[0] * float(xp.finfo(resid.dtype).eps)
    resid = xp.where(resid > noise * colsq, resid, 0.0)
    total = float(resid.sum())
    if not total > 0:  # A lies in span(U) already
        return xp.zeros(0, dtype=xp.int64)
    q = xp.minimum(1.0, int(math.ceil(4 * k / eps)) * resid / total)
    return xp.flatnonzero(_kernels.uniforms(colsq.size, derive_seed(seed, 2), xp) < q)


def affine_sketch(n, c, seed):
    """Step 4's OSNAP T₁ of ``min(n, 4c + 10)`` rows, for M of c columns."""
    return row_reduction("sparse_sign", min(n, 4 * c + 10), n, seed=derive_seed(seed, 3))


def affine_coefficients(T1A, T1U, colsq, cols, n, k, xp):
    """Step 4's solve on the sketches: ``(C_U, C_A)`` with ``M X₁ = U C_U + A_{cols} C_A``.

    ``X₁`` minimises ``||T₁ M X − T₁ A||_F`` over rank-k X for
    ``M = [U, A_cols]`` (A with n rows), ``T₁ M = [T₁U, (T₁A)_cols]``; see
    ``low_rank``'s Notes.
    """
    c = T1U.shape[1] + int(cols.size)
    # A's columns enter M at unit norm, as U's do: span(M) is unchanged, and the rank rule
    # below then sees M's dependencies, not the scale of A (at |A| ~ 1e20 it cut every
    # direction of U, and the cost rose 1.2-2000-fold).
    unit = (1.0 / xp.sqrt(colsq[cols])).astype(T1A.dtype)
    QC, RC = orthonormalize(xp.concatenate([T1U, T1A[:, cols] * unit], axis=1), xp)
    RCinv = full_rank_inverse(RC, (n, c), xp)
    if RCinv is not None:
        # T1 M = QC RC of full rank by the rank rule (proved by RC⁻¹'s norm): the best
        # rank-k QC RC X is QC Uk UkᵀQCᵀ T1A, so X = RC⁻¹ Uk (Uk the top-k left singular
        # space of QCᵀ T1A) and no SVD of RC is needed (c × c; on a GPU cuSOLVER's
        # slowest routine).
        coef = RCinv @ top_left_singular(QC.T @ T1A, k, xp)
    else:
        # T1 M = (QC W) diag(σ) Zᵀ with RC = W diag(σ) Zᵀ; directions below the rank rule
        # (M's columns dependent: duplicated or already in span(U)) are left out of the solve.
        svd = gram_svd(RC, (n, c), xp)  # float32: from the float64 Gram's eigh
        W, sig, Zt = svd if svd is not None else xp.linalg.svd(RC, full_matrices=False)
        keep = xp.arange(sig.size) < svd_rank(sig, (n, c))
        Uk = top_left_singular((W.T @ (QC.T @ T1A)) * keep[:, None], k, xp)
        coef = Zt.T @ (Uk * (keep / xp.where(keep, sig, 1.0))[:, None].astype(Uk.dtype))
    u = T1U.shape[1]
    return coef[:u], coef[u:] * unit[:, None]


def _with_right_factor(A, V, k, eps, right, seed, xp, info):
    """``low_rank``'s result for the left factor V: X sketched (or exact), and the timing."""
    t0 = time.perf_counter()
    X = _sketched_right_factor(A, V, k, eps, seed, xp, info) if right == "sketch" else None
    if X is None:
        X = to_dense(A.T @ V).T
    info["timings"]["right_s"] = time.perf_counter() - t0
    return LowRankResult(V, X, info)
