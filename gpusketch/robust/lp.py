"""ℓp regression, 1 <= p <= 2, by Lewis-weight row sampling."""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from .._backend import as_system, check_real_in, check_seed, is_sparse, sparse_module, to_dense, to_host
from .._nvtx import annotate
from .._random import derive_seed
from .lewis import lewis_weights, stacked_lewis_weights
from .results import RobustResult

__all__ = ["lp_regression", "solve_lp_small"]


def l1_scaling(A, b):
    """``(AD, b/s, unscale)`` for an ℓ1 LP: columns and b of unit max-norm, ``x = s·D·x̃``.

    HiGHS's tolerances are absolute (1e-7).  Unscaled, an A with entries near
    1e-8 satisfies ``Aᵀy = 0`` for any y (a wrong answer), and 1e150 is a
    model error.  ℓ1 regression is equivariant under this scaling:
    ``||Ax − b|| = s ||(AD)(D⁻¹x/s) − b/s||``.
    """
    AD, D = _unit_max_columns(A)
    s = float(np.abs(b).max()) or 1.0
    return AD, b / s, lambda x: x * D * s


def _unit_max_columns(A):
    """``(AD, D)``: A's columns scaled to max-norm 1 (a zero column left as it is)."""
    col = np.abs(A).max(axis=0).astype(np.float64)
    D = 1.0 / np.where(col > 0, col, 1.0)
    return A * D, D


def solve_lp_small(A, b, p, *, maxiter=200, tol=1e-12):
    """Exact ``argmin_x ||Ax − b||_p`` for a small host problem.

    p = 1: the LP ``min Σ t_i`` s.t. ``−t <= Ax − b <= t``, solved through its
    dual ``max bᵀy`` s.t. ``Aᵀy = 0``, ``|y_i| <= 1`` with HiGHS
    (``scipy.optimize.linprog``, interior point with crossover; x is read
    from the equality duals); p = 2: least squares; 1 < p < 2: IRLS with
    weights ``max(|r_i|, δ)^{p−2}``, ``δ = 1e-12 · max|r|``, each step
    lengthened up to Newton's (``1/(p−1)`` times IRLS's) where that costs less.
    """
    import scipy.optimize

    n, d = A.shape
    if n == 0:  # no rows: every x costs 0, and 0 is the least-norm choice
        return np.zeros(d, dtype=np.result_type(A.dtype, b.dtype))
    if p != 1:
        # Least squares and IRLS on unit-max columns, x = D x̃: NumPy's rank cut on A itself
        # dropped directions of columns in other units (scales 1e-8 .. 1e8: p = 1.5's cost
        # 3.6e-4 above the unscaled problem's).
        AD, D = _unit_max_columns(A)
        return (D * _solve_lp_small_unit(AD, b, p, maxiter, tol)).astype(np.result_type(A.dtype, b.dtype), copy=False)
    # The dual LP  max bᵀy  s.t. Aᵀy = 0, −1 <= y <= 1  has d equality rows and n
    # boxed variables instead of the primal's 2n inequality rows and n + d
    # variables; HiGHS solves it an order of magnitude faster (6 s against 88 s
    # at n = 4000, d = 225), and x is minus the equality duals.  Its interior
    # point method (with crossover) beats dual simplex here by 2x: each
    # iteration factors a d × d matrix.
    As, bs, unscale = l1_scaling(A, b)
    res = scipy.optimize.linprog(-bs, A_eq=As.T, b_eq=np.zeros(d), bounds=(-1.0, 1.0), method="highs-ipm")
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on the reduced ℓ1 problem: {res.message}")
    # HiGHS works in float64; x comes back in the problem's dtype, as from the other branches.
    return unscale(-np.asarray(res.eqlin.marginals)).astype(np.result_type(A.dtype, b.dtype), copy=False)


def _solve_lp_small_unit(A, b, p, maxiter, tol):
    """``solve_lp_small`` for p = 2 and 1 < p < 2 (A's columns already scaled)."""
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    if p == 2:
        return x
    r = A @ x - b
    f = np.sum(np.abs(r) ** p)
    # IRLS's step is Newton's damped by p − 1 (gradient p·Aᵀ(u∘r), Hessian p(p−1)·AᵀUA with
    # u = |r|^{p−2}): near p = 1 plain IRLS crawls (200 steps left p = 1.01 up to 2e-5 above the
    # optimum).  Each step tries the step lengths 1/(p−1), …, 1 (IRLS's own, which the
    # majorization makes a descent step) and keeps the best.
    lengths = np.geomspace(1.0 / (p - 1.0), 1.0, 6)  # p = 2 returned above
    for _ in range(maxiter):
        a = np.abs(r)
        rmax = float(a.max())
        if rmax == 0.0:  # an exact fit: nothing to reweight (the weights would be 0^(p-2))
            break
        # Scaled by rmax^(2-p), which leaves the step unchanged: weights in [1, 1e12^(2-p)], finite.
        u = (np.maximum(a, 1e-12 * rmax) / rmax) ** (p - 2)
        s = np.sqrt(u)
        step = np.linalg.lstsq(A * s[:, None], b * s, rcond=None)[0] - x
        trials = [x + t * step for t in lengths]
        resids = [A @ xt - b for xt in trials]
        costs = [np.sum(np.abs(rt) ** p) for rt in resids]
        best = int(np.argmin(costs))
        if not costs[best] <= f:
            break
        done = f - costs[best] <= tol * f
        x, f, r = trials[best], costs[best], resids[best]
        if done:
            break
    return x


