"""Socially fair regression ``min_x max_i ||A_i x − b_i||`` (Algorithms 5 and 6)."""

from __future__ import annotations

import numpy as np

from .._backend import (
    array_namespace,
    as_operand,
    check_finite,
    check_positive_int,
    check_positive_real,
    to_dense,
    to_host,
)
from .._nvtx import annotate
from ..linalg._numerics import svd_rank, unit_column_scales
from ..robust.lp import l1_scaling, solve_lp_small
from . import _groups
from ._groups import as_groups
from .results import FairRegressionResult

__all__ = ["regression"]


def _targets(targets, groups, xp):
    if not isinstance(targets, (list, tuple)) or len(targets) != len(groups):
        raise ValueError(f"targets must be a list of {len(groups)} vectors, one per group")
    out = []
    for i, (b, A) in enumerate(zip(targets, groups)):
        b, _ = as_operand(b, f"targets[{i}]", ndim=(1,))
        array_namespace(b, A)
        if b.shape[0] != A.shape[0]:
            raise ValueError(f"targets[{i}] has {b.shape[0]} entries but groups[{i}] has {A.shape[0]} rows")
        check_finite(b, f"targets[{i}]")
        out.append(b.astype(A.dtype, copy=False))
    return out


def _r_factors(groups, bs, xp):
    """R of a Householder QR of each ``[A_i b_i]`` in float64, on the host: ``(min(n_i, d+1), d+1)``.

    ``||A_i x − b_i|| = ||R_i [x; −1]||`` for every x, so R_i holds all that the
    ℓ2 min–max needs (one pass over each group, on its device).  float32
    groups are factored in float64: their entries are exact there.  On the
    CPU the factorization runs over row blocks of about ``_BLOCK_BYTES``
    (``R ← R of [R; block]``, a backward-stable TSQR), so neither ``[A_i b_i]``
    nor a dense copy of a sparse group is formed; on a GPU one block.
    """
    out = []
    for A, b in zip(groups, bs):
        n, d = A.shape
        rows = n if xp is not np else max(4 * (d + 1), _groups._BLOCK_BYTES // (8 * (d + 1)))
        R = None
        for a in range(0, n, rows):
            M = xp.concatenate([to_dense(A[a : a + rows]), b[a : a + rows, None]], axis=1).astype(xp.float64,
                                                                                            copy=False)
            R = xp.linalg.qr(M if R is None else xp.concatenate([R, M]), mode="r")
        out.append(np.asarray(to_host(R), dtype=np.float64))
    return out


def _residual2(U, r, x):
    """``||U x − r||²`` and its gradient ``2 Uᵀ(U x − r)``."""
    e = U @ x - r
    return float(e @ e), 2.0 * (U.T @ e)


def _drop_null_directions(U, shape):
    """U with the singular values under the one rank rule (``svd_rank`` at the group's
    ``shape``, float64) set to exactly 0.

    A rank-deficient group's R holds its null directions as round-off (1e-16 of
    σ_max), next to residual entries of order 1.  The dual then fitted that
    residual with the noise (x ~ 1e16 along those directions), at a λ that
    all but silenced the groups that pin them down.
    """
    Us, s, Vt = np.linalg.svd(U, full_matrices=False)
    r = svd_rank(s, shape, np.float64)
    return U if r == s.size else (Us[:, :r] * s[:r]) @ Vt[:r]


def _l2_minimax(R, shapes, tol, maxiter):
    """``min_x max_i f_i(x)`` on unit columns (``unit_column_scales`` D of the stacked ``U_i``):
    ``_l2_minimax_unit`` of ``[U_i D, r_i]``, and ``x = D y``.  The rank rule then judges the
    groups as their columns' units do not (a column scaling changes neither the fit nor the
    costs): on the columns themselves, scaled 1e-8 .. 1e8 (κ 1e16), directions were lost
    and the fair cost came out 2 % high."""
    d = R[0].shape[1] - 1
    D = unit_column_scales(np.concatenate([Ri[:, :d] for Ri in R]), np)
    y, info = _l2_minimax_unit([np.concatenate([Ri[:, :d] * D, Ri[:, d:]], axis=1) for Ri in R], shapes, tol, maxiter)
    return D * y, info


def _l2_minimax_unit(R, shapes, tol, maxiter):
    """``min_x max_i f_i(x)``, ``f_i(x) = ||U_i x − r_i||²`` with ``[U_i r_i] = R_i``, through the dual.

    ``g(λ) = min_x Σ λ_i f_i(x)`` is concave with gradient ``f_i(x(λ))``
    (Danskin); SLSQP maximises it on the simplex.  Any λ certifies
    ``g(λ) <= OPT <= max_i f_i(x(λ))``; the relative gap is returned.
    If it stays above ``tol``, the primal epigraph form is polished by SLSQP
    from the dual's x.  ``x(λ)`` is the least-squares solution of the
    stacked ``√λ_i [U_i r_i]`` and each ``f_i`` a residual norm, not the
    Gram form ``xᵀU_iᵀU_ix − 2 r_iᵀU_ix + ||r_i||²``: that form cancels
    ``||b_i||²`` against the fit and lost the optimum where the fit is good
    (at residuals 1e-6 of ||b_i||, a reported gap of 0.45 and a cost 4e-4
    above the optimum in float64; in float32, 8e-4 above at residuals 1e-2).
    """
    import scipy.optimize

    ell, d = len(R), R[0].shape[1] - 1
    U, r = [_drop_null_directions(Ri[:, :d], shape) for Ri, shape in zip(R, shapes)], [Ri[:, d] for Ri in R]

    def x_of(lam):
        w = np.sqrt(np.clip(lam, 0.0, None))
        return np.linalg.lstsq(np.concatenate([wi * Ui for wi, Ui in zip(w, U)]),
                               np.concatenate([wi * ri for wi, ri in zip(w, r)]), rcond=None)[0]

    def f_all(x):
        return np.array([_residual2(Ui, ri, x)[0] for Ui, ri in zip(U, r)])

    # SLSQP's tolerances are absolute: work on f_i / s with s = max_i f_i at the pooled fit,
    # within a factor ℓ of the optimum (Σ_i f_i(x*) <= ℓ OPT), whatever the scale of the data
    # or the quality of the fit.  s at round-off (residuals below 64 ε ||b_i||, as when the
    # groups hold no more than d rows in all): the pooled fit is exact for every group.
    lam0 = np.full(ell, 1.0 / ell)
    x_pool = x_of(lam0)
    s = float(f_all(x_pool).max())
    if s <= (64 * np.finfo(np.float64).eps) ** 2 * max(float(ri @ ri) for ri in r):
        return x_pool, {"solver": "exact fit", "lambda": lam0.tolist(), "relative_gap": 0.0}
    U, r = [Ui / np.sqrt(s) for Ui in U], [ri / np.sqrt(s) for ri in r]

    def neg_g(lam):
        fx = f_all(x_of(lam))
        return -float(lam @ fx), -fx

    res = scipy.optimize.minimize(neg_g, lam0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * ell,
                                  constraints=[{"type": "eq", "fun": lambda l: l.sum() - 1.0,
                                                "jac": lambda l: np.ones(ell)}],
                                  options={"ftol": 1e-15, "maxiter": maxiter})
    lam = np.clip(res.x, 0.0, None)
    lam /= lam.sum()
    x = x_of(lam)
    lower = -neg_g(lam)[0]
    upper = float(f_all(x).max())
    info = {"solver": "dual SLSQP", "lambda": lam.tolist()}
    if upper > 1.0:
        # x(λ) is one minimiser of Σ λ_i f_i; where that has many (λ at a face of the simplex,
        # the groups with λ_i > 0 rank deficient together), lstsq's minimum-norm pick can be
        # far off for the other groups (max_i f_i 1e17 times the pooled fit's, in a random
        # sweep), and the polish could not recover from it.  The pooled fit has f <= 1.
        x, upper = x_pool, 1.0
        info["solver"] = "dual SLSQP, pooled start"
    if upper - lower > tol * max(upper, 1e-300):
        z0 = np.concatenate([x, [upper]])
        cons = [{"type": "ineq",
                 "fun": lambda z, i=i: z[d] - _residual2(U[i], r[i], z[:d])[0],
                 "jac": lambda z, i=i: np.concatenate([-_residual2(U[i], r[i], z[:d])[1], [1.0]])}
                for i in range(ell)]
        pr = scipy.optimize.minimize(lambda z: (z[d], np.eye(d + 1)[d]), z0, jac=True, method="SLSQP",
                                     constraints=cons, options={"ftol": 1e-15, "maxiter": maxiter})
        if float(f_all(pr.x[:d]).max()) < upper:
            x, upper = pr.x[:d], float(f_all(pr.x[:d]).max())
            info["solver"] += " + primal SLSQP polish"
    info["relative_gap"] = max(0.0, (upper - lower) / max(upper, 1e-300))
    return x, info


def _l1_minimax(A, b, sizes):
    """Definition A.6 with the epigraph variable L minimised: one HiGHS LP.

    Variables ``(x, t, L)``; ``−t <= Ax − b <= t``, ``Σ_{j ∈ group i} t_j <= L``.
    """
    import scipy.optimize
    import scipy.sparse as sp

    n, d = A.shape
    ell = len(sizes)
    A, b, unscale = l1_scaling(A, b)  # equivariant: the minimax over groups scales with b
    I = sp.identity(n, format="csr")
    zeros = sp.csr_matrix((n, 1))
    owner = np.repeat(np.arange(ell), sizes)
    Gsum = sp.csr_matrix((np.ones(n), (owner, np.arange(n))), shape=(ell, n))
    A_ub = sp.vstack([
        sp.hstack([sp.csr_matrix(A), -I, zeros]),
        sp.hstack([sp.csr_matrix(-A), -I, zeros]),
        sp.hstack([sp.csr_matrix((ell, d)), Gsum, -sp.csr_matrix(np.ones((ell, 1)))]),
    ]).tocsc()
    b_ub = np.concatenate([b, -b, np.zeros(ell)])
    cvec = np.zeros(d + n + 1)
    cvec[-1] = 1.0
    res = scipy.optimize.linprog(cvec, A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * d + [(0, None)] * (n + 1),
                                 method="highs")
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on the fair ℓ1 LP: {res.message}")
    return unscale(res.x[:d]), {"solver": "HiGHS LP (Definition A.6, epigraph)"}


def regression(groups, targets, *, norm=2, exact=True, tol=1e-9, maxiter=500):
    """Socially fair regression ``min_x max_i ||A_i x − b_i||_norm``.

    Parameters
    ----------
    groups : list of (n_i, d) arrays or sparse matrices
        SciPy sparse groups stay sparse for the ℓ2 optimum (its QRs read row
        blocks); the ℓ1 LP and Algorithm 5 densify them, as they do cupyx ones.
    targets : list of (n_i,) arrays
    norm : {1, 2}
    exact : bool
        ``True``: Algorithm 6, the min–max optimum (a convex program).
        ``False``: Algorithm 5, the pooled regression ``argmin ||Ax − b||``
        over the stacked data, an ℓ-approximation (ℓ = number of groups).
    tol : float
        ℓ2 exact: relative duality gap accepted on the squared objective.
    maxiter : int
        SLSQP iteration cap (ℓ2 exact).

    Returns
    -------
    FairRegressionResult
        ``.x`` (on the groups' device), ``.cost`` (the fair objective),
        ``.group_costs``, ``.info`` (``algorithm``, solver, ℓ2 duality gap
        and dual weights λ).

    Notes
    -----
    ℓ1 (exact): Definition A.6's LP, with its feasibility parameter L made
    a variable and minimised (one LP instead of a search over L), solved
    by HiGHS.  ℓ2 (exact): only the R factor of a QR of each ``[A_i b_i]``
    is needed (one pass over each group, on its device, in float64);
    the min–max of the squared norms is solved through its dual, the
    maximum over the simplex of ``min_x Σ λ_i ||A_i x − b_i||²``, whose
    every iterate certifies a lower bound; SciPy's SLSQP is the solver,
    with a primal epigraph polish if the gap exceeds ``tol``.  The paper
    names a generic convex solver (cutting planes with a separation
    oracle); both routes reach the same optimum.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import fair
    >>> A = [np.array([[1.0], [1.0]]), np.array([[1.0]])]
    >>> b = [np.array([0.0, 0.0]), np.array([3.0])]
    >>> res = fair.regression(A, b)          # balances √2|x| against |x − 3|
    >>> round(float(res.x[0]), 4), round(res.cost, 4)
    (1.2426, 1.7574)
    """
    with annotate("gpusketch.fair.regression"):
        groups, xp = as_groups(groups, keep_sparse=True)
        bs = _targets(targets, groups, xp)
        if norm not in (1, 2) or isinstance(norm, bool):
            raise ValueError(f"norm must be 1 or 2, got {norm!r}")
        tol = check_positive_real(tol, "tol")
        maxiter = check_positive_int(maxiter, "maxiter", maximum=2**31 - 1, why=" (SLSQP counts iterations in a C int)")
        sizes = [A.shape[0] for A in groups]
        if not exact:
            A = xp.concatenate([to_dense(A) for A in groups])
            b = xp.concatenate(bs)
            if norm == 2:  # on unit columns, so that columns in other units keep their directions
                D = unit_column_scales(A, xp)
                x = D * xp.linalg.lstsq(A * D, b, rcond=None)[0]
            else:
                x = xp.asarray(solve_lp_small(to_host(A), to_host(b), 1.0))
            info = {"algorithm": 5}
        elif norm == 2:
            xh, info = _l2_minimax(_r_factors(groups, bs, xp), [A.shape for A in groups], tol, maxiter)
            x = xp.asarray(xh, dtype=groups[0].dtype)
            info["algorithm"] = 6
        else:
            xh, info = _l1_minimax(to_host(xp.concatenate([to_dense(A) for A in groups])), to_host(xp.concatenate(bs)),
                                   sizes)
            x = xp.asarray(xh, dtype=groups[0].dtype)
            info["algorithm"] = 6
        costs = [float(xp.linalg.norm(A @ x - b, ord=norm)) for A, b in zip(groups, bs)]
        return FairRegressionResult(x, max(costs), costs, info)
