"""LSMR on every column of a block right-hand side at once.

SciPy's and CuPy's ``lsmr`` take one right-hand side, so k columns cost k
solves and 2k passes over A per iteration, each a matrix-vector product
(memory bound).  Here the k recurrences run in lockstep: one iteration takes
``A @ V`` and ``Aᵀ @ U`` for all active columns (two passes over A, as
matrix-matrix products), while each column keeps its own scalars and its own
stopping test, and leaves the block when that test passes.
"""

from __future__ import annotations

import numpy as np

from .._backend import to_host

__all__ = ["block_lsmr", "TallBlock"]


class TallBlock:
    """The operations of ``block_lsmr`` on its n × k block U, for NumPy and CuPy arrays.

    U is the solver's own array, so it is updated in place.  ``gpusketch.dask``
    passes a subclass whose U is a Dask array persisted on the workers.
    """

    def __init__(self, xp, dtype):
        self.xp, self.dtype = xp, dtype

    def norms(self, U):
        """Column norms on the host (float64).  einsum: no n × k temporary (2.3x faster
        than ``norm(axis=0)`` at 65536 × 32)."""
        return to_host(self.xp.sqrt(self.xp.einsum("ij,ij->j", U, U))).astype(np.float64)

    def scale(self, U, coef):
        """``U · diag(coef)``, coef a host vector."""
        U *= self.xp.asarray(coef, dtype=self.dtype)
        return U

    def add(self, U, M):
        """``U + M``."""
        U += M
        return U

    def take(self, U, cols):
        """The columns ``cols`` (host indices), in C order as the products return them:
        ``U += A V`` on mixed layouts ran 1.4x slower than the GEMM itself."""
        return self.xp.ascontiguousarray(self.xp.take(U, self.xp.asarray(cols), axis=1))