def check_sample_size(m, n, d):
    """``lp_regression``'s m validated: an integer above d (or at least n), default
    ``min(n, 20 (d+1) ⌈ln(d+2)⌉)``.  From ``m >= n`` the whole problem is solved: a square A
    at its default ``m = n`` too."""
    m = min(n, 20 * (d + 1) * math.ceil(math.log(d + 2))) if m is None else m
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or (m <= d and m < n):
        raise ValueError(f"m must be an integer > d = {d}, got {m!r}")
    return int(m)


def lp_regression(A, b, p=1, *, m=None, seed=None):
    """``min_x ||Ax − b||_p`` for ``1 <= p <= 2`` by ℓp Lewis-weight sampling.

    Parameters
    ----------
    A : (n, d) array or sparse matrix, n >= d
    b : (n,) array
    p : float in [1, 2]
    m : int, optional
        Expected number of sampled rows; default ``min(n, 20 (d+1) ⌈ln(d+2)⌉)``.
        From ``m >= n`` on, every row is kept unweighted: the exact solution
        (sampling with ``q_i = min(1, m w_i/(d+1))`` would still drop rows
        there: cost ratios up to 1.17 at n = 12, d = 5).
    seed : int, optional

    Returns
    -------
    RobustResult
        ``.x`` on the device of A, ``.cost = ||Ax − b||_p`` on the full data,
        ``.info`` with ``m``, ``rows`` (kept), ``p`` and ``seed``.

    Notes
    -----
    Lewis weights ``w`` of ``[A b]`` (sketched, ``lewis_weights``) sum to
    ``d + 1``; row i is kept with probability ``q_i = min(1, m w_i / (d+1))``
    and scaled by ``q_i^{−1/p}``, so ``Σ_kept |r_i|^p / q_i`` estimates
    ``||r||_p^p`` for every r in the span of ``[A b]``; with
    ``m = O(d log d / ε²)`` (p = 1) this is a ``(1 ± ε)`` ℓp subspace
    embedding (Cohen & Peng).  The reduced problem is solved on the host:
    HiGHS for p = 1, IRLS for 1 < p < 2, least squares for p = 2.

    Examples
    --------
    >>> import numpy as np, gpusketch
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((5000, 5)); b = A @ np.ones(5) + rng.laplace(size=5000)
    >>> res = gpusketch.lp_regression(A, b, p=1, seed=1)     # about 240 of 5000 rows
    >>> from gpusketch.robust.lp import solve_lp_small
    >>> full = np.abs(A @ solve_lp_small(A, b, 1.0) - b).sum()
    >>> bool(res.cost <= 1.05 * full)
    True
    """
    with annotate("gpusketch.lp_regression"):
        A, b, xp = as_system(A, b)
        n, d = A.shape
        p = check_real_in(p, "p", 1, 2)
        if n < d:
            raise ValueError(f"lp_regression needs n >= d, got A of shape {A.shape}")
        seed = check_seed(seed)
        m = check_sample_size(m, n, d)
        if m >= n:  # a sample as large as the problem: the problem itself
            keep, scale = xp.arange(n), xp.ones(n, dtype=A.dtype)
        else:
            if is_sparse(A):
                sps = sparse_module(xp)
                w = lewis_weights(sps.hstack([A, sps.csr_matrix(b[:, None])]).tocsr(), p, seed=derive_seed(seed, 0))
            else:  # [A b] is formed only scaled, one step at a time
                w = stacked_lewis_weights(A, b, p, seed=derive_seed(seed, 0))
            total = float(w.sum())  # 0 only when [A b] is zero: then x = 0, from no rows
            q = xp.minimum(1.0, m * w / total) if total > 0 else w
            keep = xp.flatnonzero(_kernels.uniforms(n, derive_seed(seed, 1), xp) < q)
            scale = q[keep] ** (-1.0 / p)
        As = to_host(to_dense(A[keep]) * scale[:, None])
        bs = to_host(b[keep] * scale)
        x = xp.asarray(solve_lp_small(As, bs, float(p)))
        r = to_dense(A @ x) - b
        cost = float((xp.abs(r) ** p).sum() ** (1 / p))
        return RobustResult(x, cost, {"p": float(p), "m": int(m), "rows": int(keep.size), "seed": seed})
