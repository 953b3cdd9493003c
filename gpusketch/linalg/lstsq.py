"""Least squares by sketching: sketch-and-solve, sketch-preconditioned LSMR, direct QR."""

from __future__ import annotations

import contextlib
import math
import time
import warnings

import numpy as np

from .._backend import (
    all_blas_serial,
    as_system,
    check_positive_int,
    check_positive_real,
    check_seed,
    is_sparse,
    linalg_modules,
    to_dense,
)
from .._nvtx import annotate
from ..operators import SketchOperator, SparseSign, make_sketch, row_reduction
from ._block_lsmr import block_lsmr
from ._numerics import dense_times, qr_lstsq
from ._precondition import REFINE_SKETCH_NNZ, SketchPreconditioner, refine_pays, refine_preconditioner
from .results import LstsqResult

__all__ = ["lstsq", "RankDeficientWarning"]

_METHODS = ("precondition", "sketch", "direct")


class RankDeficientWarning(UserWarning):
    """A is (numerically) rank deficient; the minimum-norm solution is returned."""


def default_sketch_size(d, n, method, nnz=None):
    """Rows of the default sketch (at most n): ``20d + 10`` to sketch-and-solve; ``k d + 10`` to precondition.

    Preconditioning trades the factorisation of the sketch (``∝ m d²``)
    against LSMR iterations (two passes over A each, ``∝ nnz(A)``).  With an
    OSNAP of m rows, ``κ(AR⁻¹) ≈ (1 + √(d/m)) / (1 − √(d/m))``; measured to
    ``tol = 1e-10`` (CPU, κ(A) = 1e2 and 1e8), 27–29 iterations at
    ``m = 4d``, 19–20 at 8d, 16–17 at 12d and 14 at 20d.  The extra rows pay
    off once passes over A outweigh ``m d²``, that is for tall A, so
    ``k = min(12, 4 + 2 n_eff/d²)`` with ``n_eff = nnz(A)/d`` (n for dense
    A): 4 for ``n ≲ d²/4``, 12 from ``n = 4d²`` (131072 × 128 on CPU: 0.80 →
    0.58 s; 32768 × 512 keeps k ≈ 4).
    """
    if method != "precondition":
        return int(min(n, 20 * d + 10))
    n_eff = n if nnz is None else nnz / d
    k = min(12.0, 4.0 + 2.0 * n_eff / (d * d))
    return int(min(n, math.ceil(k * d) + 10))


def sketch_for(sketch, m, n, d, method, seed, nnz=None, sparse_sign_nnz=None):
    """The validated sketch operator of a sketching solver: ``(m, n)`` rows by ``default_sketch_size``.

    A ``SketchOperator`` passed as ``sketch`` brings its own m when ``m`` is None.
    A named sketch of the default size is the identity when that size reaches
    n (``row_reduction``): at n = 20, d = 8 a square OSNAP's sketch-and-solve
    cost ratios reached 1.56 (20 seeds), and the identity's answer is exact.
    So is a square A's (n = d: the default size is n).  The callers have
    refused n < d.  ``sparse_sign_nnz`` sets the nonzeros per column of a
    ``"sparse_sign"`` (``make_sketch``'s 8 when None; at most m).  Raises
    ``ValueError`` unless ``d < m`` (m an integer, given or an operator's);
    ``seed`` is drawn when None.
    """
    if m is None and isinstance(sketch, SketchOperator):
        m = sketch.shape[0]
        if not d < m:
            raise ValueError(f"sketch has {m} rows; a sketched solve needs more than d = {d}")
    if m is None and isinstance(sketch, str):  # the default size: the identity once it reaches n
        S = row_reduction(sketch, default_sketch_size(d, n, method, nnz), n, seed=check_seed(seed))
    else:
        m = default_sketch_size(d, n, method, nnz) if m is None else m
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not d < m:
            raise ValueError(f"m must be an integer with d < m, got m={m!r} for d={d}")
        S = make_sketch(sketch, int(m), n, seed=check_seed(seed))
    if sparse_sign_nnz is not None and isinstance(sketch, str) and isinstance(S, SparseSign):
        S = SparseSign(S.shape[0], n, nnz=min(sparse_sign_nnz, S.shape[0]), seed=S.seed)
    return S


def _residual_norms(A, x, b, xp):
    r = dense_times(A, x, xp) - b
    return xp.linalg.norm(r, axis=0)