def _sym_ortho(a, b):
    """Elementwise stable Givens rotation: ``(c, s, r)`` with ``[c s; −s c] [a; b] = [r; 0]``.

    The cases of SciPy's ``_sym_ortho`` (Fong & Saunders, "LSMR", 2011, Table 2),
    taken per entry.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        b_over = np.abs(b) > np.abs(a)
        tau_b = a / b  # used where |b| > |a| (so b != 0)
        s_b = np.sign(b) / np.sqrt(1 + tau_b * tau_b)
        tau_a = b / a  # used where |a| >= |b| and b != 0 (so a != 0)
        c_a = np.sign(a) / np.sqrt(1 + tau_a * tau_a)
        c = np.where(b_over, s_b * tau_b, c_a)
        s = np.where(b_over, s_b, c_a * tau_a)
        r = np.where(b_over, b / s_b, a / c_a)
    b_zero, a_zero = b == 0, (a == 0) & (b != 0)
    c = np.where(b_zero, np.sign(a), np.where(a_zero, 0.0, c))
    s = np.where(b_zero, 0.0, np.where(a_zero, np.sign(b), s))
    r = np.where(b_zero, np.abs(a), np.where(a_zero, np.abs(b), r))
    return c, s, r


def block_lsmr(matmat, rmatmat, B, X0, *, atol, btol, maxiter, xp, conlim=1e8, tall=None):
    """LSMR (damp = 0) for ``min ||A x_j − b_j||`` on every column of B.

    Column j follows SciPy's ``scipy.sparse.linalg.lsmr(A, B[:, j],
    atol=atol, btol=btol, conlim=conlim, maxiter=maxiter, x0=X0[:, j])``
    step for step: the same recurrences and the same stopping rules, with
    istop 1 (``||r|| <= btol ||b|| + atol ||A|| ||x||``), 2
    (``||Aᵀr|| <= atol ||A|| ||r||``), 3 (condition estimate above conlim),
    4-6 (the same at machine precision) and 7 (maxiter).  Only the products
    are shared: ``matmat(V)`` is ``A V`` and ``rmatmat(U)`` is ``Aᵀ U`` for
    the active columns, so a column's iterates match its own solve to
    round-off (the GEMM and the GEMV sum in different orders).  The scalar
    recurrences run on the host in float64, one vector of k entries per
    scalar, and the machine-precision tests (istop 4-6) in B's precision, as
    SciPy's scalars take B's dtype: float32 data stop there, not after
    driving float64 estimates below 1e-10 (at 20000 × 60, column scales
    1-100: 80-88 iterations, SciPy's 79-87, against 143-166 with the tests
    in float64).  The vectors of length n and d stay on the device of B.

    Parameters
    ----------
    matmat, rmatmat : callable
        ``V (d × j) -> A V (n × j)`` and ``U (n × j) -> Aᵀ U (d × j)``.
    B : array of shape (n, k)
    X0 : array of shape (d, k)
        Starting points.
    atol, btol, maxiter, conlim
        As in ``scipy.sparse.linalg.lsmr``.
    xp : module
        The array module of X0 (and of B, unless ``tall`` says otherwise).
    tall : TallBlock, optional
        The operations on B's n × k arrays; ``TallBlock(xp, B.dtype)`` by default.

    Returns
    -------
    X : array of shape (d, k)
    iterations : numpy.ndarray of int, shape (k,)
    istop : numpy.ndarray of int, shape (k,)
    """
    k = B.shape[1]
    X = X0.copy()
    iterations = np.zeros(k, dtype=np.int64)
    istop = np.zeros(k, dtype=np.int64)
    if k == 0:
        return X, iterations, istop
    dtype = B.dtype
    tall = TallBlock(xp, dtype) if tall is None else tall

    def scale(Y, coef):  # a d × k array times diag(coef), out of place
        return Y * xp.asarray(coef, dtype=dtype)

    def take(Y, cols):
        return xp.take(Y, xp.asarray(cols), axis=1)

    small_norms = TallBlock(xp, dtype).norms
    one = np.ones((), dtype=dtype)

    def negligible(t):  # 1 + t == 1 in B's precision, as SciPy's scalars (of B's dtype) test it
        with np.errstate(over="ignore", invalid="ignore"):
            return one + t.astype(dtype) <= one

    def inv(v):  # 1/v where v > 0; such columns are left unscaled, as SciPy leaves them
        out = np.ones_like(v)
        np.divide(1.0, v, out=out, where=v > 0)
        return out

    normb = tall.norms(B)
    U = tall.add(-matmat(X0), B)  # U is the solver's own from here on
    beta = tall.norms(U)
    U = tall.scale(U, inv(beta))
    V = rmatmat(U)  # zero in a column whose beta is 0, as SciPy's v = zeros
    alpha = small_norms(V)
    V = scale(V, inv(alpha))
    # SciPy returns x0 when ||Aᵀr₀|| = 0, else x = 0 when b = 0.
    X[:, xp.asarray(np.flatnonzero((alpha * beta != 0) & (normb == 0)))] = 0
    act = np.flatnonzero((alpha * beta != 0) & (normb != 0))
    U, V, Xa = tall.take(U, act), take(V, act), take(X, act)
    alpha, beta, normb = alpha[act], beta[act], normb[act]

    ka = act.size
    zetabar, alphabar = alpha * beta, alpha.copy()
    rho, rhobar, cbar, sbar = np.ones(ka), np.ones(ka), np.ones(ka), np.zeros(ka)
    H, Hbar = V.copy(), xp.zeros_like(V)
    betadd, betad, rhodold = beta.copy(), np.zeros(ka), np.ones(ka)
    tautildeold, thetatilde, zeta = np.zeros(ka), np.zeros(ka), np.zeros(ka)
    normA2 = alpha * alpha
    maxrbar, minrbar = np.zeros(ka), np.full(ka, 1e100)
    ctol = 1 / conlim if conlim > 0 else 0.0
    itn = 0
    while act.size and itn < maxiter:
        itn += 1
        U = tall.add(tall.scale(U, -alpha), matmat(V))
        beta_new = tall.norms(U)
        moved = beta_new > 0  # where beta = 0 SciPy keeps v and alpha
        U = tall.scale(U, inv(beta_new))
        Vn = rmatmat(U) - scale(V, beta_new)
        alpha_new = small_norms(Vn)
        Vn = scale(Vn, inv(alpha_new))
        if moved.all():
            V, alpha = Vn, alpha_new
        else:
            keep = xp.asarray(~moved)
            V = xp.where(keep, V, Vn)
            alpha = np.where(moved, alpha_new, alpha)
        beta = beta_new

        # The recurrences of scipy.sparse.linalg.lsmr, damp = 0 (so shat = 0, betacheck = 0).
        with np.errstate(divide="ignore", invalid="ignore"):
            chat, alphahat = np.sign(alphabar), np.abs(alphabar)
            rhoold = rho
            c, s, rho = _sym_ortho(alphahat, beta)
            thetanew = s * alpha
            alphabar = c * alpha
            rhobarold, zetaold = rhobar, zeta
            thetabar = sbar * rho
            rhotemp = cbar * rho
            cbar, sbar, rhobar = _sym_ortho(cbar * rho, thetanew)
            zeta = cbar * zetabar
            zetabar = -sbar * zetabar
            Hbar = scale(Hbar, -(thetabar * rho / (rhoold * rhobarold))) + H
            Xa = Xa + scale(Hbar, zeta / (rho * rhobar))
            H = scale(H, -(thetanew / rho)) + V
            betaacute = chat * betadd
            betahat = c * betaacute
            betadd = -s * betaacute
            thetatildeold = thetatilde
            ctildeold, stildeold, rhotildeold = _sym_ortho(rhodold, thetabar)
            thetatilde = stildeold * rhobar
            rhodold = ctildeold * rhobar
            betad = -stildeold * betad + ctildeold * betahat
            tautildeold = (zetaold - thetatildeold * tautildeold) / rhotildeold
            taud = (zeta - thetatilde * tautildeold) / rhodold
            normr = np.sqrt((betad - taud) ** 2 + betadd * betadd)
            normA2 = normA2 + beta * beta
            normA = np.sqrt(normA2)
            normA2 = normA2 + alpha * alpha
            maxrbar = np.maximum(maxrbar, rhobarold)
            if itn > 1:
                minrbar = np.minimum(minrbar, rhobarold)
            condA = np.maximum(maxrbar, rhotemp) / np.minimum(minrbar, rhotemp)
            normar = np.abs(zetabar)
            normx = small_norms(Xa)
            test1 = normr / normb
            denom = normA * normr
            test2 = np.where(denom != 0, normar / np.where(denom != 0, denom, 1.0), np.inf)
            test3 = 1 / condA
            t1 = test1 / (1 + normA * normx / normb)
            rtol = btol + atol * normA * normx / normb

        # SciPy assigns istop in this order, so the last test that holds wins.
        stop = np.zeros(act.size, dtype=np.int64)
        for code, hit in (
            (7, np.full(act.size, itn >= maxiter)),
            (6, negligible(test3)),
            (5, negligible(test2)),
            (4, negligible(t1)),
            (3, test3 <= ctol),
            (2, test2 <= atol),
            (1, test1 <= rtol),
        ):
            stop[hit] = code
        done = stop > 0
        if not done.any():
            continue
        X[:, xp.asarray(act[done])] = Xa[:, xp.asarray(np.flatnonzero(done))]
        iterations[act[done]] = itn
        istop[act[done]] = stop[done]
        live = ~done
        act = act[live]
        cols = np.flatnonzero(live)
        U = tall.take(U, cols)
        V, H, Hbar, Xa = (take(Y, cols) for Y in (V, H, Hbar, Xa))
        (alpha, beta, normb, alphabar, rho, rhobar, cbar, sbar, zetabar, zeta, betadd, betad, rhodold,
         tautildeold, thetatilde, normA2, maxrbar, minrbar) = (
            v[live] for v in (alpha, beta, normb, alphabar, rho, rhobar, cbar, sbar, zetabar, zeta, betadd,
                              betad, rhodold, tautildeold, thetatilde, normA2, maxrbar, minrbar))
    if act.size:  # maxiter = 0: the starting points stand
        X[:, xp.asarray(act)] = Xa
    return X, iterations, istop
