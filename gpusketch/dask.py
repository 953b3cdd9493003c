"""Sketching and solvers on Dask arrays: data spread over many workers or machines.

Imported only when used (``import gpusketch.dask``); needs the optional
``dask[array]`` dependency.  Blocks may be NumPy (CPU workers) or CuPy
(GPU workers, e.g. ``dask_cuda.LocalCUDACluster``); each block is sketched
where it lives with the column slice ``S[:, a:b]`` of the operator for its
rows, so the result does not depend on the chunking.  Results of the
solvers are NumPy/CuPy arrays (the small d-dimensional quantities) or lazy
Dask arrays (the n-dimensional ones: ``leverage_scores``, ``U``).
"""

from __future__ import annotations

import math
import operator
import warnings

import numpy as np

from . import _kernels
from ._backend import (
    array_namespace,
    as_operand,
    check_dtype,
    check_positive_int,
    check_positive_real,
    check_real_in,
    check_seed,
    is_sparse,
    linalg_modules,
    sparse_module,
    to_dense,
    to_host,
)
from ._nvtx import annotate
from ._random import derive_seed
from .linalg._block_lsmr import TallBlock, block_lsmr
from .linalg._numerics import (
    _cholesky_inverse,
    _householder_r_qtb,
    _orthonormal_enough,
    factored_rank_shape,
    full_rank,
    svd_rank,
    svd_signs,
    top_left_singular,
)
from .linalg._precondition import (
    REFINE_SKETCH_NNZ,
    SketchPreconditioner,
    finish_gram_refinement,
    finish_refinement,
    gram_refines,
    refine_pays,
    refinement_matrix,
)
from .linalg.leverage import (
    _SLICE_BLOCK_BYTES,
    RowSlices,
    _block_bytes,
    _full_rank_by_svd,
    _gaussian,
    _product_row_norms2,
    check_leverage_sample,
    embedding_osnap,
    embedding_rows,
    jl_columns,
    kept_rows,
    sample_operator,
    sample_products,
    sample_result,
)
from .linalg.low_rank import (
    _col_sq_norms,
    _hashed_columns,
    affine_coefficients,
    affine_sketch,
    check_low_rank,
    chosen_columns,
    column_sketch,
    residual_columns,
    right_from_sample,
    right_sample_size,
    row_embedding,
)
from .linalg.lstsq import RankDeficientWarning, missed_direction_tol, sketch_for, sketch_rank_message, warm_start_passes
from .linalg.rank import _sketch_rows, sampled_independent_rows, sketched_rank
from .linalg.results import LowRankResult, LstsqResult
from .operators import SketchOperator, make_sketch
from .robust.irls import irls
from .robust.lewis import default_iters, lewis_step
from .robust.losses import TukeyLoss
from .robust.lp import check_sample_size, solve_lp_small
from .robust.lp import lp_regression as in_memory_lp
from .robust.results import RobustResult
from .robust.tukey import TukeyResult, check_reduction, oblivious_sketch
from .robust.tukey import tukey_regression as in_memory_tukey

__all__ = ["sketch", "sketch_columns", "lstsq", "leverage_scores", "leverage_sample", "randomized_svd", "low_rank",
           "rank", "independent_rows", "lp_regression", "tukey_regression"]


def _da():
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - exercised only without dask
        raise ImportError("gpusketch.dask needs Dask: python3 -m pip install 'gpusketch[dask]'") from exc
    return da


def _check_dask(X, name, ndim=(1, 2), nonempty=False, dense=False):
    """Validate a Dask array and return ``(X, da)``, X upcast as ``as_operand`` would.

    Bool and integer X become a lazy float64 view of it (``astype``; nothing
    is computed); float16 and complex raise ``TypeError``.  ``dense=True``
    (a right-hand side y) refuses SciPy/cupyx sparse blocks.
    """
    da = _da()
    if not isinstance(X, da.Array):
        raise TypeError(f"{name} must be a dask.array.Array, got {type(X).__name__}")
    if X.ndim not in ndim:
        raise ValueError(f"{name} must be {' or '.join(f'{k}-D' for k in ndim)}, got shape {X.shape}")
    if nonempty and 0 in X.shape:
        raise ValueError(f"{name} is empty (shape {X.shape})")
    if any(math.isnan(c) for chunks in X.chunks for c in chunks):
        raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first")
    if dense and is_sparse(X._meta):
        raise TypeError(f"{name} has sparse blocks ({type(X._meta).__name__}); it must have dense blocks")
    dtype = check_dtype(X.dtype, name)
    return (X if X.dtype == dtype else X.astype(dtype)), da


def _dense_meta(X, dtype):
    """An empty dense array like X's blocks (NumPy or CuPy), for results that are dense whatever X is."""
    meta = X._meta
    xp = array_namespace(meta.data if is_sparse(meta) else meta)
    return xp.empty((0,) * X.ndim, dtype=dtype)


def _check_sketch_finite(Y, name, found_in="its sketch"):
    """NaN/Inf in a Dask input, found in its (small, computed) sketch or R factor.

    Checking X itself would cost a pass; every entry of X reaches its sketch
    with a nonzero coefficient, so a NaN or Inf there leaves a NaN or Inf here.
    In a Householder QR, the first reflection carries every entry of a column
    into that column's first row of R.
    """
    xp = array_namespace(Y)
    if not bool(xp.isfinite(Y).all()):
        raise ValueError(f"{name} contains NaN or Inf (found in {found_in})")


def _offsets(chunks):
    out = [0]
    for c in chunks:
        out.append(out[-1] + c)
    return out


def _sketch_block(S, a, b, block):
    return S[:, a:b] @ block