def lstsq(A, b, *, method="precondition", sketch="sparse_sign", m=None, tol=1e-10, seed=None, maxiter=None):
    """Solve ``min_x ||A x - b||_2`` with a sketch.

    Parameters
    ----------
    A : (n, d) array or sparse matrix
        NumPy/SciPy or CuPy/cupyx; the result lives on the same device.
    b : (n,) or (n, k) array
    method : {"precondition", "sketch", "direct"}
        ``"sketch"``: sketch-and-solve, ``x = argmin ||S(Ax - b)||`` with m rows
        (cost within ``1 + O(d/m)`` of optimal for an embedding S).
        ``"precondition"``: Theorem 7.5 of Chepurko et al.: ``SA = QR``, R used
        as a right preconditioner (``κ(AR⁻¹) = O(1)``), warm start from the
        sketched solution, then LSMR on ``AR⁻¹`` until the normal-equation
        residual ``||(AR⁻¹)ᵀr|| / (||AR⁻¹|| ||r||)`` is below ``tol``.  The
        k columns of a 2-D b run one block LSMR (``block_lsmr``): each column
        keeps SciPy's recurrences and stopping test, while the products with
        A are taken for all of them at once, so an iteration reads A twice,
        not 2k times (CPU, 65536 × 128, κ(A) = 1e4: k = 8 in 0.33x and
        k = 32 in 0.16x the time of k separate LSMR solves).
        For an A whose d is small next to the iterations it would take
        (``refine_pays``: ``d <= c k ln(1/tol)/ln 4``, c = 16 on the CPU and
        64 on a GPU, where BLAS-3 is relatively faster), R is first refined by
        one Cholesky pass over ``A R⁻¹`` (``refine_preconditioner``, the
        randomized Cholesky QR): ``A R₂⁻¹`` is then orthonormal to round-off
        and the warm start solves the preconditioned normal equations.  Where
        the sketch's R shows κ(A) <= 1e4 (float64 A), the Gram of ``A R⁻¹`` is
        ``R⁻ᵀ(AᵀA)R⁻¹`` from A's own (a third of the flops; ``gram_refines``:
        2-core CPU at κ = 1e2-1e3, 200000 × 200 0.43-0.46 → 0.25-0.27 s,
        65536 × 128 0.079-0.086 → 0.046-0.059 s), and refinement pays up to
        twice that d (c = 32 on the CPU; 100000 × 300 0.53 → 0.235 s).  A
        sparse A refines only from its own sparse Gram, where ``refine_pays``
        weighs its ``Σ nnz_i²`` below the iterations (1e6 × 100 at 1 % 0.66 →
        0.19 s, 200000 × 500 at 1 % 0.33 → 0.23 s, 1e6 × 50 at 10 % 0.93 →
        0.45 s; ``"direct"``'s semi-normal equations 0.10, 0.13 and 0.32 s).  That
        warm start is put to LSMR's stopping test before any iteration (two
        passes over A, whose residual also gives the cost), and LSMR runs
        only where it fails (measured at 30000 × 20, κ(A) = 1 to 1e8: one
        iteration where ``||r||/||b||`` lay between 1e-10 and 1e-5, none
        outside); with R alone LSMR takes 13-16 iterations at the default
        tol.  Refinement asks of S only a full-rank ``SA`` (the
        Gram of ``A R⁻¹`` is accurate while ``κ(AR⁻¹)² u`` is small), so
        the default ``"sparse_sign"`` then has ``REFINE_SKETCH_NNZ = 2``
        nonzeros a column, not 8: a quarter of the scatter-adds (in the band
        where only A's own Gram pays, the sketch is R alone's, which iterates
        where κ(A) rules that Gram out).  The pass costs ``3nd²`` flops in
        BLAS-3 (``nd²`` on A's own Gram) where each iteration saved costs
        ``4ndk`` memory-bound ones (2-core CPU, κ(A) = 1e6, against R alone: 2^20 × 64
        0.48-0.49 s against 1.12-1.13 s, 200000 × 200 0.43 s against 0.62 s,
        65536 × 128 with k = 8 0.097 s against 0.25 s; ``"direct"`` there
        0.54, 0.45 and about 0.09 s).  ``info["preconditioner"]`` is
        ``"refined"`` or ``"sketch"``; ``info["iterations"]`` is 0 where the
        warm start passed.  A rank-deficient sketch's ``V_r Σ_r⁻¹`` (below)
        is refined the same way, and the test's ``Aᵀr`` serves the normal
        equations' check: 2^20 × 64 of rank 63 took 0.61 s against 1.32 s
        (15 iterations), x within 1.6e-13 of the minimum-norm solution
        against 8e-8.  Deviation from Theorem 7.5, which iterates with the
        sketch's R: the same LSMR and stopping test on a better
        preconditioner, taken only where it is cheaper.
        ``"direct"``: ``x = R⁻¹Qᵀb`` from a QR of A: Cholesky QR twice
        (GEMM-shaped passes over row blocks of A, Q never held whole; as
        accurate as Householder while its orthogonality test holds, about
        κ(A) < 10⁷), else Householder (LAPACK / cuSOLVER), and the SVD's
        minimum-norm solution for rank-deficient A; a sparse A of κ(A) <= 1e6
        takes the corrected semi-normal equations instead (sparse products
        only, as accurate; 200000 × 200 CSR at 1 %: 0.06x the time of the
        densified CholeskyQR2); ``info["factorization"]`` says which
        (``qr_lstsq``).
    sketch : str or SketchOperator
        ``"sparse_sign"`` (OSNAP, default), ``"countsketch"``, ``"gaussian"``,
        ``"srht"``, or an operator of shape ``(m, n)``.  CountSketch is the
        cheapest to apply but embeds a subspace only from ``m ~ d²`` rows when
        A has rows of high leverage: with d rows of leverage near 1, sketch
        and solve at the default m measured cost gaps of 17-67 % against
        2.6-2.8 % for the OSNAP (65536 × 128 and 16384 × 512, 5 seeds); on
        Gaussian A both gave 2-3 %.  A ``"sparse_sign"`` has 8 nonzeros a
        column, 2 on the refined route of ``"precondition"`` (above).
    m : int, optional
        Sketch size; default the operator's rows when ``sketch`` is an
        operator, else ``20d + 10`` (sketch), or from ``4d + 10`` up to
        ``12d + 10`` for tall A (precondition; see ``default_sketch_size``).
        Where that default reaches n, no sketch can have fewer rows than A:
        S is then the identity (``info["sketch"]`` is ``"Sampling"``, of all
        n rows), and both methods return the exact least-squares solution.
    tol : float
        LSMR tolerance (``atol = btol = tol``) for ``"precondition"``.  The
        default 1e-10 brings x to the direct solve's accuracy.  When only the
        cost matters, a looser tol suffices: since
        ``||A(x − x*)|| <= tol κ(AR⁻¹) ||r||``, the relative cost gap
        ``||r||²/||r*||² − 1`` is at most about ``(tol κ(AR⁻¹))²``, κ(AR⁻¹) a
        small constant for the default sketch: ``tol = 1e-6`` measured gaps of
        3e-12 to 1.6e-11 (``(tol · 1.7-4)²``) with 40 % fewer iterations (CPU,
        κ(A) = 1e2 and 1e8, ``bench/linalg.py``).
    seed : int, optional
        Seed of the sketch; drawn and recorded in ``info["seed"]`` when None.
    maxiter : int, optional
        LSMR iteration cap (default ``min(n, 20 d + 100)``), per column of b;
        ``info["iterations"]`` is an int for a 1-D b, a list for a 2-D one.

    Returns
    -------
    LstsqResult
        ``.x``, ``.cost`` (``||Ax - b||`` per column of b) and ``.info``.

    Raises
    ------
    ValueError
        Mismatched shapes, NaN/Inf, unknown method, ``n < d`` for sketch
        methods, ``m <= d``, ``tol <= 0``.
    TypeError
        Unsupported dtypes, or NumPy and CuPy inputs mixed.

    Warns
    -----
    RankDeficientWarning
        When A (or its sketch) is numerically rank deficient; ``"direct"`` and
        ``"precondition"`` then return the minimum-norm solution (the
        preconditioner becomes ``V_r Σ_r⁻¹`` from an SVD of SA).  A sketch can
        lose rank that A has (a CountSketch that puts two rows which alone
        span some coordinates into one bucket): x, confined to SA's row space,
        then misses directions of A.  ``"precondition"`` checks the normal
        equations ``Aᵀ(b − Ax) = 0`` whenever SA is rank deficient and, when
        they fail, solves by ``"direct"`` instead (``info["fallback"]``,
        ``info["sketch_rank"]``), warning only if A itself is deficient.  On
        5000 × 20 A whose nonzeros are one entry per column, CountSketch at
        the default m had returned x off by 11-47 % (cost gaps up to 4.8e-4)
        in 6 of 10 seeds, with a warning that A was rank deficient.
        ``"sketch"`` warns whenever SA is rank deficient (``info["sketch_rank"]``)
        and names both causes: telling them apart takes another pass over A,
        the pass that sketch and solve exists to save.  On that A (CountSketch,
        default m = 20d + 10) 3 of 10 seeds lose rank, and such an x had
        come back with no warning.

    Notes
    -----
    The paper computes R with its FastEmbedding; any constant-distortion
    subspace embedding gives ``κ(AR⁻¹) = O(1)``, so the default is an OSNAP
    (SparseSign) with ``4d + 10`` to ``12d + 10`` rows (more for tall A,
    where they save LSMR passes; ``default_sketch_size``), applied by the
    gpusketch kernels.
    LSMR (SciPy on CPU, cupyx on GPU) is used on both backends rather than
    LSQR: it minimises the same objective, has the same stopping rule on the
    normal equations, and cupyx ships it as a true least-squares solver.

    References
    ----------
    Chepurko, Clarkson, Kacham, Woodruff, "Near-optimal algorithms for linear
    algebra in the current matrix multiplication time", Theorem 7.5;
    Rokhlin & Tygert (2008); Avron, Maymounkov & Toledo, "Blendenpik" (2010).

    Examples
    --------
    >>> import numpy as np, gpusketch
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((2000, 20)); b = rng.standard_normal(2000)
    >>> res = gpusketch.lstsq(A, b, seed=1)
    >>> x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
    >>> bool(np.allclose(res.x, x_ref, rtol=1e-8, atol=1e-10))
    True
    """
    with annotate("gpusketch.lstsq"):
        A, b, xp = as_system(A, b, b_ndim=(1, 2))
        n, d = A.shape
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        tol = check_positive_real(tol, "tol")
        if maxiter is not None:
            maxiter = check_positive_int(maxiter, "maxiter")
        dtype = np.result_type(A.dtype, b.dtype)
        if b.dtype != dtype:
            b = b.astype(dtype)
        if method == "direct":
            return _direct(A, b, xp)
        if n < d:
            raise ValueError(f"method={method!r} needs n >= d (a tall A), got A of shape {A.shape}")
        # The refined route needs SA only of full rank: a sparse sign of REFINE_SKETCH_NNZ per column.
        k = 1 if b.ndim == 1 else b.shape[1]
        refine = method == "precondition" and refine_pays(n, d, k, tol, xp, A)
        S = sketch_for(sketch, m, n, d, method, seed, A.nnz if is_sparse(A) else None,
                       sparse_sign_nnz=REFINE_SKETCH_NNZ if refine == "any" else None)
        info = {"method": method, "sketch": type(S).__name__, "m": S.shape[0], "seed": S.seed, "timings": {}}
        t0 = time.perf_counter()
        SA, Sb = S.matmul_each(A, b)  # one pass over S's hashes for both (on a CPU, most of a thin sketch)
        SA = to_dense(SA)
        info["timings"]["sketch_s"] = time.perf_counter() - t0
        if method == "sketch":
            # QR of the sketch (an SVD only if it is rank deficient): on a GPU,
            # cuSOLVER's QR is several times faster than the SVD behind lstsq.
            t0 = time.perf_counter()
            pre = SketchPreconditioner(SA, xp)
            info["rank_deficient"] = pre.rank_deficient
            x = pre.apply(pre.sketched_solution(Sb))
            info["timings"]["solve_s"] = time.perf_counter() - t0
            if pre.rank_deficient:
                info["sketch_rank"] = pre.rank
                warnings.warn(sketch_rank_message("A", A.shape, pre.rank), RankDeficientWarning, stacklevel=2)
            return LstsqResult(x, _residual_norms(A, x, b, xp), info)
        return _precondition(A, b, SA, Sb, xp, tol, maxiter, info, refine)


