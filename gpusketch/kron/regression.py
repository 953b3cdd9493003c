"""Kronecker-product regression ``min_x ||(A_1 ⊗ ... ⊗ A_q) x − b||_p`` (Diao et al. 2019)."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from .. import _kernels
from .._backend import (
    array_namespace,
    as_operand,
    check_dtype,
    check_finite,
    check_memory,
    check_real_in,
    check_seed,
    is_sparse,
    linalg_modules,
    sparse_module,
    to_dense,
    to_host,
)
from .._nvtx import annotate
from .._random import derive_seed
from ..linalg._numerics import svd_rank, unit_column_scales
from ..linalg._precondition import SketchPreconditioner
from ..linalg.leverage import embedding_rows
from ..linalg.lstsq import RankDeficientWarning
from ..linalg.results import LstsqResult
from ..operators import CountSketch, Kronecker, SparseSign, row_reduction
from ..robust.lewis import lewis_weights
from ..robust.lp import solve_lp_small
from ..robust.results import RobustResult
from ._sampling import categorical, merge, product_sample
from .matrix import KroneckerMatrix, as_kronecker

__all__ = ["lstsq", "lp_regression"]

_L2_METHODS = ("sampling", "sketch", "exact")
_RESIDUALS = ("exact", "bound")


def _lookup(keys, values, query, xp):
    """``values[j]`` where ``keys[j] == query`` (keys sorted), 0 where the query is absent."""
    if keys.size == 0:
        return xp.zeros(query.shape, dtype=values.dtype)
    pos = xp.minimum(xp.searchsorted(keys, query), keys.size - 1)
    return xp.where(keys[pos] == query, values[pos], 0)


class _Target:
    """The right-hand side b: a dense vector or matrix, or a sparse vector.

    Sparse b (SciPy/cupyx, shape ``(N, 1)`` or ``(1, N)``, or a 1-D SciPy
    sparse array of shape ``(N,)``) is kept as sorted nonzero indices and
    values, so that the sampling solvers read it in ``O(nnz(b))`` and look up
    sampled entries by binary search.  Integer and boolean values are upcast
    to float64, as for dense b.
    """

    def __init__(self, b, N, xp):
        self.xp = xp
        if is_sparse(b):
            if b.shape not in ((N,), (N, 1), (1, N)):
                raise ValueError(f"sparse b must have shape ({N},), ({N}, 1) or (1, {N}), got {tuple(b.shape)}")
            dtype = check_dtype(b.dtype, "b")
            check_finite(b, "b")
            coo = b.tocoo(copy=True)
            coo.sum_duplicates()  # a COO b may repeat an index; its values add
            idx = coo.coords[0] if b.ndim == 1 else (coo.row if b.shape[1] == 1 else coo.col)
            order = xp.argsort(idx)
            self.nz_idx = idx[order].astype(xp.int64)
            self.nz_val = coo.data[order].astype(dtype, copy=False)
            self.dense = None
            self.shape = (N,)
            self.dtype = dtype
            return
        b, _ = as_operand(b, "b", ndim=(1, 2))
        if b.shape[0] != N:
            raise ValueError(f"b has {b.shape[0]} rows but the Kronecker product has {N}")
        check_finite(b, "b")
        self.dense, self.shape, self.dtype = b, tuple(b.shape), b.dtype
        self.nz_idx = self.nz_val = None

    def full(self):
        if self.dense is not None:
            return self.dense
        out = self.xp.zeros(self.shape, dtype=self.dtype)
        out[self.nz_idx] = self.nz_val
        return out

    def at(self, idx):
        if self.dense is not None:
            return self.dense[idx]
        return _lookup(self.nz_idx, self.nz_val, idx, self.xp).astype(self.dtype)

    def rows(self, a, b):
        """Entries ``a:b`` of b, dense (a view for a dense b)."""
        if self.dense is not None:
            return self.dense[a:b]
        out = self.xp.zeros((b - a,) + self.shape[1:], dtype=self.dtype)
        lo, hi = (int(i) for i in self.xp.searchsorted(self.nz_idx, self.xp.asarray([a, b])))
        out[self.nz_idx[lo:hi] - a] = self.nz_val[lo:hi]
        return out

    def lp_mass(self, p):
        """Nonzero indices of b and ``|b_i|^p`` (O(nnz(b)))."""
        if self.dense is not None:
            idx = self.xp.flatnonzero(self.dense)
            return idx, self.xp.abs(self.dense[idx]) ** p
        return self.nz_idx, self.xp.abs(self.nz_val) ** p


def _setup(factors, b, seed):
    K = as_kronecker(factors)
    xp = K.xp
    array_namespace(b.data if is_sparse(b) else b, K.factors[0])  # one device for b and the factors
    tgt = _Target(b, K.shape[0], xp)
    return K, tgt, xp, check_seed(seed)


def _zero_design(K):
    """True when a factor is all zero, so A = 0 and x = 0 is the (minimum-norm) optimum."""
    return any(not bool(K.xp.any(F.data if is_sparse(F) else F)) for F in K.factors)


def _zeros_like_solution(K, tgt):
    return K.xp.zeros((K.shape[1],) + tuple(tgt.shape[1:]), dtype=K.dtype)


def _check_m(m, D, N, default, xp):
    m = default if m is None else m
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}")
    if m <= D and m < N:  # from m >= N on the callers solve on all rows (a square A: N = D)
        raise ValueError(f"m must exceed the number of unknowns ∏ d_t = {D}, got m={m}")
    # The draws, their factor indices and probabilities, and merge()'s sort: ~64 bytes a draw.
    check_memory(64 * int(m), f"sampling m={m} rows", xp)
    return int(m)


def _default_m(D, N):
    """Default sample size of ``lstsq`` and ``lp_regression``: ``min(N, max(⌈10 D ln D⌉, 10 D + 200))``.

    ``10 D ln D`` draws give the subspace embedding, but at small D they are
    few (7 at D = 1, 14 at D = 2), and the sampled residual is then what
    fails: on factor pairs of 30-200 rows with D = 1-9, Gaussian or t(1.5),
    half with 1 % of b scaled by 100, ``lstsq`` at D = 2 had cost ratio p99
    1.75 and max 9.0 (2714 cases), ``lp_regression`` (p = 1) at D = 2 max
    1.48 (72 cases; 19.5 on smaller factors).  With the floor: p99 1.04,
    max 1.18; ℓ1 max 1.016.  From D = 13 on, ``10 D ln D`` is the larger.
    """
    return min(N, max(math.ceil(10 * D * math.log(max(D, 2))), 10 * D + 200))


def _factor_basis(F, seed):
    """``(B, P, r)``: a well-conditioned basis ``B = F P`` of range(F), its preconditioner P,
    and ``r = rank(F)``.

    Short factors (``n <= 8(4d + 10)``) use F itself, so B is orthonormal and
    its squared row norms are the exact leverage scores; longer factors use
    an OSNAP sketch of ``4d + 10`` rows (``κ(B) = O(1)``, Lemma 7.2 of
    Chepurko et al.), costing ``O(nnz(F))``.  Rank-deficient factors get
    ``P = V_r Σ_r⁻¹`` (``SketchPreconditioner``).  A sketch that comes out
    rank deficient may have merged directions of a full-rank F, and ``B``
    would then miss part of range(F) (x confined to the sketch's row space,
    as in ``gpusketch.lstsq``); so the factor is then factored whole, which
    costs ``O(n d²)`` on that rare path and decides F's own rank.  A sparse
    F is densified only where it is factored whole; ``B = F P`` is dense.
    """
    xp = array_namespace(F)
    n, d = F.shape
    sketched = n > 8 * (4 * d + 10)
    pre = SketchPreconditioner(SparseSign(4 * d + 10, n, nnz=8, seed=seed) @ F if sketched else to_dense(F), xp,
                               solve=False)
    if sketched and pre.rank_deficient:
        pre = SketchPreconditioner(to_dense(F), xp, solve=False)
    P = pre.apply(xp.eye(pre.rank, dtype=F.dtype))
    return F @ P, P, pre.rank


def _factor_pinv(F, xp):
    """``(F⁺, r)``: a factor's pseudo-inverse with the package's rank rule (``svd_rank``,
    NumPy's ``matrix_rank`` cut, where ``pinv``'s default cut is ``1e-15 σ_max``) and its rank.

    Of full column rank when F with unit columns is (as ``full_rank`` judges the solvers'
    A): then ``F⁺ = D (F D)⁺``, D the column scaling, whatever the columns' units
    (factors with column scales 1e-8 .. 1e8 had lost directions: ``method="exact"``'s cost
    1.35x the unscaled problem's).  Otherwise the minimum-norm pseudo-inverse at F's rank."""
    Fd = to_dense(F)
    if F.shape[0] >= F.shape[1]:
        D = unit_column_scales(Fd, xp)
        U, s, Vt = xp.linalg.svd(Fd * D, full_matrices=False)
        if svd_rank(s, F.shape) == F.shape[1]:
            return D[:, None] * ((Vt.T / s) @ U.T), F.shape[1]
    U, s, Vt = xp.linalg.svd(Fd, full_matrices=False)
    r = svd_rank(s, F.shape)
    return (Vt[:r].T / s[:r]) @ U[:, :r].T, r


def _factor_rank(F, xp):
    """``rank(F)`` by the rule ``_factor_pinv`` uses."""
    Fd = to_dense(F)
    if F.shape[0] >= F.shape[1] and svd_rank(xp.linalg.svd(Fd * unit_column_scales(Fd, xp), compute_uv=False),
                                             F.shape) == F.shape[1]:
        return F.shape[1]
    return svd_rank(xp.linalg.svd(Fd, compute_uv=False), F.shape)


def _warn_rank_deficient(K, ranks, stacklevel=3):
    """Warn that ``A = A_1 ⊗ ... ⊗ A_q`` is rank deficient when a factor is:
    ``rank(A) = ∏ rank(A_t)``."""
    dims = K.col_dims
    if all(r == d for r, d in zip(ranks, dims)):
        return False
    warnings.warn(
        f"A = A_1 ⊗ ... ⊗ A_q of shape {K.shape} is numerically rank deficient: factor ranks "
        f"{list(ranks)} of {list(dims)} columns (rank(A) = {math.prod(ranks)}); returning the minimum-norm solution",
        RankDeficientWarning,
        stacklevel=stacklevel,
    )
    return True


def _cholesky_solve(G, r, xp):
    """``G⁻¹ r`` by Cholesky, or ``None`` if G is not numerically positive definite."""
    try:
        L = xp.linalg.cholesky(G)
        la, _ = linalg_modules(xp)
        y = la.solve_triangular(L, r, lower=True)
        y = la.solve_triangular(L, y, lower=True, trans="T")
        return y if bool(xp.isfinite(y).all()) else None
    except np.linalg.LinAlgError:
        return None


def _sym_pairs(d, xp):
    """Upper-triangle pairs ``(a <= b)`` of a d × d symmetric matrix, and the d × d map from
    ``(a, b)`` to the index of the pair ``(min, max)`` among them, on ``xp``."""
    up = np.triu_indices(d)
    pair = np.zeros((d, d), dtype=np.int64)  # zeros: an unset entry shows in tests (empty reuses memory)
    pair[up] = np.arange(up[0].size)
    pair[up[1], up[0]] = pair[up]
    return (xp.asarray(up[0]), xp.asarray(up[1])), xp.asarray(pair)


def _sampled_gram(bases, idx, w, bvals, xp):
    """``UᵀWU`` and ``UᵀW b`` of the sampled rows ``U = (B_1 ⊗ ... ⊗ B_q)[idx]``, never forming U.

    Row i of U is ``p_i ⊗ v_i`` with ``p_i`` the row of ``B_1 ⊗ ... ⊗ B_{q−1}``
    at i's prefix multi-index and ``v_i`` the row of ``B_q``.  Grouping the
    (sorted, distinct) samples by prefix g,

        UᵀWU = Σ_g (p_g p_gᵀ) ⊗ M_g,   M_g = Σ_{i ∈ g} w_i v_i v_iᵀ = (Ω K_q)_g,

    with Ω the sparse (P × n_q) matrix of the weights (one CSR row per
    prefix, built from the sorted indices without a sort) and ``K_q`` the
    ``n_q × d_q²`` row outer products of ``B_q``.  Both Kronecker sides are
    symmetric, so only their upper triangles are formed and multiplied (about
    half the work).  Cost ``O(m d_q² + P D²)``
    for P distinct prefixes instead of ``O(m D²)``.  Returns ``None`` when
    grouping would not save memory (``P ∏_{t<q} d_t² > m D``).
    """
    Bq = bases[-1]
    n_last, dq = Bq.shape
    Dp = math.prod(B.shape[1] for B in bases[:-1])
    m = idx.size
    prefix, last = idx // n_last, idx % n_last
    starts = xp.flatnonzero(xp.concatenate([xp.ones(1, dtype=bool), prefix[1:] != prefix[:-1]]))
    P = int(starts.size)
    if P * Dp * Dp > m * Dp * dq:
        return None
    sparse = sparse_module(xp)
    indptr = xp.concatenate([starts, xp.asarray([m], dtype=starts.dtype)]).astype(xp.int32)
    cols = last.astype(xp.int32)

    def weighted(vals):  # the (P × n_q) CSR matrix with these values at the samples
        return sparse.csr_matrix((vals, cols, indptr), shape=(P, n_last))

    up_p, pair_p = _sym_pairs(Dp, xp)
    up_q, pair_q = _sym_pairs(dq, xp)
    M = to_dense(weighted(w) @ (Bq[:, up_q[0]] * Bq[:, up_q[1]]))  # (P, dq(dq+1)/2)
    wb = w[:, None] * bvals.reshape(m, -1)
    Rg = xp.stack([to_dense(weighted(xp.ascontiguousarray(wb[:, j])) @ Bq) for j in range(wb.shape[1])], axis=2)
    Pv = KroneckerMatrix(list(bases[:-1])).rows(prefix[starts])  # (P, Dp)
    Gs = (Pv[:, up_p[0]] * Pv[:, up_p[1]]).T @ M  # rows (a <= b), columns (c <= d)
    D = Dp * dq
    G = Gs[pair_p[:, :, None, None], pair_q[None, None, :, :]]  # [a, b, c, d]
    G = G.transpose(0, 2, 1, 3).reshape(D, D)
    r = (Pv.T @ Rg.reshape(P, -1)).reshape(D, wb.shape[1])
    return G, (r[:, 0] if bvals.ndim == 1 else r)


def _solve_sampled(bases, idx, w, bvals, xp):
    """``argmin_y ||W^{1/2}(U y − b)||`` for the sampled rows of the well-conditioned basis.

    ``κ(W^{1/2}U) ≈ 1`` (a subspace embedding of an orthonormal basis), so the
    normal equations lose nothing and are solved by Cholesky; the Gram comes
    from ``_sampled_gram`` (no U) when the sample groups well, else from U.
    Falls back to least squares on U if the sample is too small to embed.
    """
    grouped = _sampled_gram(bases, idx, w, bvals, xp)
    if grouped is not None:
        y = _cholesky_solve(*grouped, xp)
        if y is not None:
            return y
    s = xp.sqrt(w)
    U = KroneckerMatrix(list(bases)).rows(idx) * s[:, None]
    bs = bvals * (s if bvals.ndim == 1 else s[:, None])
    y = _cholesky_solve(U.T @ U, U.T @ bs, xp)
    return y if y is not None else xp.linalg.lstsq(U, bs, rcond=None)[0]


#: CPU slabs of the full residual ``Ax − b`` (``_residual_slabs``), in bytes.
_SLAB_BYTES = 2 << 20


def _residual_slabs(K, x, tgt):
    """``(a, r)`` with ``r = (Ax − b)[a : a + len(r)]``, over all N rows in slabs.

    A slab is the rows of ``A_1[i:j] ⊗ A_2 ⊗ ... ⊗ A_q`` (consecutive in
    numpy.kron order) against ``b[i·R : j·R]``, ``R = N / n_1``, of about
    ``_SLAB_BYTES`` on the CPU, so neither ``Ax`` nor the residual is held
    whole beside b; one slab on the GPU (one pass of batched GEMMs).
    """
    xp = K.xp
    F1, rest = K.factors[0], K.factors[1:]
    R = K.shape[0] // F1.shape[0]
    width = math.prod(x.shape[1:])
    per = F1.shape[0] if xp is not np else max(1, _SLAB_BYTES // (8 * R * width))
    for i in range(0, F1.shape[0], per):
        j = min(F1.shape[0], i + per)
        y = to_dense(KroneckerMatrix([F1[i:j], *rest]) @ x)
        yield i * R, y - tgt.rows(i * R, j * R)


def _cost(K, x, tgt, p):
    """``||Ax − b||_p`` on all N rows (per column of b for p = 2), one slab at a time."""
    xp = K.xp
    total = 0.0
    for _, r in _residual_slabs(K, x, tgt):
        total = total + ((r * r).sum(axis=0) if p == 2 else (xp.abs(r) ** p).sum())
    if p == 2:
        return xp.sqrt(total) if x.ndim == 2 else float(total) ** 0.5
    return float(total) ** (1 / p)


def _residual_mass(K, x, tgt, p):
    """``|Ax − b|^p`` for all N rows (stage 2's sampling mass), filled a slab at a time."""
    mass = K.xp.empty(K.shape[0], dtype=np.result_type(K.dtype, tgt.dtype))
    for a, r in _residual_slabs(K, x, tgt):
        mass[a : a + r.shape[0]] = abs(r) ** p
    return mass


def lstsq(factors, b, *, m=None, method="sampling", seed=None, cost=True):
    """``min_x ||(A_1 ⊗ ... ⊗ A_q) x − b||_2`` without forming the product.

    Parameters
    ----------
    factors : list of 2-D arrays or KroneckerMatrix
        ``A_t`` of shape ``(n_t, d_t)``, q >= 2, NumPy or CuPy, dense or
        sparse (SciPy/cupyx).  A sparse factor is read in ``O(nnz(A_t))`` by
        the sketches, the basis products and the residual slabs; it is
        densified where it is factored whole (``"exact"``, the SVDs of
        ``m >= N``, a short factor's basis, a rank check), an ``n_t × d_t``
        array.
    b : array of shape (∏ n_t,) or (∏ n_t, k), or a sparse (∏ n_t, 1) vector
    m : int, optional
        Sample size (``"sampling"``, default ``_default_m``:
        ``min(N, max(⌈10 D ln D⌉, 10 D + 200))``, ``D = ∏ d_t``) or sketch
        rows (``"sketch"``, the same default; each factor gets ``⌈m^{1/q}⌉``
        rows, and with the default m at least ``4 d_t + 10``, a
        constant-distortion OSNAP of the factor).  With ``m >= N`` both
        solve exactly instead: m i.i.d. draws would leave about a third of
        the rows out (cost ratios up to 99 for N = 20, D = 9, 15 seeds), and
        a sketch as tall as A compresses nothing.  So a square A (N = D, where
        the default m is N) is solved exactly; otherwise m must exceed D.
    method : {"sampling", "sketch", "exact"}
        ``"sampling"``: Diao et al.'s algorithm (below).  ``"sketch"``: a
        Kronecker product of sparse sign sketches (4 nonzeros per column; see
        ``_factor_sketches``), ``(S_1A_1 ⊗ ... ⊗ S_qA_q) x ≈ Sb``,
        with ``Sb`` by the one-pass kernel (reads b once; a sparse b nonzero
        by nonzero, ``O(nnz(b))`` and never densified, while it has fewer
        than about ``N/128`` nonzeros, ``_sketch_target``; a factor of at most
        ``⌈m^{1/q}⌉`` rows is kept whole, ``row_reduction``), solved exactly
        through the sketched factors' pseudo-inverses.  ``"exact"``:
        ``x = (A_1⁺ ⊗ ... ⊗ A_q⁺) b`` through factor pseudo-inverses (SVD), the
        brute-force baseline that still never forms A.
    seed : int, optional
    cost : bool
        Compute ``.cost = ||Ax − b||`` on the full problem (one implicit
        product, ``O(∏ n_t · d_1)`` for q = 2); ``False`` leaves it ``None``
        and keeps ``"sampling"`` sublinear in ``∏ n_t``.

    Returns
    -------
    LstsqResult
        ``.x`` (``∏ d_t`` unknowns, numpy.kron order), ``.cost``, ``.info``
        (``method``, ``m``, ``rows`` distinct, ``seed``, ``timings``,
        ``factor_ranks``, ``rank_deficient``; ``sketch_ranks`` when a
        sketched factor lost rank).

    Warns
    -----
    RankDeficientWarning
        When a factor is numerically rank deficient (then so is A, with
        ``rank(A) = ∏ rank(A_t)``; x is the minimum-norm solution, as from
        ``gpusketch.lstsq``), and for ``"sketch"`` when a factor's sketch
        lost rank the factor has.

    Notes
    -----
    Sampling (p = 2): the leverage scores of A are the products of the
    factors' leverage scores, ``ℓ_i = ∏_t ℓ^{(t)}_{i_t}`` (the orthonormal
    basis of A is ``Q_1 ⊗ ... ⊗ Q_q``).  Each factor is preconditioned on
    its own, ``B_t = A_t P_t`` well conditioned (P_t from an SVD of A_t when
    short, else from a sketch of it), m multi-indices are drawn i.i.d. with
    each factor index drawn from ``||B_t row||²``, repeats are merged with
    weights ``c_i/(m p_i)``, and only the sampled entries of b and rows of
    ``B_1 ⊗ ... ⊗ B_q`` (``KroneckerMatrix.rows``, a gather kernel on the
    GPU) are touched.  With ``m = O(D log D / ε)`` the cost is within
    ``1 + ε`` of optimal w.h.p.  The sampled problem in the preconditioned
    basis is a subspace embedding of an orthonormal basis (``κ ≈ 1``), so
    it is solved through the Cholesky factor of its Gram matrix rather than
    a QR, and ``x = (P_1 ⊗ ... ⊗ P_q) y``.  The Gram keeps the Kronecker
    structure: samples sharing a prefix ``(i_1, ..., i_{q−1})`` are summed
    first, ``UᵀWU = Σ_g (p_g p_gᵀ) ⊗ M_g``, so the sampled rows are never
    formed.  Work: ``O(Σ_t nnz(A_t) + m d_q² + P D²)`` for P distinct
    prefixes, independent of ``∏ n_t``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import kron
    >>> rng = np.random.default_rng(0)
    >>> A1, A2 = rng.standard_normal((200, 3)), rng.standard_normal((150, 4))
    >>> b = np.kron(A1, A2) @ rng.standard_normal(12) + rng.standard_normal(30000)
    >>> fast = kron.lstsq([A1, A2], b, m=1500, seed=1)
    >>> best = kron.lstsq([A1, A2], b, method="exact")
    >>> bool(fast.cost <= 1.02 * best.cost)
    True
    """
    with annotate("gpusketch.kron.lstsq"):
        K, tgt, xp, seed = _setup(factors, b, seed)
        if method not in _L2_METHODS:
            raise ValueError(f"method must be one of {_L2_METHODS}, got {method!r}")
        N, D = K.shape
        info = {"method": method, "seed": seed, "timings": {}}
        t0 = time.perf_counter()
        if method != "exact":
            given = m is not None
            m = _check_m(m, D, N, _default_m(D, N), xp)
            info["m"] = m
        # m >= N: N draws would miss a third of the rows, and a sketch as tall as A compresses nothing.
        if method == "exact" or m >= N:
            pinvs, ranks = zip(*(_factor_pinv(F, xp) for F in K.factors))
            x = KroneckerMatrix(list(pinvs)) @ tgt.full()
            if method != "exact":
                info["rows"] = N
        elif method == "sampling" and _zero_design(K):  # no leverage to sample by
            x, info["rows"] = _zeros_like_solution(K, tgt), 0
            ranks = [_factor_rank(F, xp) for F in K.factors]
        elif method == "sampling":
            bases = [_factor_basis(F, derive_seed(seed, t)) for t, F in enumerate(K.factors)]
            probs = [(B * B).sum(axis=1) for B, _, _ in bases]
            idx, prob = product_sample(probs, m, derive_seed(seed, 50), xp)
            idx, w = merge(idx, prob, m)
            y = _solve_sampled([B for B, _, _ in bases], idx, w.astype(K.dtype), tgt.at(idx), xp)
            x = KroneckerMatrix([P for _, P, _ in bases]) @ y
            info["rows"] = int(idx.size)
            ranks = [r for _, _, r in bases]
        else:
            S = _factor_sketches(K.factors, m, given, seed)
            SK = S @ K  # (S_1 A_1) ⊗ ... ⊗ (S_q A_q), still a Kronecker product
            bs = _sketch_target(S, tgt)
            info["m"] = S.shape[0]
            # pinv(R_1 ⊗ ... ⊗ R_q) = R_1⁺ ⊗ ... ⊗ R_q⁺: the sketched problem's minimum-norm
            # solution from q small SVDs, not a dense (∏ m_t) × D least squares.
            pinvs, ranks = zip(*(_factor_pinv(R, xp) for R in SK.factors))
            x = KroneckerMatrix(list(pinvs)) @ bs
            ranks = _sketch_lost_rank(K, ranks, info)
        info["timings"]["solve_s"] = time.perf_counter() - t0
        info["factor_ranks"] = [int(r) for r in ranks]
        info["rank_deficient"] = _warn_rank_deficient(K, ranks)
        return LstsqResult(x, _cost(K, x, tgt, 2) if cost else None, info)


def _factor_columns(F, xp):
    """A factor sketch as a CSC matrix: from its hashes (``O(n_t)``) for a CountSketch or
    SparseSign, densely otherwise (the identity of a factor kept whole, ``n_t <= m_t``)."""
    if isinstance(F, (CountSketch, SparseSign)):
        buckets, signs = F.hashes(xp)
        nnz = buckets.shape[1]
        data = signs.ravel().astype(xp.float64) / math.sqrt(nnz)
        return sparse_module(xp).csc_matrix((data, buckets.ravel(), xp.arange(0, buckets.size + 1, nnz)),
                                            shape=F.shape)
    return sparse_module(xp).csc_matrix(F.todense(xp))


#: ``_sketch_target`` spreads a sparse b's nonzeros while they make fewer than 1/8 of b's
#: length in spread entries: on the 2-core CPU a spread entry cost about 45 ns, an entry of
#: b in the dense one-pass sketch 4.4 ns (3000 ⊗ 3000 factors, 16 combinations a nonzero).
_SPREAD_PER_DENSE = 8


def _sketch_target(S, tgt):
    """``S b`` for ``lstsq(method="sketch")``: dense b by the operator; a sparse b by spreading
    its nonzeros (``_sketch_sparse_target``), unless that makes more entries than densifying."""
    if tgt.dense is not None:
        return S @ tgt.dense
    columns = [_factor_columns(F, tgt.xp) for F in S.factors]
    spread = tgt.nz_idx.size * math.prod(int((C.indptr[1:] - C.indptr[:-1]).max()) for C in columns)
    if spread * _SPREAD_PER_DENSE >= S.shape[1]:
        return S @ tgt.full()
    return _sketch_sparse_target(S, tgt, columns)


def _sketch_sparse_target(S, tgt, columns=None):
    """``S b`` for a Kronecker sketch S and a sparse b, in ``O(nnz(b) ∏_t c_t)`` (c_t the
    nonzeros of a column of S_t: 4 for the SparseSigns, 1 for a factor kept whole).

    ``S b = Σ_i b_i (S_1[:, i_1] ⊗ ... ⊗ S_q[:, i_q])`` over the nonzeros i of b:
    each nonzero is spread over the combinations of its factor columns' nonzeros
    (row ``r_1 m_2 ... m_q + ... + r_q``, value ``b_i ∏_t S_t[r_t, i_t]``) and the
    spread is summed into the m rows.  b is never densified (``∏ n_t`` entries).
    """
    xp = tgt.xp
    dims = tuple(F.shape[1] for F in S.factors)
    multi = xp.unravel_index(tgt.nz_idx, dims)
    source = xp.arange(tgt.nz_idx.size)  # the nonzero of b behind each spread entry
    rows = xp.zeros(source.size, dtype=xp.int64)
    vals = tgt.nz_val.astype(xp.float64)
    columns = [_factor_columns(F, xp) for F in S.factors] if columns is None else columns
    for F, C, it in zip(S.factors, columns, multi):
        cols = it[source]
        starts = C.indptr[cols].astype(xp.int64)
        counts = C.indptr[cols + 1].astype(xp.int64) - starts
        ends = xp.cumsum(counts)
        # The entry each spread entry comes from, and its place among that entry's column's
        # nonzeros (CuPy's repeat takes no device array of counts).
        spread = xp.arange(int(ends[-1]) if ends.size else 0)
        owner = xp.searchsorted(ends, spread, side="right")
        at = starts[owner] + spread - (ends - counts)[owner]
        source = source[owner]
        rows = rows[owner] * F.shape[0] + C.indices[at].astype(xp.int64)
        vals = vals[owner] * C.data[at]
    return xp.bincount(rows, weights=vals, minlength=S.shape[0]).astype(tgt.dtype)


def _sketch_lost_rank(K, sketch_ranks, info):
    """The factor ranks behind ``lstsq(method="sketch")``'s sketched factors ``S_t A_t``.

    A sketched factor of rank below ``d_t`` is either a deficient ``A_t`` or a
    sketch that merged directions of it; the factor is small beside b, so its
    own rank (an SVD, on this path only) tells which.  A merge confines x to
    the sketch's row space: that gets its own warning, and
    ``info["sketch_ranks"]``.
    """
    ranks = list(sketch_ranks)
    for t, (F, r) in enumerate(zip(K.factors, sketch_ranks)):
        if r < F.shape[1]:
            ranks[t] = _factor_rank(F, K.xp)
    if ranks != list(sketch_ranks):
        info["sketch_ranks"] = [int(r) for r in sketch_ranks]
        warnings.warn(
            f"the sketches of the factors have ranks {info['sketch_ranks']} where the factors have "
            f"{ranks}: the sketch merged directions of A, and x is the minimum-norm solution of the "
            "sketched problem, confined to the sketch's row space (raise m, or use method=\"sampling\")",
            RankDeficientWarning,
            stacklevel=3,
        )
    return ranks


#: Nonzeros per column of ``lstsq(method="sketch")``'s factor sketches (see ``_factor_sketches``).
_SKETCH_NNZ = 4


def _factor_sketches(factors, m, given, seed):
    """``lstsq(method="sketch")``'s ``S_1 ⊗ ... ⊗ S_q``: SparseSigns of ``⌈m^{1/q}⌉`` rows each
    (at least ``embedding_rows(d_t)`` when m is the default), a factor kept whole where
    its sketch would not be shorter (``row_reduction``).

    SparseSign with 4 nonzeros per column, not CountSketch: a CountSketch merges
    any two high-leverage rows of a factor that hash to one bucket, and the
    Kronecker product inherits the lost direction.  Factors with one planted
    row per column (d_t = 1..5, 50-300 rows, the default m; 9302 cases): cost
    ratio p99 6.6, max 71 with CountSketches of ``⌈m^{1/q}⌉`` rows; p99 1.044,
    max 1.33 with these.  On the paper's Gaussian factors (300 × 15, q = 2,
    m = 8100 / 12100 / 16129; ``bench/results/kron-cpu.md``, 5 trials) the mean
    errors are 2.76 / 1.82 / 1.44 % against CountSketch's 2.60 / 1.79 / 1.39 %,
    at 1.3-1.4x its time on the CPU (3-4 ms; the factor products carry 4
    nonzeros per column).  Each entry of b meets ``4^q`` factor-row
    combinations in the GPU's one-pass kernel.
    """
    q = len(factors)
    per = math.ceil(m ** (1 / q))
    sketches = []
    for t, F in enumerate(factors):
        n_t, d_t = F.shape
        mt = min(n_t, per if given else max(per, embedding_rows(d_t)))
        sketches.append(SparseSign(mt, n_t, nnz=min(_SKETCH_NNZ, mt), seed=derive_seed(seed, t)) if mt < n_t
                        else row_reduction("sparse_sign", mt, n_t))  # the identity
    return Kronecker(sketches)


def lp_regression(factors, b, p=1, *, m=None, residuals="exact", seed=None, cost=True):
    """``min_x ||(A_1 ⊗ ... ⊗ A_q) x − b||_p`` for ``1 <= p < 2``, never forming A.

    Parameters
    ----------
    factors : list of 2-D arrays or KroneckerMatrix
        Dense or sparse, as for ``lstsq``; the Lewis weights of a sparse
        factor are computed sparse (a wide one's range is taken from its
        dense SVD).
    b : array of shape (∏ n_t,), or a sparse (∏ n_t, 1) vector
    p : float in [1, 2)
    m : int, optional
        Rows sampled in each stage; default
        ``min(N, max(⌈10 D ln D⌉, 10 D + 200))`` (``_default_m``).  From
        ``m >= N`` on, the ℓp problem is solved on all N rows (stage 2's m
        draws would leave about a third of them out: cost ratios up to 516
        for N = 20, D = 9, 15 seeds); a square A (N = D) is so solved at the
        default m.  Otherwise m must exceed D.
    residuals : {"exact", "bound"}
        How stage 2 samples by residual size (below).
    seed : int, optional
    cost : bool
        Compute ``.cost = ||Ax − b||_p`` on the full problem.

    Returns
    -------
    RobustResult
        ``.x``, ``.cost``, ``.info`` (``m``, ``rows`` per stage, the stage-1
        sampled cost estimate, ``residuals``, ``seed``).

    Notes
    -----
    Diao et al.'s multi-stage algorithm:

    1. *Structure.*  ℓp Lewis weights ``w^{(t)}`` of each factor
       (``lewis_weights``, O(nnz(A_t)) per iteration) define the product
       distribution ``π_i = ∏_t w^{(t)}_{i_t} / Σ w^{(t)}``: the Kronecker
       product of the factors' well-conditioned bases is well conditioned
       for A, and ``π`` bounds the ℓp sensitivities of the rows of A up to
       that conditioning.  ``m_1 = max(min(m, 4D), ⌈m/4⌉)`` rows drawn
       from ``π`` (factor by factor) give the constant-factor solution ``x'``
       of the weighted ℓp problem on the sample (HiGHS LP for p = 1, IRLS
       for 1 < p < 2).
    2. *Residuals.*  m rows are drawn from ``ρ = ½ π + ½ σ`` and the
       weighted problem is solved again; this is the answer.

       - ``residuals="exact"``: ``σ_i = |r_i|^p / ||r||_p^p`` with
         ``r = Ax' − b`` computed for every row (one implicit product,
         ``O(∏ n_t · d_1)`` for q = 2, done on the device).
       - ``residuals="bound"``: ``σ_i = |b_i|^p / ||b||_p^p``, read from the
         nonzeros of b only.  Because ``|r_i|^p <= 2^{p−1}(|(Ax')_i|^p +
         |b_i|^p)`` and ``|(Ax')_i|^p`` is bounded by ``π_i`` times the
         conditioning, ``ρ`` dominates the residual distribution up to a
         constant, so importance weighting by ``ρ`` keeps the estimate
         unbiased with bounded variance.  Work is ``O(Σ nnz(A_t) + nnz(b)
         + m D²)``: sublinear in ``∏ n_t`` when b is sparse.

    Deviation: the paper draws from the residual distribution with
    precision sampling and CountSketch heavy hitters (the dyadic trick) to
    stay sublinear for dense b; here the residual stage is either exact
    (``"exact"``, linear in ``∏ n_t`` but a single fast pass on the GPU) or
    uses the dominating distribution above (``"bound"``).  Every sampled
    probability is exact, so the estimates are unbiased in both modes.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import kron
    >>> rng = np.random.default_rng(0)
    >>> A1, A2 = rng.standard_normal((60, 2)), rng.standard_normal((50, 3))
    >>> b = np.kron(A1, A2) @ np.ones(6) + rng.laplace(size=3000)
    >>> res = kron.lp_regression([A1, A2], b, p=1, m=600, seed=2)
    >>> from gpusketch.robust.lp import solve_lp_small
    >>> opt = np.abs(np.kron(A1, A2) @ solve_lp_small(np.kron(A1, A2), b, 1.0) - b).sum()
    >>> bool(res.cost <= 1.05 * opt)
    True
    """
    with annotate("gpusketch.kron.lp_regression"):
        K, tgt, xp, seed = _setup(factors, b, seed)
        p = check_real_in(p, "p", 1, 2, closed="[)")
        if len(tgt.shape) != 1:
            raise ValueError(f"b must be a vector for lp_regression, got shape {tgt.shape}")
        if residuals not in _RESIDUALS:
            raise ValueError(f"residuals must be one of {_RESIDUALS}, got {residuals!r}")
        p = float(p)
        N, D = K.shape
        m = _check_m(m, D, N, _default_m(D, N), xp)
        info = {"p": p, "m": m, "residuals": residuals, "seed": seed, "timings": {}}
        t0 = time.perf_counter()
        if _zero_design(K):  # no Lewis weights to sample by
            x = _zeros_like_solution(K, tgt)
            info["rows_stage1"] = info["rows_stage2"] = 0
            info["timings"]["solve_s"] = time.perf_counter() - t0
            return RobustResult(x, _cost(K, x, tgt, p) if cost else None, info)
        if m >= N:  # m draws would leave about a third of the rows out: solve on all of them
            x = xp.asarray(solve_lp_small(to_host(K.rows(xp.arange(N))), to_host(tgt.full()), p))
            info["rows_stage1"], info["rows_stage2"] = 0, N
            info["timings"]["solve_s"] = time.perf_counter() - t0
            return RobustResult(x, _cost(K, x, tgt, p) if cost else None, info)
        probs = []
        for t, F in enumerate(K.factors):
            if F.shape[0] < F.shape[1]:
                # Lewis weights depend on range(F) only; a wide factor's range has a short basis.
                U, s, _ = xp.linalg.svd(to_dense(F), full_matrices=False)
                F = U[:, : svd_rank(s, F.shape)]
            w = lewis_weights(F, p, exact=F.shape[0] <= 8 * (4 * F.shape[1] + 10), seed=derive_seed(seed, t))
            probs.append(w / w.sum())
        # Stage 1 only needs a constant-factor x', so it samples fewer rows.
        m1 = max(min(m, 4 * D), -(-m // 4))
        idx, pi = product_sample(probs, m1, derive_seed(seed, 50), xp)
        x1, rows1 = _solve_sample(K, tgt, idx, pi, m1, p)
        info["rows_stage1"] = rows1
        # Stage 2: ρ = ½π + ½σ, σ ∝ |r_i|^p (or |b_i|^p for "bound"), sampled as a mixture.
        if residuals == "exact":
            support, mass = None, _residual_mass(K, x1, tgt, p)
        else:
            support, mass = tgt.lp_mass(p)
        idx2, rho = _mixture_sample(probs, K.row_dims, support, mass, m, seed, xp)
        x, rows2 = _solve_sample(K, tgt, idx2, rho, m, p)
        info["rows_stage2"] = rows2
        info["timings"]["solve_s"] = time.perf_counter() - t0
        return RobustResult(x, _cost(K, x, tgt, p) if cost else None, info)


def _mixture_sample(probs, dims, support, mass, m, seed, xp):
    """Stage 2's m i.i.d. draws from ``ρ = ½π + ½σ`` and ``ρ`` at each draw: ``(idx, rho)``.

    π is the product distribution ``probs`` over the rows (``dims`` their
    sizes) and ``σ = mass / Σ mass`` lives on the sorted row indices
    ``support`` (all rows, in order, when ``support`` is None).  Each draw
    takes π or σ by a fair coin; ρ is evaluated exactly at every draw, so the
    importance weights ``1/(m ρ_i)`` are those of the mixture actually
    sampled.  With ``Σ mass = 0`` (a perfect fit, or b = 0 for "bound") the
    draws come from π alone.
    """
    half = _kernels.uniforms(m, derive_seed(seed, 60), xp) < 0.5
    n_pi = int(half.sum())
    idx_pi, _ = product_sample(probs, n_pi, derive_seed(seed, 70), xp)
    total = float(mass.sum())
    if total == 0.0:
        return product_sample(probs, m, derive_seed(seed, 80), xp)
    pick = categorical(mass, m - n_pi, derive_seed(seed, 80), xp)
    idx = xp.concatenate([idx_pi, pick if support is None else support[pick]])
    sigma = mass[idx] if support is None else _lookup(support, mass, idx, xp)
    return idx, 0.5 * _product_prob(probs, idx, dims, xp) + 0.5 * sigma / total


def _product_prob(probs, idx, dims, xp):
    """``∏_t p_t(i_t)`` at flat indices ``idx``."""
    out = xp.ones(idx.shape, dtype=probs[0].dtype)
    rest = idx
    for p, n in zip(reversed(probs), reversed(dims)):
        out = out * p[rest % n]
        rest = rest // n
    return out


def _solve_sample(K, tgt, idx, prob, count, p):
    """Weighted ℓp solve on the distinct sampled rows: rows scaled by ``w_i^{1/p}``."""
    xp = K.xp
    idx, w = merge(idx, prob, count)
    s = (w ** (1.0 / p)).astype(K.dtype)
    R = to_host(K.rows(idx) * s[:, None])
    bs = to_host(tgt.at(idx) * s)
    return xp.asarray(solve_lp_small(R, bs, p)), int(idx.size)