def _tree_sum(parts, add=operator.add):
    from dask import delayed

    while len(parts) > 1:
        parts = [delayed(add)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def _sketch_row(S, a, b, *blocks):
    return S[:, a:b].matmul_each(*blocks)


def _add_each(p, q):
    return tuple(x + y for x, y in zip(p, q))


def _sketch_with_rhs(S, X, y):
    """``(S X, S y)`` computed, for y with X's row chunks: each row block's column slice
    of S generated once for X's blocks and y's (``matmul_each``; on CPU workers the
    hashing is most of a thin sketch), where ``sketch`` twice would generate it twice."""
    return _sketches_with_rhs([S], X, y)[0]


def _sketches_with_rhs(operators, X, y):
    """``[(S X, S y) for S in operators]``, computed together: one pass over X and y."""
    import dask

    if y.ndim == 2 and len(y.chunks[1]) > 1:
        y = y.rechunk({1: -1})
    off, xb, yb = _offsets(X.chunks[0]), X.to_delayed(), y.to_delayed()
    cols = [j for j in range(len(X.chunks[1])) if X.chunks[1][j] > 0]
    sums = [_tree_sum([dask.delayed(_sketch_row)(S, off[i], off[i + 1], *[xb[i, j] for j in cols],
                                                 yb[i] if y.ndim == 1 else yb[i, 0])
                       for i in range(len(X.chunks[0])) if X.chunks[0][i] > 0], _add_each)
            for S in operators]
    out = []
    for *SX, Sy in dask.compute(*sums):
        out.append(((SX[0] if len(SX) == 1 else array_namespace(*SX).concatenate(SX, axis=1)), Sy))
    return out


def sketch(S, X):
    """``S @ X`` for a Dask array X chunked along rows (and, optionally, columns).

    Parameters
    ----------
    S : SketchOperator of shape (m, n)
    X : dask.array.Array of shape (n,) or (n, d), NumPy or CuPy blocks

    Returns
    -------
    dask.array.Array of shape (m,) or (m, d)
        Lazy; ``.compute()`` gives ``S @ X.compute()`` within round-off.  Each
        block ``X[a:b, cols]`` contributes ``S[:, a:b] @ block``; the partial
        sketches of a column strip are added in a binary tree.

    Examples
    --------
    >>> import numpy as np, dask.array as da, gpusketch
    >>> from gpusketch import dask as gsd
    >>> A = np.random.default_rng(0).standard_normal((1000, 4))
    >>> S = gpusketch.CountSketch(50, 1000, seed=1)
    >>> bool(np.allclose(gsd.sketch(S, da.from_array(A, chunks=(300, 2))).compute(), S @ A))
    True
    """
    with annotate("gpusketch.dask.sketch"):
        if not isinstance(S, SketchOperator):
            raise TypeError(f"S must be a sketch operator, got {type(S).__name__}")
        X, da = _check_dask(X, "X")
        from dask import delayed

        if X.shape[0] != S.shape[1]:
            raise ValueError(f"X has {X.shape[0]} rows but S has {S.shape[1]} columns")
        m = S.shape[0]
        row_off = _offsets(X.chunks[0])
        blocks = X.to_delayed()
        dtype = X.dtype
        meta = _dense_meta(X, dtype)
        # Blocks of no rows (a filtered array's, say) contribute nothing, and S[:, a:a] is no operator.
        rows = [i for i in range(len(X.chunks[0])) if X.chunks[0][i] > 0]
        if X.ndim == 1:
            parts = [delayed(_sketch_block)(S, row_off[i], row_off[i + 1], blocks[i]) for i in rows]
            return da.from_delayed(_tree_sum(parts), shape=(m,), dtype=dtype, meta=meta)
        strips = []
        for j, width in enumerate(X.chunks[1]):
            parts = [delayed(_sketch_block)(S, row_off[i], row_off[i + 1], blocks[i, j]) for i in rows]
            strips.append(da.from_delayed(_tree_sum(parts), shape=(m, width), dtype=dtype, meta=meta))
        return da.concatenate(strips, axis=1)


def _right_block(S, a, b, block):
    return block @ S[:, a:b].T


def sketch_columns(X, S):
    """``X @ S.T`` (a sketch of the columns) for a Dask array X of shape (n, d), S of shape (m, d).

    Parameters
    ----------
    X : dask.array.Array of shape (n, d), NumPy or CuPy (or sparse) blocks
    S : SketchOperator of shape (m, d)

    Returns
    -------
    dask.array.Array of shape (n, m)
        Lazy, chunked like X's rows; block ``X[rows, a:b]`` contributes
        ``block @ S[:, a:b].T``.

    Examples
    --------
    >>> import numpy as np, dask.array as da, gpusketch
    >>> from gpusketch import dask as gsd
    >>> A = np.random.default_rng(0).standard_normal((100, 40))
    >>> S = gpusketch.CountSketch(8, 40, seed=1)
    >>> bool(np.allclose(gsd.sketch_columns(da.from_array(A, chunks=(50, 15)), S).compute(), A @ S.T))
    True
    """
    with annotate("gpusketch.dask.sketch_columns"):
        if not isinstance(S, SketchOperator):
            raise TypeError(f"S must be a sketch operator, got {type(S).__name__}")
        X, da = _check_dask(X, "X", ndim=(2,))
        from dask import delayed

        if X.shape[1] != S.shape[1]:
            raise ValueError(f"X has {X.shape[1]} columns but S has {S.shape[1]}")
        col_off = _offsets(X.chunks[1])
        blocks = X.to_delayed()
        dtype = X.dtype
        meta = _dense_meta(X, dtype)
        cols = [j for j in range(len(X.chunks[1])) if X.chunks[1][j] > 0]  # as in sketch: no empty slices
        rows = []
        for i, height in enumerate(X.chunks[0]):
            parts = [delayed(_right_block)(S, col_off[j], col_off[j + 1], blocks[i, j]) for j in cols]
            rows.append(da.from_delayed(_tree_sum(parts), shape=(height, S.shape[0]), dtype=dtype, meta=meta))
        return da.concatenate(rows, axis=0)


def _small(x):
    """Compute a small Dask result (d-dimensional) to a NumPy/CuPy array."""
    return x.compute() if hasattr(x, "compute") else x


# The solvers' products with X.  Dense blocks go through Dask's own ``@``; Dask's matmul
# takes no sparse chunks, so SciPy/cupyx sparse blocks (in one column strip) get one
# product per row block, dense out: ``O(nnz)`` of each block, never the block densified.


def _block_times(block, V):
    return block @ V


def _block_t_times(block, U):
    return block.T @ U


def _times(X, V):
    """``X @ V`` for an in-memory V of shape (d,) or (d, k): a lazy Dask array on X's row chunks."""
    if not is_sparse(X._meta):
        return X @ V
    X = X.rechunk({1: -1})
    meta = _dense_meta(X, np.result_type(X.dtype, V.dtype))  # shape (0, 0)
    if V.ndim == 1:
        return X.map_blocks(_block_times, V, drop_axis=1, dtype=meta.dtype, meta=meta.reshape(0))
    return X.map_blocks(_block_times, V, chunks=(X.chunks[0], (V.shape[1],)), dtype=meta.dtype, meta=meta)


def _t_times(X, U):
    """``Xᵀ U`` for a Dask U of shape (n,) or (n, k) on X's row chunks, computed (d-dimensional)."""
    if not is_sparse(X._meta):
        return _small(X.T @ U)
    from dask import delayed

    X = X.rechunk({1: -1})
    U = U.rechunk({0: X.chunks[0], **({1: -1} if U.ndim == 2 else {})})
    parts = [delayed(_block_t_times)(xb, ub) for xb, ub in zip(X.to_delayed().ravel(), U.to_delayed().ravel())]
    return _tree_sum(parts).compute()


def _block_product_row_norms2(block, P):
    return _product_row_norms2(block, P, array_namespace(P))


def _block_sum_squares(block):
    if is_sparse(block):
        if not block.has_canonical_format:  # a repeated entry counts once, summed
            block = block.copy()
            block.sum_duplicates()
        block = block.data
    return (block * block).sum()


def _sum_squares(X):
    """``||X||_F²``, lazy (a Dask scalar, or a Delayed for sparse blocks)."""
    if not is_sparse(X._meta):
        return (X * X).sum()
    from dask import delayed

    return _tree_sum([delayed(_block_sum_squares)(b) for b in X.to_delayed().ravel()])


def lstsq(X, y, *, method="precondition", sketch="sparse_sign", m=None, tol=1e-10, maxiter=None, seed=None):
    """``min_x ||X x − y||_2`` for Dask X (n × d, chunked along rows) and y (n,) or (n, k).

    Parameters
    ----------
    X : dask.array.Array (n, d)
        NumPy or CuPy blocks, or SciPy/cupyx sparse ones: the products with
        a sparse X run one per row block in ``O(nnz)`` (Dask's matmul takes
        no sparse chunks), and ``"direct"`` densifies one block at a time
        for its QR.  Sparse blocks are known by X's meta, so they must be
        CSR or CSC: Dask records a COO block's meta as a dense array (and
        its own slicing fails on COO blocks).
    y : dask.array.Array, or NumPy/CuPy array on X's blocks' device, (n,) or (n, k)
        A Dask y is rechunked to X's row chunks when they differ; an
        in-memory y is split into X's row chunks (``da.from_array``).
    method : {"precondition", "sketch", "direct"}
        As in ``gpusketch.lstsq``: ``"sketch"`` solves the sketched problem;
        ``"precondition"`` uses ``R`` from a QR of ``SX`` as a right
        preconditioner (refined where ``gpusketch.lstsq`` would refine a
        dense X, with its sketch, the Gram of ``X R⁻¹`` or of X summed over
        the blocks, and its warm start put to LSMR's stopping test first:
        two passes over X when it passes; sparse blocks keep R alone, which
        ``gpusketch.lstsq`` refines from a sparse X's Gram) and runs LSMR with
        distributed products (the columns of y together); ``"direct"`` is the baseline, a tall-skinny QR
        of ``[X y]`` (one pass, R only) and ``x = R⁺ Qᵀy`` (a triangular solve
        when R is of full numerical rank, else the minimum-norm solution from
        an SVD of R).
    sketch : str or SketchOperator, m, tol, maxiter, seed
        As in ``gpusketch.lstsq`` (unused by ``"direct"``).

    Returns
    -------
    LstsqResult
        ``.x`` (NumPy or CuPy, like the blocks), ``.cost = ||Xx − y||`` (a
        float, or one per column of y), ``.info`` (``method``, and
        ``iterations``, ``m``, ``seed`` for the sketching methods).

    Warns
    -----
    RankDeficientWarning
        When X (or its sketch) is numerically rank deficient;
        ``"precondition"`` and ``"direct"`` then return the minimum-norm
        solution.  As in memory, a sketch that lost rank X has is caught by
        the normal equations (one more pass over X, only then), and the
        direct solve answers (``info["fallback"]``), warning only if X
        itself is deficient.  ``"sketch"`` warns whenever SX is rank
        deficient (``info["sketch_rank"]``), naming both causes.

    Notes
    -----
    The solver is ``gpusketch.lstsq``'s block LSMR (SciPy's recurrences and
    stopping rules for each column of y; Fong & Saunders, 2011), with its
    n × k vectors kept as Dask arrays, persisted on the workers each
    iteration: only d × k blocks and k column norms come back.  Each
    iteration reads X twice (``X P V`` and ``Pᵀ Xᵀ U``) for all columns of y
    at once; with ``κ(XR⁻¹) = O(1)`` it converges in a few tens of
    iterations.  Warm start: the sketched solution.  For the same seed the
    sketch, the preconditioner and so the iterations are those of
    ``gpusketch.lstsq`` on the computed arrays.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from gpusketch import dask as gsd
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((4000, 6)); b = A @ np.arange(6.0) + 0.01 * rng.standard_normal(4000)
    >>> res = gsd.lstsq(da.from_array(A, chunks=(1000, 6)), da.from_array(b, chunks=1000), seed=1)
    >>> bool(np.allclose(res.x, np.linalg.lstsq(A, b, rcond=None)[0], atol=1e-10))
    True
    """
    with annotate("gpusketch.dask.lstsq"):
        X, da = _check_dask(X, "X", ndim=(2,), nonempty=True)
        y = _dask_rhs(y, X, da)
        n, d = X.shape
        if y.shape[0] != n:
            raise ValueError(f"y has {y.shape[0]} rows but X has {n}")
        if y.chunks[0] != X.chunks[0]:
            y = y.rechunk({0: X.chunks[0]})
        if method not in ("precondition", "sketch", "direct"):
            raise ValueError(f"method must be 'precondition', 'sketch' or 'direct', got {method!r}")
        tol = check_positive_real(tol, "tol")
        if maxiter is not None:
            maxiter = check_positive_int(maxiter, "maxiter")
        if method == "direct":
            x, info = _direct(X, y)
        else:
            if n < d:
                raise ValueError(f"method={method!r} needs n >= d, got X of shape {X.shape}")
            x, info, cost = _sketched(X, y, method, sketch, m, tol, maxiter, seed)
            if cost is not None:
                return LstsqResult(x, float(cost) if y.ndim == 1 else cost, info)
        r = _times(X, x) - y
        cost = _small((r * r).sum(axis=0)) ** 0.5
        return LstsqResult(x, float(cost) if y.ndim == 1 else cost, info)


def _dask_rhs(y, X, da):
    """y as a Dask array with X's row chunks: a Dask y is checked, an in-memory one split.

    An in-memory y must sit on the device of X's blocks (a NumPy y with CuPy
    blocks would meet them in every block's product).
    """
    if isinstance(y, da.Array):
        y, _ = _check_dask(y, "y", ndim=(1, 2), dense=True)
        return y
    y, xp = as_operand(y, "y", ndim=(1, 2))
    if is_sparse(y):
        raise TypeError("y must be dense (a Dask, NumPy or CuPy array), got a sparse matrix")
    if xp is not array_namespace(X._meta):  # (NumPy for SciPy sparse blocks, CuPy for cupyx ones)
        raise TypeError(f"y is a {xp.__name__} array but X's blocks are not: pass y on the blocks' device, "
                        "or as a Dask array")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y has {y.shape[0]} rows but X has {X.shape[0]}")
    return da.from_array(y, chunks=(X.chunks[0],) + y.shape[1:], asarray=False)


def _warn_deficient(X, detail="", stacklevel=4):
    warnings.warn(f"X of shape {X.shape} is numerically rank deficient{detail}; returning the minimum-norm solution",
                  RankDeficientWarning, stacklevel=stacklevel)


def _block_r(x_block, y_block):
    """The first d rows ``[R z]`` of the R factor of a Householder QR of one row block of
    ``[X y]`` (Q never formed; the rows below, y's residual, do not change the final R and z).

    On a CPU worker the in-memory direct solve's host TSQR (``_householder_r_qtb``: ~1 MiB
    row blocks of the block factored on threads, in float64; a sparse block densified a
    row block at a time), not one ``geqrf`` of the whole block after a transposing copy;
    on a GPU, cuSOLVER's ``geqrf`` of the block."""
    xp = array_namespace(y_block)
    if xp is np:  # (float64 inside; back in the data's dtype, for the rank rule of X's precision)
        R, z = _householder_r_qtb(x_block, y_block, xp)
        Rz = np.concatenate([R, z.reshape(R.shape[0], -1)], axis=1)
        return Rz.astype(np.result_type(x_block.dtype, y_block.dtype), copy=False)
    block = xp.concatenate([to_dense(x_block), y_block.reshape(y_block.shape[0], -1)], axis=1)
    return xp.linalg.qr(block, mode="r")[: x_block.shape[1]]


def _direct(X, y, stacklevel=4):
    """Least squares from the R factor of ``[X y] = Q [[R, z], [0, ρ]]``, R-only TSQR.

    ``||Xx − y||² = ||Rx − z||² + ρ²``, so ``x = R⁺z`` (the minimum-norm
    solution when R is singular, since ``X⁺ = R⁺Qᵀ``).  Each row block gives
    its own R (one pass over X); the stacked block Rs are factored once more
    where they land.  Q is not formed: Dask's ``tsqr``, which forms Q and
    then reads it for ``Qᵀy``, took 4-4.5× as long (CPU, 2^21 × 64, 4 chunks).
    On CPU workers each block's R comes from the in-memory host TSQR
    (``_block_r``): 2^20 × 64 in 4 chunks 1.65-2.43 → 0.46-0.55 s (best-worst
    of 3, two alternating rounds) against one ``geqrf`` per block.
    """
    import dask

    d = X.shape[1]
    X = X.rechunk({1: -1})
    y = y.rechunk({0: X.chunks[0], **({1: -1} if y.ndim == 2 else {})})
    parts = [dask.delayed(_block_r)(xb, yb) for xb, yb in zip(X.to_delayed().ravel(), y.to_delayed().ravel())]
    Rs = dask.compute(*parts)
    xp = array_namespace(Rs[0])
    _check_sketch_finite(xp.concatenate([R[:, :d] for R in Rs]), "X", "its R factor")
    _check_sketch_finite(xp.concatenate([R[:, d:] for R in Rs]), "y", "the R factor of [X y]")
    Rxy = xp.linalg.qr(xp.concatenate(Rs), mode="r")
    R, z = Rxy[:d, :d], Rxy[:d, d:]
    deficient = False
    if not full_rank(R, X.shape):  # possibly: the SVD's rank rule decides
        U, s, Vt = xp.linalg.svd(R)
        r = svd_rank(s, X.shape)
        deficient = r < d
    if deficient:
        _warn_deficient(X, stacklevel=stacklevel)
        x = Vt[:r].T @ ((U[:, :r].T @ z) / s[:r, None])
    else:
        la, _ = linalg_modules(xp)
        x = la.solve_triangular(R, z)
    return (x[:, 0] if y.ndim == 1 else x), {"method": "direct", "rank_deficient": deficient}


def _sketched(X, y, method, sketch, m, tol, maxiter, seed):
    """``(x, info, cost)`` of ``"sketch"`` and ``"precondition"``; cost is None unless the
    refined warm start passed LSMR's test, whose residual gives it."""
    n, d = X.shape
    xp = array_namespace(X._meta)
    k = 1 if y.ndim == 1 else y.shape[1]
    # As in memory (gpusketch.linalg.lstsq): the refined route's sparse sign is REFINE_SKETCH_NNZ a column.
    refine = method == "precondition" and not is_sparse(X._meta) and refine_pays(n, d, k, tol, xp)
    S = sketch_for(sketch, m, n, d, method, seed, sparse_sign_nnz=REFINE_SKETCH_NNZ if refine == "any" else None)
    SX, Sy = _sketch_with_rhs(S, X, y)
    _check_sketch_finite(SX, "X")
    _check_sketch_finite(Sy, "y")
    xp = array_namespace(SX)
    info = {"method": method, "sketch": type(S).__name__, "m": S.shape[0], "seed": S.seed}
    pre = SketchPreconditioner(SX, xp)
    info["rank_deficient"] = pre.rank_deficient
    if method == "sketch":
        if pre.rank_deficient:
            info["sketch_rank"] = pre.rank
            warnings.warn(sketch_rank_message("X", X.shape, pre.rank), RankDeficientWarning, stacklevel=3)
        return pre.apply(pre.sketched_solution(Sy)), info, None
    y0 = pre.sketched_solution(Sy)
    info["preconditioner"] = "sketch"
    if refine:
        refined = _refine(X, y, pre, xp, gram_only=refine == "gram")  # as in memory (gpusketch.linalg.lstsq)
        if refined is not None:
            pre, y0 = refined
            info["preconditioner"] = "refined"
            x, normr, g, passed = _warm_start(X, y, pre, y0, tol)
            if passed:
                info["iterations"] = 0 if y.ndim == 1 else [0] * k
                return _result(X, y, x, pre, tol, info, (normr, g))
    maxiter = int(min(n, 20 * d + 100)) if maxiter is None else maxiter
    Y, iters, _ = block_lsmr(
        lambda V: _times(X, pre.apply(V)),
        lambda U: pre.apply_t(_t_times(X, U)),
        y if y.ndim == 2 else y[:, None],
        y0 if y0.ndim == 2 else y0[:, None],
        atol=tol, btol=tol, maxiter=maxiter, xp=xp, tall=_DaskTall(xp, y0.dtype),
    )
    x = pre.apply(Y)
    if y.ndim == 1:
        x, iters = x[:, 0], int(iters[0])
    info["iterations"] = iters if y.ndim == 1 else [int(i) for i in iters]
    return _result(X, y, x, pre, tol, info)


def _result(X, y, x, pre, tol, info, residual=None):
    """``(x, info, cost)`` of the precondition route (cost None: ``lstsq`` computes it), for a
    rank-deficient sketch after the normal equations' check, as in memory."""
    if not pre.rank_deficient:
        return x, info, None if residual is None else residual[0]
    missed, normr = _sketch_missed_directions(X, y, x, tol, residual)
    if missed:  # as in memory (gpusketch.linalg.lstsq)
        x, direct = _direct(X, y, stacklevel=6)
        info.update({"fallback": "direct", "sketch_rank": pre.rank, "rank_deficient": direct["rank_deficient"]})
        return x, info, None
    _warn_deficient(X, f" (sketch rank {pre.rank})", stacklevel=5)
    return x, info, normr


def _refine_block(x_block, y_block, Rinv):
    Q = x_block if Rinv is None else x_block @ Rinv
    return Q.T @ Q, Q.T @ y_block


def _refine(X, y, pre, xp, gram_only=False):
    """``refine_preconditioner`` over Dask's row blocks: each sums its ``Q = X_blk M``'s Gram
    and ``Qᵀ y_blk`` where it lives (M: R⁻¹, or a rank-deficient sketch's ``V_r Σ_r⁻¹``), and
    the small sums are added in a tree; where ``gram_refines``, ``X_blk``'s own Gram and
    ``X_blkᵀ y_blk``, M applied to the sums."""
    import dask

    X = X if len(X.chunks[1]) == 1 else X.rechunk({1: -1})  # whole rows: X_blk M needs them
    if y.ndim == 2 and len(y.chunks[1]) > 1:
        y = y.rechunk({1: -1})
    M = refinement_matrix(pre, y.dtype, xp)  # as in memory: a float64 y, a float64 x
    gram = gram_refines(X, pre, M)  # as in memory: X's own Gram where κ(R) allows
    if gram_only and not gram:
        return None
    xb, yb = X.to_delayed(), y.to_delayed()
    parts = [dask.delayed(_refine_block)(xb[i, 0], yb[i] if y.ndim == 1 else yb[i, 0], None if gram else M)
             for i in range(len(X.chunks[0])) if X.chunks[0][i] > 0]
    (G, c), = dask.compute(_tree_sum(parts, _add_each))
    return (finish_gram_refinement if gram else finish_refinement)(G, c, pre, M, xp)


def _warm_start(X, y, pre, y0, tol):
    """``(x, ||y − Xx||, Xᵀ(y − Xx), passed)`` for ``x = P y0``: ``gpusketch.linalg.lstsq``'s
    test of the refined warm start (``warm_start_passes``), r persisted between its two
    passes over X."""
    import dask

    x = pre.apply(y0)
    r = (y - _times(X, x)).persist()
    g = _t_times(X, r)
    r2, y2 = dask.compute((r * r).sum(axis=0), (y * y).sum(axis=0))
    xp = array_namespace(r2)
    normr, pg = xp.sqrt(r2), pre.apply_t(g)
    normar, normy0 = xp.sqrt((pg * pg).sum(axis=0)), xp.sqrt((y0 * y0).sum(axis=0))
    return x, normr, g, warm_start_passes(normar, normr, xp.sqrt(y2), normy0, tol)


def _sketch_missed_directions(X, y, x, tol, residual=None):
    """True when ``Xᵀ(y − Xx)`` fails the normal equations: x, confined to the row space of a
    rank-deficient SX, misses directions of X (``gpusketch.linalg.lstsq._sketch_missed_directions``),
    and ``||y − Xx||``; ``residual`` ``(||r||, Xᵀr)`` where the warm start's test has them."""
    import dask

    if residual is None:
        r = (y - _times(X, x)).persist()  # read by Xᵀr and by its norm
        g = _t_times(X, r)
        normX2, r2 = dask.compute(_sum_squares(X), (r * r).sum(axis=0))
        normr = array_namespace(r2).sqrt(r2)
    else:
        (normX2,), (normr, g) = dask.compute(_sum_squares(X)), residual
    xp = array_namespace(normr)
    g2 = (g * g).sum(axis=0)
    return bool((xp.sqrt(g2) > missed_direction_tol(tol, X.dtype) * math.sqrt(float(normX2)) * normr).any()), normr


def _scale_columns(block, coef, block_info=None):
    """A block of U times its columns' entries of coef (U may be chunked along columns)."""
    lo, hi = block_info[0]["array-location"][1]
    return block * coef[lo:hi]


class _DaskTall(TallBlock):
    """``block_lsmr``'s n × k block as a Dask array, persisted on the workers at each
    update (``U ← U·diag(−α) + X P V``); only its k column norms come back."""

    def norms(self, U):
        return np.sqrt(to_host(_small((U * U).sum(axis=0)))).astype(np.float64)

    def scale(self, U, coef):
        return U.map_blocks(_scale_columns, self.xp.asarray(coef, dtype=self.dtype), dtype=U.dtype)

    def add(self, U, M):
        return (U + M).persist()

    def take(self, U, cols):
        return U[:, cols]


def _block_gram(block, Rinv=None):
    """``YᵀY`` in float64 for a row block Y of X (times ``Rinv`` when given), in cache-sized
    row slices (a sparse block densified a slice at a time)."""
    xp = array_namespace(block.data if is_sparse(block) else block)
    d = block.shape[1] if Rinv is None else Rinv.shape[1]
    rows = max(256, (1 << 20) // (8 * block.shape[1])) if xp is np else block.shape[0]
    G = xp.zeros((d, d), dtype=xp.float64)
    for a in range(0, block.shape[0], rows):
        Y = to_dense(block[a : a + rows]).astype(xp.float64, copy=False)
        if Rinv is not None:
            Y = Y @ Rinv
        G += Y.T @ Y
    return G


def _cholesky_qr2_scores(X):
    """Exact leverage scores of X (one column chunk, n >= 2d) from CholeskyQR2, as
    ``gpusketch.leverage_scores(exact=True)`` takes them where it is safe: two passes for the
    Grams of X and of ``X R₁⁻¹`` (float64, summed over blocks), then the row norms of
    ``X R₁⁻¹R₂⁻¹`` block by block, lazily.  None where a Cholesky fails, ``Q₁`` fails the
    orthogonality test, or R is rank deficient by the rule: the caller's Householder QR
    decides then (and NaN or Inf lands there)."""
    from dask import delayed

    blocks = X.to_delayed().ravel()
    G = _tree_sum([delayed(_block_gram)(b) for b in blocks]).compute()
    xp = array_namespace(G)
    first = _cholesky_inverse(G, xp)
    if first is None:
        return None
    Rinv1 = first[0]
    G2 = _tree_sum([delayed(_block_gram)(b, Rinv1) for b in blocks]).compute()
    second = _cholesky_inverse(G2, xp)
    if second is None or not _orthonormal_enough(G2, xp):
        return None
    dtype = X.dtype
    shape = factored_rank_shape(X.shape, dtype)  # (the factors are float64)
    R = second[1].T @ first[1].T
    if not (full_rank(R.astype(dtype), shape) or _full_rank_by_svd(R, shape, dtype, xp)):
        return None
    meta = _dense_meta(X, dtype).reshape(0)
    return X.map_blocks(_block_scores, Rinv1 @ second[0], dtype, drop_axis=1, dtype=dtype, meta=meta)


def _block_scores(block, Rinv, dtype):
    return _product_row_norms2(block, Rinv, array_namespace(Rinv)).astype(dtype, copy=False)


def _range_rotation(R, shape):
    """d × d W with ``Q W`` an orthonormal basis of range(X), X = QR, padded with zero columns.

    The identity when R is of full rank by the SVD's rule.  Otherwise Q has d
    orthonormal columns but X only rank r < d: with ``R = U_R Σ Vᵀ`` the left
    singular vectors of X are ``Q U_R``, and W keeps U_R's first r columns.
    (Q's own row norms summed to d, not r: scores off by up to 1.)
    """
    _check_sketch_finite(R, "X", "its R factor")  # at compute time: the scores are lazy
    xp = array_namespace(R)
    W = xp.eye(R.shape[1], dtype=R.dtype)
    if not full_rank(R, shape):  # possibly: the SVD's rank rule decides
        U, s, _ = xp.linalg.svd(R)
        W = U * (xp.arange(s.size) < svd_rank(s, shape))
    return W


def _rotated_row_norms2(Q, W):
    xp = array_namespace(Q)
    if not bool((W == xp.eye(W.shape[0], dtype=W.dtype)).all()):  # R of full rank: skip a GEMM
        Q = Q @ W
    return xp.einsum("ij,ij->i", Q, Q)  # no n_b × d temporary


def leverage_scores(X, *, exact=False, seed=None):
    """Leverage scores of the rows of a Dask X (n × d), as a lazy Dask vector.

    ``exact=True``: as in memory, row norms of Q from CholeskyQR2 where it is
    safe (n >= 2d; the Grams of X and of ``X R₁⁻¹`` take two passes in the call,
    the scores one more when computed), else from Dask's tall-skinny QR
    ``X = QR``, or of Q times R's leading left singular vectors when R is rank
    deficient (the scores then sum to rank(X)).  CholeskyQR2 took 1.1-1.6 s
    against the TSQR's 6.6 s at 2²⁰ × 64 in 4 chunks (2-core CPU; 0.7-0.9 s
    in memory).  Otherwise the
    sketched route of ``gpusketch.leverage_scores`` with the same OSNAP and
    Gaussian for the same seed (so the same estimates): ``SX = QR``, then
    ``||x_i R⁻¹ G||²`` with ``O(log n)`` Gaussian columns; one pass for the
    sketch, one for the scores.  Exact, as in memory, when ``4d + 10 >= n``
    (no sketch would have fewer rows than X).

    Parameters
    ----------
    X : dask.array.Array of shape (n, d), n >= d, NumPy or CuPy blocks
        Or SciPy/cupyx sparse blocks: the sketched route reads them sparse;
        ``exact=True`` densifies them for the QR (its Q is dense anyway).
    exact : bool
    seed : int, optional

    Returns
    -------
    dask.array.Array of shape (n,)
        Lazy; ``.compute()`` gives ``gpusketch.leverage_scores(X.compute(), seed=seed)``
        within round-off.  NaN or Inf in X raise ``ValueError``: on the sketched
        route here (found in the sketch), on the exact one when the scores are
        computed (found in R).

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from gpusketch import dask as gsd
    >>> A = np.random.default_rng(0).standard_normal((2000, 5))
    >>> round(float(gsd.leverage_scores(da.from_array(A, chunks=(500, 5)), exact=True).sum().compute()), 6)
    5.0
    """
    with annotate("gpusketch.dask.leverage_scores"):
        X, da = _check_dask(X, "X", ndim=(2,), nonempty=True)
        n, d = X.shape
        if n < d:
            raise ValueError(f"leverage scores need n >= d, got X of shape {X.shape}")
        if exact or embedding_rows(d) >= n:  # as in memory: no sketch has fewer rows than X
            X = X.rechunk({1: -1})
            scores = _cholesky_qr2_scores(X) if n >= 2 * d else None
            if scores is not None:
                return scores
            if is_sparse(X._meta):  # the QR's blocks are dense (Q is, anyway)
                X = X.map_blocks(to_dense, dtype=X.dtype, meta=_dense_meta(X, X.dtype))
            Q, R = da.linalg.qr(X)
            W = R.map_blocks(_range_rotation, (n, d), dtype=R.dtype)
            return da.map_blocks(_rotated_row_norms2, Q, W, drop_axis=1, dtype=Q.dtype)
        seed = check_seed(seed)
        SX = _small(sketch(embedding_osnap(n, d, seed), X))
        _check_sketch_finite(SX, "X")
        xp = array_namespace(SX)
        pre = SketchPreconditioner(SX, xp, solve=False)
        if pre.rank == 0:  # X = 0, as in memory; lazy, on X's chunks and device
            return _times(X, xp.zeros(d, dtype=X.dtype))
        G = _gaussian(jl_columns(n), pre.rank, derive_seed(seed, 1), xp, X.dtype)
        # Each block's ||x_i P||² as in memory: in cache-sized row blocks on a CPU worker, not the
        # whole n_b × t product (t = O(log n) columns, more than d) and its square.
        X = X.rechunk({1: -1})
        P = pre.apply(G)
        meta = _dense_meta(X, np.result_type(X.dtype, P.dtype)).reshape(0)
        return X.map_blocks(_block_product_row_norms2, P, drop_axis=1, dtype=meta.dtype, meta=meta)


def leverage_sample(X, s, *, gamma=0.5, osnap=None, seed=None):
    """Leverage-score row sampling of a Dask X (Algorithm 2, Lemma 7.3), as ``gpusketch.leverage_sample``.

    Three passes over X: its sketch (for ``R``), the estimate of
    ``||XR⁻¹||_F²``, then each block keeps its rows by Lemma 7.3's two stages
    with the uniforms of its global rows.  The operator returned is small
    (the kept indices and scales); apply it with ``sketch(S, X)``.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d), NumPy or CuPy blocks, or SciPy/cupyx sparse ones
    s, gamma, osnap, seed
        As in ``gpusketch.leverage_sample``.

    Returns
    -------
    Sampling or Composed
        The operator ``gpusketch.leverage_sample(X.compute(), s, ...)``
        returns for the same seed (its rows decided by the same sketches,
        Gaussians and uniforms; estimates equal to round-off).

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from gpusketch import dask as gsd
    >>> A = np.random.default_rng(0).standard_normal((20000, 5))
    >>> X = da.from_array(A, chunks=(5000, 5))
    >>> S = gsd.leverage_sample(X, 500, seed=1)
    >>> sv = np.linalg.svd(gsd.sketch(S, X).compute() @ np.linalg.inv(np.linalg.qr(A)[1]), compute_uv=False)
    >>> bool(0.6 < sv.min() ** 2 and sv.max() ** 2 < 1.4)
    True
    """
    from dask import delayed

    with annotate("gpusketch.dask.leverage_sample"):
        X, da = _check_dask(X, "X", ndim=(2,), nonempty=True)
        s, gamma, osnap = check_leverage_sample(s, gamma, osnap)
        seed = check_seed(seed)
        n, d = X.shape
        X = X.rechunk({1: -1})
        SX = to_dense(_small(sketch(embedding_osnap(n, d, seed), X)))
        _check_sketch_finite(SX, "X")
        xp = array_namespace(SX)
        P2, P4, P3 = sample_products(SketchPreconditioner(SX, xp, solve=False), X.shape, gamma, seed, xp, X.dtype)
        meta = _dense_meta(X, np.result_type(X.dtype, P2.dtype)).reshape(0)
        frob = float(X.map_blocks(_block_product_row_norms2, P2, drop_axis=1, dtype=meta.dtype, meta=meta).sum()
                     .compute())
        off, blocks = _offsets(X.chunks[0]), X.to_delayed().ravel()
        parts = delayed(list)([delayed(kept_rows)(blocks[i], P4, P3, frob, off[i], n, s, gamma, seed)
                               for i in range(len(blocks)) if X.chunks[0][i] > 0]).compute()
        idx = xp.concatenate([xp.asarray(i) for i, _ in parts])
        f = xp.concatenate([xp.asarray(q) for _, q in parts])
        return sample_result(idx, f, X.shape, s, osnap, seed, xp)


def randomized_svd(X, k, *, oversample=10, power_iters=2, test_matrix="gaussian", seed=None):
    """Rank-k randomized SVD of a Dask X (n × d, d moderate), HMT Algorithm 4.4.

    Returns ``(U, s, Vt)``: U a lazy Dask array (n × k), s and Vt NumPy/CuPy.
    The n × l range basis stays distributed (Dask's tall-skinny QR); each
    power iteration reads X twice (``XᵀQ`` and ``X Z``), as in the in-memory
    version.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d), NumPy or CuPy blocks, or SciPy/cupyx sparse ones
    k : int, 1 <= k <= min(n, d)
    oversample, power_iters : int >= 0
    test_matrix : {"gaussian", "sparse_sign", "srht", "countsketch", "fast_embedding"} or SketchOperator
        ``Ω`` of shape ``(l, d)``, as in ``gpusketch.randomized_svd``; the range
        sketch ``X Ωᵀ`` is taken block by block (``sketch_columns``).
    seed : int, optional

    Returns
    -------
    U : dask.array.Array of shape (n, k)
    s : (k,) array, descending
    Vt : (k, d) array
        Signs fixed as ``gpusketch.randomized_svd``'s: the largest-magnitude
        entry of each row of Vt is positive.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from gpusketch import dask as gsd
    >>> A = np.random.default_rng(0).standard_normal((1000, 6)) * [10, 5, 1, 0.1, 0.1, 0.1]
    >>> U, s, Vt = gsd.randomized_svd(da.from_array(A, chunks=(250, 6)), 2, seed=1)
    >>> bool(np.allclose(s, np.linalg.svd(A, compute_uv=False)[:2]))
    True
    """
    with annotate("gpusketch.dask.randomized_svd"):
        X, da = _check_dask(X, "X", ndim=(2,), nonempty=True)
        n, d = X.shape
        k = check_positive_int(k, "k")
        if k > min(n, d):
            raise ValueError(f"k must be at most min(n, d) = {min(n, d)}, got {k}")
        oversample = check_positive_int(oversample, "oversample", minimum=0)
        power_iters = check_positive_int(power_iters, "power_iters", minimum=0)
        seed = check_seed(seed)
        l = min(k + oversample, n, d)
        Omega = make_sketch(test_matrix, l, d, seed=seed, name="test_matrix")
        X1 = X.rechunk({1: -1})
        xp = array_namespace(_dense_meta(X1, X.dtype))
        Y = sketch_columns(X1, Omega).persist()  # n × l, the range sketch; the QR reads it once more
        if not bool(da.isfinite(Y).all().compute()):
            raise ValueError("X contains NaN or Inf (found in its sketch X Ω)")
        Q, _ = da.linalg.qr(Y)
        for _ in range(power_iters):
            Z = _t_times(X1, Q)
            Z = xp.linalg.qr(Z)[0]
            Q, _ = da.linalg.qr(_times(X1, Z))
            Q = Q.persist()
        B = _small(Q.T @ X1) if not is_sparse(X1._meta) else _t_times(X1, Q).T
        Ub, s, Vt = xp.linalg.svd(B, full_matrices=False)
        sign = svd_signs(Vt[:k], xp)  # as gpusketch.randomized_svd's
        return Q @ (Ub[:, :k] * sign), s[:k], Vt[:k] * sign[:, None]


def _block_hashed_columns(block, T):
    return _hashed_columns(block, T, array_namespace(block.data))


def _block_columns(block, omega):
    return to_dense(block[:, omega])


def _block_col_sq_norms(block):
    return _col_sq_norms(block, array_namespace(block.data if is_sparse(block) else block))[None, :]


def _block_cols_times(block, cols, M):
    return to_dense(block[:, cols] @ M)


def _block_kept_rows(V, start, seed, s, n, k):
    """Rows of a block of V kept by ``low_rank``'s right-factor sample, as global indices, and their
    probabilities ``f = min(1, s (||V_i||²/(2k) + 1/(2n)))``."""
    xp = array_namespace(V)
    f = xp.minimum(1.0, s * (0.5 * xp.einsum("ij,ij->i", V, V) / k + 0.5 / n))
    keep = xp.flatnonzero(_kernels.uniforms(V.shape[0], seed, xp, start=start) < f)
    return keep + start, f[keep]


def low_rank(X, k, *, eps=0.1, right="sketch", seed=None):
    """Rank-k approximation ``X ≈ V Y`` of a Dask X (Chepurko et al. Theorem 7.13), as ``gpusketch.low_rank``.

    The same steps as in memory, with the n-row quantities distributed:
    the column sketch ``XT`` and the chosen columns are formed block by
    block, ``U`` and ``V`` come from Dask's tall-skinny QR (kept on the
    workers), and the sketches ``S X T``, ``T₁X``, ``T₁U``, ``UᵀX`` and the
    right factor's row sample are small and solved in memory.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d), NumPy or CuPy blocks, or SciPy/cupyx sparse ones
    k : int, 1 <= k < min(n, d)
    eps : float in (0, 1)
    right : {"sketch", "exact"}
    seed : int, optional
        As in ``gpusketch.low_rank``.

    Returns
    -------
    LowRankResult
        ``.V`` a Dask array (n × k, orthonormal columns, persisted),
        ``.X`` (k × d, NumPy or CuPy), ``.info``.  For the same seed, the
        sketches, samples and so ``V X`` are those of ``gpusketch.low_rank``
        on the computed X, within round-off (the QRs may choose other signs
        for V's columns).

    Notes
    -----
    Passes over X: two for the column sketch (its row sketch ``S X T``,
    then the chosen columns), one for ``UᵀX`` and the column norms (two
    with sparse blocks), one for ``T₁X`` and ``T₁U``, one for ``V``, and
    one for the right factor (its sampled rows, or ``VᵀX`` for
    ``right="exact"``).

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from gpusketch import dask as gsd
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((4000, 6)) @ rng.standard_normal((6, 300)) + 1e-3 * rng.standard_normal((4000, 300))
    >>> res = gsd.low_rank(da.from_array(A, chunks=(1000, 300)), 6, seed=1)
    >>> s = np.linalg.svd(A, compute_uv=False)
    >>> bool(np.linalg.norm(A - res.V.compute() @ res.X) <= 1.1 * np.sqrt((s[6:] ** 2).sum()))
    True
    """
    import time

    import dask

    with annotate("gpusketch.dask.low_rank"):
        X, da = _check_dask(X, "X", ndim=(2,), nonempty=True)
        n, d = X.shape
        k, eps = check_low_rank(X.shape, k, eps, right)
        seed = check_seed(seed)
        info = {"seed": seed, "timings": {}}
        t0 = time.perf_counter()
        X = X.rechunk({1: -1})
        sparse = is_sparse(X._meta)
        dmeta = _dense_meta(X, X.dtype)
        xp = array_namespace(dmeta)
        rows = X.chunks[0]
        # 1-2. The column sketch XT, its row sketch S X T (in memory) and 2k chosen columns of XT.
        T = column_sketch(d, k, seed)
        if T is None:
            XT = X
        elif sparse:
            XT = X.map_blocks(_block_hashed_columns, T, chunks=(rows, (T.shape[0],)), dtype=X.dtype, meta=X._meta)
        else:
            XT = sketch_columns(X, T)
        t = XT.shape[1]
        S = row_embedding(n, t, seed)
        SXT = to_dense(sketch(S, XT).compute())
        _check_sketch_finite(SXT, "X")
        omega = chosen_columns(SXT, k, seed, xp)
        chosen = XT.map_blocks(_block_columns, omega, chunks=(rows, (int(omega.size),)), dtype=X.dtype, meta=dmeta)
        U = da.linalg.qr(chosen)[0].persist()
        # 3. Residual sampling of columns: UᵀX and the column norms.
        norms = X.map_blocks(_block_col_sq_norms, chunks=((1,) * len(rows), (d,)), dtype=X.dtype, meta=dmeta)
        if sparse:
            UtX, colsq = _t_times(X, U).T, norms.sum(axis=0).compute()
        else:
            XtU, colsq = dask.compute(X.T @ U, norms.sum(axis=0))
            UtX = XtU.T
        cols = residual_columns(colsq, UtX, k, eps, seed, xp)
        info.update({"t": t, "sketch_rows": S.shape[0], "omega": int(omega.size),
                     "residual_columns": int(cols.size), "affine_rows": 0})
        if cols.size == 0:  # X lies in span(U): UᵀX gives V, as in memory
            V = (U @ top_left_singular(UtX, k, xp)).persist()
        else:
            # 4. The affine embedding's solve on T₁X and T₁U, then V = orth(U C_U + X_cols C_A).
            T1 = affine_sketch(n, U.shape[1] + int(cols.size), seed)
            info["affine_rows"] = T1.shape[0]
            T1X, T1U = _sketch_with_rhs(T1, X, U)
            coef_u, coef_a = affine_coefficients(to_dense(T1X), T1U, colsq, cols, n, k, xp)
            part = X.map_blocks(_block_cols_times, cols, coef_a, chunks=(rows, (k,)), dtype=coef_a.dtype, meta=dmeta)
            V = da.linalg.qr(U @ coef_u + part)[0].persist()
        info["timings"]["left_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        Y = _dask_right_factor(X, V, k, eps, seed, xp, info) if right == "sketch" else None
        if Y is None:
            Y = _t_times(X, V).T
        info["timings"]["right_s"] = time.perf_counter() - t0
        return LowRankResult(V, Y, info)


def _block_rank_sketch(block, a, b, n, z, seed):
    xp = array_namespace(block.data if is_sparse(block) else block)
    return _sketch_rows(block, z, seed, xp, rows=(a, b, n))


def _block_nnz(block):
    return block.nnz if is_sparse(block) else block.size  # stored entries, as in memory


def rank(X, *, seed=None):
    """Numerical rank of a Dask X by Algorithm 3 of Chepurko et al., as ``gpusketch.rank``.

    Each attempt sketches X's rows block by block with the column slices of
    the same rank-preserving sketch (one pass; its values and hashes are
    functions of the global row), and the small sketch is decided in
    memory by the in-memory steps: the column sketch, the adaptive
    ``_sketch_rank`` and the rank rule with X's dimensions.  An attempt
    whose sketch size reaches n computes X whole (it is then small).

    Parameters
    ----------
    X : dask.array.Array of shape (n, d), NumPy or CuPy blocks, or SciPy/cupyx sparse ones
    seed : int, optional

    Returns
    -------
    int
        ``gpusketch.rank(X.compute(), seed=seed)`` (the same sketches; the sums
        over blocks differ by round-off).  A sparse X's nnz, which sets the
        first sketch size, takes a pass over its blocks' structure.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from gpusketch import dask as gsd
    >>> A = np.random.default_rng(0).standard_normal((4000, 7)) @ np.random.default_rng(1).standard_normal((7, 60))
    >>> gsd.rank(da.from_array(A, chunks=(1000, 60)), seed=1)
    7
    """
    from dask import delayed

    with annotate("gpusketch.dask.rank"):
        X, da = _check_dask(X, "X", ndim=(2,))
        n, d = X.shape
        seed = check_seed(seed)
        if 0 in X.shape:
            return 0
        X = X.rechunk({1: -1})
        xp = array_namespace(_dense_meta(X, X.dtype))
        sparse = is_sparse(X._meta)
        blocks = X.to_delayed().ravel()
        nnz = sum(delayed(list)([delayed(_block_nnz)(b) for b in blocks]).compute()) if sparse else n * d
        off = _offsets(X.chunks[0])
        live = [i for i in range(len(blocks)) if X.chunks[0][i] > 0]

        def sketch_rows(z, s):
            M = _tree_sum([delayed(_block_rank_sketch)(blocks[i], off[i], off[i + 1], n, z, s) for i in live]).compute()
            _check_sketch_finite(to_dense(M), "X")
            return M

        def whole():
            M = X.compute()
            _check_sketch_finite(to_dense(M), "X", "it")
            return M

        return sketched_rank((n, d), nnz, sketch_rows, whole, seed, xp)


def _block_rank_columns(block, z, seed):
    """One row block of ``A S_Rᵀ`` for the rank-preserving z × d sketch S_R (``independent_rows``' B)."""
    xp = array_namespace(block.data if is_sparse(block) else block)
    return to_dense(_sketch_rows(block.T, z, seed, xp).T)


def independent_rows(X, *, seed=None):
    """Indices of rank(X) linearly independent rows of a Dask X (Algorithms 4-5), as ``gpusketch.independent_rows``.

    ``rank`` of X first (its passes), then, as in memory, ``B``: X with its
    columns sketched to ``2k + 10`` by a rank-preserving sketch (block by
    block; persisted on the workers, n × (2k + 10)) unless X is that
    narrow; rows of B drawn by ``leverage_sample`` (three passes over B),
    the candidates gathered and the independent ones picked in memory.
    Where four samples fail, the in-memory call's last resort, a pivoted QR
    of all of X, computes X whole.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d), NumPy or CuPy blocks, or SciPy/cupyx sparse ones
    seed : int, optional

    Returns
    -------
    (rank,) int64 array, sorted, NumPy or CuPy like the blocks
        The rows ``gpusketch.independent_rows(X.compute(), seed=seed)`` picks
        (the same sketches and samples; sums over blocks differ by round-off).

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from gpusketch import dask as gsd
    >>> A = np.random.default_rng(0).standard_normal((3000, 4)) @ np.random.default_rng(1).standard_normal((4, 30))
    >>> rows = gsd.independent_rows(da.from_array(A, chunks=(1000, 30)), seed=1)
    >>> len(rows), int(np.linalg.matrix_rank(A[rows]))
    (4, 4)
    """
    with annotate("gpusketch.dask.independent_rows"):
        X, da = _check_dask(X, "X", ndim=(2,))
        n, d = X.shape
        seed = check_seed(seed)
        X = X.rechunk({1: -1})
        xp = array_namespace(_dense_meta(X, X.dtype))
        k = rank(X, seed=derive_seed(seed, 0))
        if k == 0:
            return xp.zeros(0, dtype=xp.int64)
        B = X
        if 2 * k + 10 < d:
            z = 2 * k + 10
            B = X.map_blocks(_block_rank_columns, z, derive_seed(seed, 1), chunks=(X.chunks[0], (z,)), dtype=X.dtype,
                             meta=_dense_meta(X, X.dtype)).persist()
        return sampled_independent_rows(
            (n, d), k, lambda s, sd: leverage_sample(B, s, seed=sd),
            lambda cand: B.compute() if cand is None else _gather_rows(B, cand), X.compute, seed, xp)


def _block_take(block, idx):
    return block[array_namespace(block.data if is_sparse(block) else block).asarray(idx)]


def _gather_rows(B, rows):
    """Rows ``rows`` (sorted host indices) of a Dask B with one column chunk, computed: each block
    gives its own with indices on its device."""
    import dask

    off, blocks = _offsets(B.chunks[0]), B.to_delayed().ravel()
    parts = []
    for i in range(len(blocks)):
        lo, hi = np.searchsorted(rows, [off[i], off[i + 1]])
        if hi > lo:
            parts.append(dask.delayed(_block_take)(blocks[i], rows[lo:hi] - off[i]))
    got = dask.compute(*parts)
    if is_sparse(B._meta):
        return sparse_module(array_namespace(got[0].data)).vstack(got).tocsr()
    return array_namespace(*got).concatenate(got, axis=0)


def _dask_right_factor(X, V, k, eps, seed, xp, info):
    """``low_rank``'s sketched right factor (``_sketched_right_factor`` in memory): rows of V kept
    by the same uniforms of their global indices, then the solve on them; None after four
    samples that do not determine it."""
    from dask import delayed

    n = V.shape[0]
    off, vb = _offsets(V.chunks[0]), V.to_delayed().ravel()
    s = right_sample_size(k, eps)
    for attempt in range(4):
        useed = derive_seed(seed, 4 if attempt == 0 else 5 + attempt)
        parts = delayed(list)([delayed(_block_kept_rows)(vb[i], off[i], useed, s, n, k)
                               for i in range(len(vb)) if V.chunks[0][i] > 0]).compute()
        idx = xp.concatenate([xp.asarray(i) for i, _ in parts])
        if idx.size >= k:
            S = sample_operator(idx, xp.concatenate([xp.asarray(f) for _, f in parts]), n, xp)
            Y = right_from_sample(sketch(S, V).compute(), lambda: to_dense(sketch(S, X).compute()), k, xp)
            if Y is not None:
                info["right_rows"] = int(idx.size)
                return Y
        s *= 2
    return None


def _check_vector_system(X, y):
    """``(X, y, da)`` for the robust regressions: X a nonempty 2-D Dask array, y (Dask or in
    memory, ``_dask_rhs``) a vector of X's rows, rechunked to X's row chunks."""
    X, da = _check_dask(X, "X", ndim=(2,), nonempty=True)
    y = _dask_rhs(y, X, da)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y has {y.shape[0]} rows but X has {X.shape[0]}")
    return X, (y if y.chunks[0] == X.chunks[0] else y.rechunk({0: X.chunks[0]})), da


def _stacked_rows(block, col, s=None):
    """``diag(s) [block col]`` of one row block, its (rows × 1) column of y and scales s
    (rows × 1; None: unscaled), formed once: CSR for a sparse block."""
    xp = array_namespace(col)
    if is_sparse(block):
        M = sparse_module(xp).hstack([block, sparse_module(xp).csr_matrix(col)]).tocsr()
        return M if s is None else M.multiply(s).tocsr()
    d = block.shape[1]
    out = xp.empty((block.shape[0], d + 1), dtype=xp.result_type(block.dtype, col.dtype))
    if s is None:
        out[:, :d], out[:, d:] = block, col
    else:
        xp.multiply(block, s, out=out[:, :d])
        xp.multiply(col, s, out=out[:, d:])
    return out


def _stacked_sketch_block(S, a, block, y, s):
    """``S[:, a:a+n_b] diag(s) [block y]`` summed over row slices: ``diag(s)[block y]`` is
    formed a slice at a time, as ``streamed_leverage_scores`` forms its rows in memory."""
    M, xp = RowSlices(block, s, y), array_namespace(block)
    rows = max(1, _block_bytes(_SLICE_BLOCK_BYTES, xp) // (8 * M.shape[1]))
    out = None
    for r in range(0, M.shape[0], rows):
        c = min(M.shape[0], r + rows)
        part = to_dense(S[:, a + r : a + c] @ M[r:c])
        out = part if out is None else out + part
    return out


def _stacked_row_norms2(block, ycol, scol=None, *, P):
    """``||(diag(s) [block y] P)_i||²`` of one row block (y and s as columns: Dask aligns them
    with X's row blocks), in cache-sized row slices (``RowSlices.product_row_norms2``)."""
    return RowSlices(block, None if scol is None else scol[:, 0], ycol[:, 0]).product_row_norms2(P)


def _stacked_leverage_scores(X, y, s, seed):
    """``leverage_scores(diag(s) [X y], seed=seed)`` (sketched route) for dense blocks, with
    ``diag(s) [X y]`` never stored: each pass forms it a row slice at a time
    (``RowSlices``), as ``streamed_leverage_scores`` does in memory."""
    from dask import delayed

    n, d = X.shape[0], X.shape[1] + 1
    S = embedding_osnap(n, d, seed)
    off, xb, yb = _offsets(X.chunks[0]), X.to_delayed().ravel(), y.to_delayed()
    sb = [None] * len(xb) if s is None else s.to_delayed()
    live = [i for i in range(len(xb)) if X.chunks[0][i] > 0]
    SM = _tree_sum([delayed(_stacked_sketch_block)(S, off[i], xb[i], yb[i], sb[i]) for i in live]).compute()
    _check_sketch_finite(SM, "X")
    xp = array_namespace(SM)
    pre = SketchPreconditioner(SM, xp, solve=False)
    dtype = np.result_type(X.dtype, y.dtype)
    meta = _dense_meta(X, dtype).reshape(0)
    if pre.rank == 0:  # [X y] = 0: scores 0, as in memory
        return _times(X, xp.zeros(X.shape[1], dtype=dtype))
    P = pre.apply(_gaussian(jl_columns(n), pre.rank, derive_seed(seed, 1), xp, dtype))
    cols = (y[:, None],) if s is None else (y[:, None], s[:, None])
    return X.map_blocks(_stacked_row_norms2, *cols, P=P, drop_axis=1, dtype=dtype, meta=meta)


def _sampled_rows(block, y, q, start, seed, p):
    """The rows of a block of X and y kept with probabilities q, scaled by ``q^{−1/p}``, on the
    host (``gpusketch.lp_regression``'s sample, with the uniforms of rows ``start:``)."""
    xp = array_namespace(q)
    keep = xp.flatnonzero(_kernels.uniforms(q.shape[0], seed, xp, start=start) < q)
    scale = q[keep] ** (-1.0 / p)
    return to_host(to_dense(block[keep]) * scale[:, None]), to_host(y[keep] * scale)


def lp_regression(X, y, p=1, *, m=None, seed=None):
    """``min_x ||Xx − y||_p`` (1 <= p <= 2) of a Dask X by ℓp Lewis-weight sampling.

    ``gpusketch.lp_regression`` with X and y distributed: sketched Lewis
    weights of ``[X y]``, a sample of about m rows by them, the reduced
    problem solved in memory (HiGHS for p = 1, IRLS for 1 < p < 2), and its
    cost on all the data.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d), n >= d
        NumPy or CuPy blocks, or SciPy/cupyx sparse ones (kept sparse:
        ``[X y]`` is stacked a block at a time).
    y : dask.array.Array, or NumPy/CuPy array on X's blocks' device, of shape (n,)
    p : float in [1, 2]
    m : int, optional
        Expected sample size, as in ``gpusketch.lp_regression``; from
        ``m >= n`` on, X and y are computed and solved whole.
    seed : int, optional

    Returns
    -------
    RobustResult
        ``.x`` (NumPy or CuPy, like the blocks), ``.cost = ||Xx − y||_p``,
        ``.info`` with ``m``, ``rows`` (kept), ``p`` and ``seed``.  For the
        same seed, the answer of ``gpusketch.lp_regression`` on the computed
        arrays, within round-off: the same sketches, Gaussians and
        uniforms (the uniforms are a function of the global row index).

    Notes
    -----
    Passes over X: two for each fixed-point step of the weights (the
    sketch, then the scores; ``lewis_weights``' count, 9 steps for p = 1
    at n = 10⁶, one for p = 2), one to gather the sample and one for the
    cost.  The weights stay on the workers (persisted), as n-vectors of
    X's row chunks.  Each step's ``diag(s) [X y]`` is never stored: dense
    blocks form it a row slice at a time inside each pass, as
    ``streamed_leverage_scores`` does in memory (formed whole per block,
    the call took 1.7-1.8x the in-memory time at 2²⁰ × 64 in four
    chunks on the 2-core CPU; 1.0-1.2x so).  y is read once more first for
    NaN and Inf; a NaN in X shows in the first sketch.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from gpusketch import dask as gsd
    >>> from gpusketch.robust.lp import solve_lp_small
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((20_000, 5)); b = A @ np.ones(5) + rng.laplace(size=20_000)
    >>> res = gsd.lp_regression(da.from_array(A, chunks=(5000, 5)), da.from_array(b, chunks=5000), p=1, seed=1)
    >>> bool(res.cost <= 1.05 * np.abs(A @ solve_lp_small(A, b, 1.0) - b).sum())
    True
    """
    with annotate("gpusketch.dask.lp_regression"):
        X, y, da = _check_vector_system(X, y)
        n, d = X.shape
        p = float(check_real_in(p, "p", 1, 2))
        if n < d:
            raise ValueError(f"lp_regression needs n >= d, got X of shape {X.shape}")
        seed = check_seed(seed)
        m = check_sample_size(m, n, d)
        if m >= n:  # a sample as large as the problem: the problem itself, in memory
            return in_memory_lp(_small(X), _small(y), p, m=m, seed=seed)
        X = X.rechunk({1: -1})
        if not bool(da.isfinite(y).all().compute()):
            raise ValueError("y contains NaN or Inf")
        col = y[:, None]
        dtype = np.result_type(X.dtype, y.dtype)
        meta = X._meta if is_sparse(X._meta) else _dense_meta(X, dtype)
        # Lewis weights of [X y], as ``lewis_weights`` takes them in memory (``stacked_lewis_weights``);
        # each step's diag(s) [X y] is formed a block at a time where its passes read it, never stored.
        lewis_seed = derive_seed(seed, 0)
        w = da.ones(n, chunks=(X.chunks[0],), dtype=dtype, meta=_dense_meta(X, dtype))
        streamed = not is_sparse(X._meta) and embedding_rows(d + 1) < n
        for t in range(default_iters(p, n, False)):
            def scores(s, t=t):
                if streamed:
                    return _stacked_leverage_scores(X, y, s, derive_seed(lewis_seed, t))
                Ms = da.map_blocks(_stacked_rows, X, col, *([] if s is None else [s[:, None]]),
                                   chunks=(X.chunks[0], (d + 1,)), dtype=dtype, meta=meta)
                return leverage_scores(Ms, seed=derive_seed(lewis_seed, t))
            w = lewis_step(w, p, scores).persist()
        total = float(w.sum().compute())  # 0 only when [X y] is zero: then x = 0, from no rows
        q = da.minimum(1.0, m * w / total) if total > 0 else w
        from dask import delayed

        # The sample, one pass: each block keeps its rows by the uniforms of its global rows.
        off, xb, yb, qb = _offsets(X.chunks[0]), X.to_delayed().ravel(), y.to_delayed(), q.to_delayed()
        parts = delayed(list)([delayed(_sampled_rows)(xb[i], yb[i], qb[i], off[i], derive_seed(seed, 1), p)
                               for i in range(len(X.chunks[0])) if X.chunks[0][i] > 0]).compute()
        As = np.concatenate([a for a, _ in parts], axis=0)
        bs = np.concatenate([c for _, c in parts], axis=0)
        xp = array_namespace(_dense_meta(X, dtype))
        x = xp.asarray(solve_lp_small(As, bs, p))
        r = _times(X, x) - y
        cost = float(_small((abs(r) ** p).sum())) ** (1 / p)
        return RobustResult(x, cost, {"p": p, "m": int(m), "rows": int(bs.shape[0]), "seed": seed})


def _block_loss(r, loss):
    return loss.value(r)


def tukey_regression(X, y, tau, *, rows=None, p=2, branching=4.0, trials=1, seed=None):
    """Tukey regression ``min_x Σ_i M((Xx − y)_i)`` of a Dask X by the oblivious sketch, then IRLS.

    The §2.4 sketch of Clarkson, Wang & Woodruff: ``gpusketch.robust.
    tukey_regression(..., method="oblivious")`` with X and y distributed.
    It is oblivious to the data, so it needs one pass over X and y, where
    each block is sketched where it lives.  The reduced problem is small
    (``rows`` × d), and ``irls`` solves it in memory.  A second pass
    evaluates the cost of each trial's x on all of the data.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d)
        NumPy or CuPy blocks, or SciPy/cupyx sparse ones.
    y : dask.array.Array, or NumPy/CuPy array on X's blocks' device, of shape (n,)
        Rechunked (Dask) or split (in memory) to X's row chunks.
    tau : float
        Tukey threshold (``TukeyLoss(tau, p)``).
    rows, p, branching, trials, seed
        As in ``gpusketch.robust.tukey_regression``: reduced rows (default
        ``40 (d + 1)``), loss exponent in [1, 2], subsampling ratio between
        levels, and independent sketches whose best x on the full data is
        returned.  All trials share the two passes.

    Returns
    -------
    TukeyResult
        ``.x`` (NumPy or CuPy, like the blocks), ``.cost`` on the full data,
        ``.rows`` None (the reduced rows are sketch buckets), ``.weights``
        and ``.info``.  For the same seed, the answer of
        ``gpusketch.robust.tukey_regression(X.compute(), y.compute(), tau,
        method="oblivious", ...)`` within round-off: the same sketches and
        the same IRLS.

    Notes
    -----
    Figure 4's row sampling is in-memory only.  Each of its rounds picks
    rows by scores of the rows that are still left, so every round would
    be another pass over the data.  Once ``rows >= n``, the problem itself
    is the reduced one: X and y are computed and solved as in memory.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from gpusketch import dask as gsd
    >>> from gpusketch.robust import tukey_regression
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((20_000, 4)); b = A @ np.ones(4) + rng.standard_normal(20_000); b[:1000] = 1e4
    >>> res = gsd.tukey_regression(da.from_array(A, chunks=(5000, 4)), da.from_array(b, chunks=5000), 3.0, seed=1)
    >>> full = tukey_regression(A, b, 3.0, method="full", seed=1)
    >>> bool(res.cost <= 1.5 * full.cost)
    True
    """
    with annotate("gpusketch.dask.tukey_regression"):
        X, y, da = _check_vector_system(X, y)
        n, d = X.shape
        loss = TukeyLoss(tau, p)  # validates tau and p
        rows, branching, trials = check_reduction(d, rows, branching, trials)
        seed = check_seed(seed)
        if rows >= n:  # the problem is the reduced one: in memory, as the in-memory call does
            return in_memory_tukey(_small(X), _small(y), tau, method="oblivious", rows=rows, p=p,
                             branching=branching, trials=trials, seed=seed)
        seeds = [derive_seed(seed, t) for t in range(trials)]  # as in memory: trial t's sketch
        made = [oblivious_sketch(n, rows, branching, s) for s in seeds]
        sketched = _sketches_with_rhs([S for S, _ in made], X, y)  # one pass for every trial
        solutions = []
        for (S, info), s, (SX, Sy) in zip(made, seeds, sketched):
            SX = to_dense(SX)
            _check_sketch_finite(SX, "X")  # level 0 holds every row
            _check_sketch_finite(Sy, "y")
            w = S.weights(array_namespace(Sy)).astype(Sy.dtype)
            red = irls(SX, Sy, loss, weights=w, seed=derive_seed(s, 99))
            solutions.append((red.x, w, info))
        xs = array_namespace(solutions[0][0]).stack([x for x, _, _ in solutions], axis=1)
        r = _times(X, xs) - y[:, None]  # the second pass: every trial's residuals at once
        costs = to_host(_small(r.map_blocks(_block_loss, loss, dtype=r.dtype).sum(axis=0)))
        t = int(np.argmin(costs))
        x, w, info = solutions[t]
        return TukeyResult(x, float(costs[t]), None, w, {"method": "oblivious", "seed": seed, "trial": t,
                                                         "reduced_rows": int(w.shape[0]), **info})