def sketch_rank_message(name, shape, rank):
    """The warning of sketch-and-solve whose sketch ``S·A`` came out rank deficient.

    Sketch and solve cannot tell A's own deficiency from a sketch that merged
    directions of A without another pass over A, so it names both.
    """
    return (f"the sketch of {name} (shape {shape}) has numerical rank {rank} < {shape[1]}: either {name} is "
            f"rank deficient, or the sketch merged directions of {name} (raise m, or use sketch='sparse_sign'; "
            'method="precondition" checks which); x is the minimum-norm solution of the sketched problem, '
            "confined to the sketch's row space")


def _direct(A, b, xp, stacklevel=3):
    info = {"method": "direct", "timings": {}}
    t0 = time.perf_counter()
    x, deficient, info["factorization"] = qr_lstsq(A, b, xp)
    if deficient:
        warnings.warn(
            f"A of shape {A.shape} is numerically rank deficient; returning the minimum-norm solution",
            RankDeficientWarning,
            stacklevel=stacklevel,
        )
    info["rank_deficient"] = deficient
    info["timings"]["solve_s"] = time.perf_counter() - t0
    return LstsqResult(x, _residual_norms(A, x, b, xp), info)


def _lsmr(A, b, pre, y0, xp, tol, maxiter):
    """LSMR on ``A P`` from ``y0`` (columns of b in lockstep): ``(x, iterations)``."""
    _, sparse_la = linalg_modules(xp)
    n = A.shape[0]
    if y0.ndim == 2:  # the columns in lockstep: two passes over A per iteration, not two per column
        Y, iters, _ = block_lsmr(
            lambda V: dense_times(A, pre.apply(V), xp),
            lambda U: pre.apply_t(dense_times(A, U, xp, transpose=True)),
            b, y0, atol=tol, btol=tol, maxiter=maxiter, xp=xp,
        )
        x, iters = pre.apply(Y), [int(i) for i in iters]
    else:
        op = sparse_la.LinearOperator(
            (n, y0.shape[0]),
            matvec=lambda y: dense_times(A, pre.apply(y.ravel()), xp),
            rmatvec=lambda r: pre.apply_t(dense_times(A, r.ravel(), xp, transpose=True)),
            dtype=A.dtype,
        )
        with warnings.catch_warnings():
            # SciPy's LSMR starts its condition estimate at 1e100, which
            # overflows when cast to float32; it only touches that estimate.
            warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
            out = sparse_la.lsmr(op, b, atol=tol, btol=tol, maxiter=maxiter, x0=y0)
        x, iters = pre.apply(out[0]), int(out[2])
    return x, iters


def _precondition(A, b, SA, Sb, xp, tol, maxiter, info, refine):
    n, d = A.shape
    t0 = time.perf_counter()
    pre = SketchPreconditioner(SA, xp)
    info["rank_deficient"] = pre.rank_deficient
    y0 = pre.sketched_solution(Sb)  # the sketch-and-solve answer, in preconditioned coordinates
    info["timings"]["factor_s"] = time.perf_counter() - t0
    info["preconditioner"] = "sketch"
    if refine:
        t0 = time.perf_counter()
        refined = refine_preconditioner(A, b, pre, xp, gram_only=refine == "gram")
        info["timings"]["refine_s"] = time.perf_counter() - t0
        if refined is not None:
            pre, y0 = refined
            info["preconditioner"] = "refined"
            t0 = time.perf_counter()
            x, cost, g, passed = _warm_start(A, b, pre, y0, tol, xp)
            info["timings"]["solve_s"] = time.perf_counter() - t0
            if passed:
                info["iterations"] = 0 if b.ndim == 1 else [0] * b.shape[1]
                return _result(A, b, x, pre, tol, xp, info, (cost, g))
    maxiter = int(min(n, 20 * d + 100)) if maxiter is None else maxiter
    t0 = time.perf_counter()
    # A sparse A's products run on threads of their own (sparse_product on the CPU): the
    # d × d steps between them keep BLAS on one thread, whose spinning pool would share the cores.
    with all_blas_serial if is_sparse(A) and xp is np else contextlib.nullcontext():
        x, iters = _lsmr(A, b, pre, y0, xp, tol, maxiter)
    info["timings"]["solve_s"] = time.perf_counter() - t0
    info["iterations"] = iters
    return _result(A, b, x, pre, tol, xp, info)


def _result(A, b, x, pre, tol, xp, info, residual=None):
    """``lstsq``'s result from the precondition route's x: its cost (``residual``, the pair
    ``(||r||, Aᵀr)`` where the warm start's test has them, else one more pass), and for a
    rank-deficient sketch first the normal equations' check (``_sketch_missed_directions``)."""
    if not pre.rank_deficient:
        return LstsqResult(x, _residual_norms(A, x, b, xp) if residual is None else residual[0], info)
    missed, cost = _sketch_missed_directions(A, b, x, tol, xp, residual)
    if missed:
        res = _direct(A, b, xp, stacklevel=5)  # warns if A itself is rank deficient
        timings = {**info["timings"], "direct_s": res.info["timings"]["solve_s"]}
        res.info.update({**info, "rank_deficient": res.info["rank_deficient"], "fallback": "direct",
                         "sketch_rank": pre.rank, "timings": timings})
        return res
    warnings.warn(
        f"A of shape {A.shape} is numerically rank deficient (sketch rank {pre.rank}); "
        "returning the minimum-norm solution",
        RankDeficientWarning,
        stacklevel=4,
    )
    return LstsqResult(x, cost, info)


def _warm_start(A, b, pre, y0, tol, xp):
    """``(x, ||b − Ax||, Aᵀ(b − Ax), passed)`` for ``x = P y0``, passed when y0 already
    passes LSMR's stopping test on ``Ā = A P`` (``warm_start_passes``; LSMR then runs
    from y0 where it does not).

    LSMR tests only after an iteration: started at y0 it reads A five times (its
    first residual, ``Āᵀu``, one iteration, then the cost), this test twice, and r
    is the cost's residual (``Aᵀr`` the normal equations' check of a rank-deficient
    sketch).
    """
    x = pre.apply(y0)
    r = b - dense_times(A, x, xp)
    g = dense_times(A, r, xp, transpose=True)
    normr = xp.linalg.norm(r, axis=0)
    normar = xp.linalg.norm(pre.apply_t(g), axis=0)
    passed = warm_start_passes(normar, normr, xp.linalg.norm(b, axis=0), xp.linalg.norm(y0, axis=0), tol)
    return x, normr, g, passed


def warm_start_passes(normar, normr, normb, normy, tol):
    """LSMR's stopping test (Fong & Saunders; SciPy's with ``atol = btol = tol``) at a
    refined warm start y0, every column of b: ``||Āᵀr|| <= tol ||Ā|| ||r||`` or
    ``||r|| <= tol (||b|| + ||Ā|| ||y0||)``, with ``||Ā|| = 1`` (a refined ``Ā = A P`` is
    orthonormal to round-off; LSMR's own estimate of ``||Ā||``, which grows toward
    ``||Ā||_F = √d``, only loosens the test)."""
    return bool(((normar <= tol * normr) | (normr <= tol * (normb + normy))).all())


def missed_direction_tol(tol, dtype):
    """``_sketch_missed_directions``' relative bound on ``||Aᵀr||``: ``max(100 tol, 1e-8)``,
    and at least ``100 u`` of A's precision.  A float32 A rounded off a rank-r matrix keeps
    normal-equation residuals of about ``u₃₂ ||A|| ||r||`` (1.2e-7) in the directions its
    rounding added, above the float64 bound: every such call had gone on to the direct
    solve, a QR of A that the sketch's minimum-norm x did not need (800 x 30 to
    20000 x 40 of ranks 1 to 39; that solve's float32 x then fitted the rounding, mended
    since in ``_r_svd_lstsq``)."""
    return max(100 * tol, 1e-8, 100 * float(np.finfo(dtype).eps))


def _sketch_missed_directions(A, b, x, tol, xp, residual=None):
    """True when x, found in the row space of a rank-deficient SA, leaves ``Aᵀ(b − Ax)`` nonzero.

    A least-squares solution satisfies the normal equations ``Aᵀ(b − Ax) = 0``,
    the minimum-norm one of a rank-deficient A included, and LSMR stops at
    ``||(AR⁻¹)ᵀr|| <= tol ||AR⁻¹|| ||r||``.  The preconditioner ``V_r Σ_r⁻¹`` of
    a rank-r SA confines x to SA's row space: when A has rank above r (the
    sketch merged directions of A: a CountSketch putting two rows that alone
    span coordinates into one bucket), a direction is missing and the
    normal-equation residual keeps its component.  Tested against
    ``missed_direction_tol(tol, A.dtype) ||A||_F ||r||`` per column (one more pass over A).
    Returns that verdict and ``||r||`` per column (the cost, when x stands).
    ``residual``: ``(||r||, Aᵀr)`` where they are known already (the refined warm
    start's test), which spares the passes for r and ``Aᵀr``.
    """
    if residual is None:
        r = b - dense_times(A, x, xp)
        rn, g = xp.linalg.norm(r, axis=0), dense_times(A, r, xp, transpose=True)
    else:
        rn, g = residual
    normA = math.sqrt(float((A.multiply(A)).sum() if is_sparse(A) else xp.einsum("ij,ij->", A, A)))
    return bool((xp.linalg.norm(g, axis=0) > missed_direction_tol(tol, A.dtype) * normA * rn).any()), rn
