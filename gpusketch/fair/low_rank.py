"""Socially fair low-rank approximation and column subset selection (Song, Vakilian, Woodruff, Zhou)."""

from __future__ import annotations

import math
import time

import numpy as np

from .. import _kernels
from .._backend import (
    array_namespace,
    as_operand,
    check_finite,
    check_positive_int,
    check_real_in,
    check_seed,
    to_dense,
    to_host,
)
from .._nvtx import annotate
from .._random import derive_seed
from ..linalg._numerics import orthonormalize, svd_rank
from ..linalg.results import RowSpaceResult
from ..operators import Gaussian
from ..robust.lewis import lewis_weights
from ._groups import as_groups, group_costs2, residual2, squared_norm
from .results import ColumnSubsetResult

__all__ = ["cost", "baseline", "low_rank", "column_subset", "dvoretzky_size"]


def _orth_rows(V, xp):
    """Orthonormal basis (rows) of the row space of V, by SVD with the library's rank rule."""
    _, s, Vt = xp.linalg.svd(V, full_matrices=False)
    r = svd_rank(to_host(s), V.shape)
    return Vt[:r]


def cost(groups, V):
    """Fair cost ``max_i ||A_i V⁺V − A_i||_F`` of the row space of V.

    Parameters
    ----------
    groups : list of (n_i, d) arrays or sparse matrices
        SciPy sparse groups stay sparse (products, and residuals a row
        block at a time); cupyx ones are densified.
    V : (r, d) array or sparse matrix
        Any finite matrix on the groups' device; only its row space matters
        (``V⁺V`` is the orthogonal projection onto it).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import fair
    >>> A1 = np.array([[2.0, 0, 0, 0], [0, 2, 0, 0]]); A2 = np.array([[0, 0, 1.99, 0], [0, 0, 0, 1.99]])
    >>> round(fair.cost([A1, A2], np.eye(4)[:2]), 4)   # the SVD's choice leaves group 2 out
    2.8143
    """
    with annotate("gpusketch.fair.cost"):
        groups, xp = as_groups(groups, keep_sparse=True)
        V, _ = as_operand(V, "V", ndim=(2,))
        array_namespace(V, groups[0])  # V on the groups' device
        V = to_dense(V)
        if V.shape[1] != groups[0].shape[1]:
            raise ValueError(f"V must be 2-D with d = {groups[0].shape[1]} columns, got shape {tuple(V.shape)}")
        check_finite(V, "V")
        return math.sqrt(max(group_costs2(groups, _orth_rows(V.astype(groups[0].dtype), xp), xp)))


def baseline(groups, k):
    """The standard (non-fair) answer: top-k right singular vectors of the stacked groups.

    Parameters
    ----------
    groups : list of (n_i, d) arrays or sparse matrices
        SciPy sparse groups stay sparse (products, and residuals a row
        block at a time); cupyx ones are densified.
    k : int, 1 <= k <= d

    Returns
    -------
    RowSpaceResult
        ``.V`` (k × d), ``.cost`` = its fair cost, ``.info["group_costs"]``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import fair
    >>> A1 = np.array([[2.0, 0, 0, 0], [0, 2, 0, 0]]); A2 = np.array([[0, 0, 1.99, 0], [0, 0, 0, 1.99]])
    >>> round(fair.baseline([A1, A2], 2).cost, 4)   # group 1's directions; group 2 pays all
    2.8143
    """
    with annotate("gpusketch.fair.baseline"):
        groups, xp = as_groups(groups, keep_sparse=True)
        k = _check_k(k, groups)
        G = sum(to_dense(A.T @ A) for A in groups)
        _, U = xp.linalg.eigh(G)
        V = U[:, ::-1][:, :k].T
        c2 = group_costs2(groups, V, xp)
        return RowSpaceResult(V, math.sqrt(max(c2)), {"group_costs": [math.sqrt(c) for c in c2]})


def _check_k(k, groups, name="k"):
    k = check_positive_int(k, name)
    d = groups[0].shape[1]
    if k > d:
        raise ValueError(f"{name} must be at most d = {d}, got {k}")
    return k


def dvoretzky_size(n, p, eps):
    """Rows of a Gaussian G with ``(1 ± ε)||y||_2 = ||G y||_p`` for all y in R^n (Theorem 2.11).

    For ``1 <= p <= 2``: ``n / ε²``.  For p > 2, the three regimes of the
    theorem (constant C = 1): ``p^p n/ε²`` for small ε, ``(np)^{p/2}/ε`` in the
    middle, ``n^{p/2} log^{p/2}(1/ε) / (p ε)^{p/2}`` for ``1/p < ε < 1``.

    Parameters
    ----------
    n : int
        Dimension of the subspace.
    p : float >= 1
    eps : float in (0, 1)

    Returns
    -------
    int

    Examples
    --------
    >>> from gpusketch.fair import dvoretzky_size
    >>> dvoretzky_size(10, 2, 0.5)
    40
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    if p <= 2:
        return math.ceil(n / eps**2)
    small = p ** (p / 2) * n ** (-(p - 2) / (2 * (p - 1)))
    if eps <= small:
        return math.ceil(p**p * n / eps**2)
    if eps <= 1 / p:
        return math.ceil((n * p) ** (p / 2) / eps)
    return math.ceil(n ** (p / 2) / (p * eps) ** (p / 2) * math.log(1 / eps) ** (p / 2))


# ---------------------------------------------------------------------------
# Extracting a rank-r row space of a bicriteria solution for the fair objective
# ---------------------------------------------------------------------------


def _smoothed_max(w, tau, C, n2, shape):
    """``τ log Σ_i exp((n2_i − tr(P_W C_i))/τ)`` and its gradient in W (flattened, ``shape = (ρ, r)``).

    The gradient of ``tr(P_W C)`` in W is ``2 (I − P_W) C W (WᵀW)⁻¹``, weighted
    by the softmax ``π`` of the smoothed terms.
    """
    rho, r = shape
    W = w.reshape(rho, r)
    Gi = np.linalg.inv(W.T @ W)
    cap = np.array([np.trace(Gi @ W.T @ Ci @ W) for Ci in C])
    z = (n2 - cap) / tau
    zmax = z.max()
    e = np.exp(z - zmax)
    pi = e / e.sum()
    P = W @ Gi @ W.T
    grad = np.zeros_like(W)
    for p_i, Ci in zip(pi, C):
        grad -= p_i * 2 * (np.eye(rho) - P) @ Ci @ W @ Gi
    return tau * (zmax + math.log(e.sum())), grad.ravel()


def _smooth_max_descent(C, n2, W0, taus):
    """Minimise ``max_i (n2_i − tr(P_W C_i))`` over r-dim subspaces ``P_W`` of R^ρ, from W0.

    The max is smoothed as ``τ log Σ exp(·/τ)`` (τ decreasing; ``_smoothed_max``).
    L-BFGS (SciPy).
    """
    import scipy.optimize

    W = W0
    for tau in taus:
        res = scipy.optimize.minimize(_smoothed_max, W.ravel(), args=(tau, C, n2, W0.shape), jac=True,
                                      method="L-BFGS-B", options={"maxiter": 300})
        W = np.linalg.qr(res.x.reshape(W0.shape))[0]
    return W


def best_fair_subspace(C, n2, r, *, mwu_rounds=60):
    """An r-dim subspace of R^ρ (columns of the returned ρ × r matrix) for ``min max_i (n2_i − tr(UᵀC_iU))``.

    ``C_i = B_iᵀB_i`` are the groups' Gram matrices in a ρ-dim basis and
    ``n2_i = ||A_i||_F²``.  Starts: the pooled top-r eigenvectors, each
    group's top-r, and the best response of a multiplicative-weights game
    over the groups, plus a round-robin pick of each group's directions;
    the three best are refined by smoothed-max descent and the best exact
    max cost wins.
    """
    C = [np.asarray(c, dtype=np.float64) for c in C]
    n2 = np.asarray(n2, dtype=np.float64)
    scale = max(float(n2.max()), 1e-300)
    Cs, n2s = [c / scale for c in C], n2 / scale

    def top(M):
        return np.linalg.eigh(M)[1][:, ::-1][:, :r]

    def worst(U):
        return max(n2s[i] - np.trace(U.T @ Cs[i] @ U) for i in range(len(Cs)))

    starts = [top(sum(Cs))] + [top(c) for c in Cs]
    lam = np.full(len(Cs), 1.0 / len(Cs))
    best_mwu, best_val = None, np.inf
    for t in range(mwu_rounds):
        U = top(sum(li * c for li, c in zip(lam, Cs)))
        costs = np.array([n2s[i] - np.trace(U.T @ Cs[i] @ U) for i in range(len(Cs))])
        if costs.max() < best_val:
            best_mwu, best_val = U, costs.max()
        if costs.max() <= 1e-12:
            # Every group fits to round-off (k at or above the data's rank): nothing to
            # balance, and costs of ±1e-16 over 1e-300 overflowed the weights to NaN.
            break
        lam = lam * np.exp(2.0 * costs / costs.max() / math.sqrt(t + 1))
        lam /= lam.sum()
    starts.append(best_mwu)
    # Round robin: the i-th direction from group i mod ℓ's ranking, orthogonalised.
    tops = [np.linalg.eigh(c)[1][:, ::-1] for c in Cs]
    rr = np.stack([tops[j % len(Cs)][:, j // len(Cs)] for j in range(r)], axis=1)
    if np.linalg.matrix_rank(rr) == r:
        starts.append(np.linalg.qr(rr)[0])
    if len(Cs) == 1 or r == C[0].shape[0]:
        return min(starts, key=worst)
    # Block-diagonal group structure makes eigenvector starts saddle points of the
    # smoothed max (zero gradient); a fixed small perturbation lets descent leave them.
    jitter = np.random.default_rng(0).standard_normal((C[0].shape[0], r)) * 0.05
    taus = [1e-2, 1e-3, 1e-4]
    promising = sorted(starts, key=worst)[:3]
    refined = [_smooth_max_descent(Cs, n2s, np.linalg.qr(U + jitter)[0], taus) for U in promising]
    return min(starts + refined, key=worst)


class _BasisGrams:
    """Each group's Gram in a basis Q, ``C_i = (A_i Qᵀ)ᵀ(A_i Qᵀ)``, and ``||A_i||²``, for the
    bases of a call's trials; and the pooled top-r row space (``pooled``).

    Directly a basis costs ``n_i (dρ + ρ²)`` per group (ρ rows of Q); through
    the Gram ``A_iᵀA_i``, formed once (``n_i d²``), it costs ``d²ρ``.  The Grams
    are formed at the first basis when they cost less over ``trials`` bases,
    ``d² <= trials (dρ + ρ²)``: two 300000 × 50 groups, 5 trials, ρ = 30,
    ``fair.low_rank`` 0.72-0.78x the time (alternating against 5eaa16a), the
    same costs to 12 digits.
    """

    def __init__(self, groups, trials, xp):
        self.groups, self.trials, self.xp = groups, trials, xp
        self.grams, self.n2, self._pooled = None, None, None

    def _prepare(self, rho):
        """At the first basis (ρ rows): ``||A_i||²``, and the Grams if they are the cheaper route."""
        if self.n2 is None:
            d = self.groups[0].shape[1]
            self.n2 = [squared_norm(A, self.xp) for A in self.groups]
            if d * d <= self.trials * (d * rho + rho * rho):
                self.grams = [to_host(to_dense(A.T @ A)) for A in self.groups]

    def __call__(self, Q):
        rho = Q.shape[0]
        self._prepare(rho)
        if self.grams is None:
            return [to_host(b.T @ b) for b in (to_dense(A @ Q.T) for A in self.groups)], self.n2
        Qh = to_host(Q)
        C = [Qh @ G @ Qh.T for G in self.grams]
        return [(c + c.T) / 2 for c in C], self.n2

    def pooled(self, r, rho, seed):
        """Orthonormal rows spanning the top-r eigenvectors of ``Σ_i A_iᵀA_i`` (the SVD baseline's V).

        From the Grams' sum when they are formed (exact); otherwise by block
        subspace iteration on ``Σ_i A_iᵀA_i`` (r + 10 columns, 4 passes over
        the groups, Rayleigh–Ritz at the end), which never stacks the groups.
        Computed once per call; ρ is the size of the first basis.
        """
        if self._pooled is not None:
            return self._pooled
        xp, d = self.xp, self.groups[0].shape[1]
        self._prepare(rho)
        if self.grams is not None:
            U = np.linalg.eigh(sum(self.grams))[1][:, ::-1][:, :r]
            self._pooled = xp.asarray(np.ascontiguousarray(U.T), dtype=self.groups[0].dtype)
            return self._pooled
        dtype = self.groups[0].dtype
        Z = Gaussian(min(d, r + 10), d, seed=seed).todense(xp).T.astype(dtype)  # d × l
        for _ in range(4):
            Z = orthonormalize(Z, xp)[0]
            Z = sum(to_dense(A.T @ to_dense(A @ Z)) for A in self.groups)
        Z = orthonormalize(Z, xp)[0]
        B = sum(to_host(Y.T @ Y) for Y in (to_dense(A @ Z) for A in self.groups))
        U = np.linalg.eigh((B + B.T) / 2)[1][:, ::-1][:, :r]
        self._pooled = (Z @ xp.asarray(U, dtype=dtype)).T
        return self._pooled


def _extract(groups, Vb, r, xp, grams, seed):
    """Best r-dim row space inside ``span(Ṽ) + span(V_SVD)``, for the fair cost.

    ``V_SVD`` is the pooled top-r row space (``_BasisGrams.pooled``, the SVD
    baseline's answer), so the search space always has dimension >= r and
    contains the baseline: the pooled start of ``best_fair_subspace`` is then
    the baseline itself, and the answer is never worse than it (exactly so
    when the pooled rows come from the Grams).  ``grams``: a ``_BasisGrams``
    shared by a call's trials.
    """
    Qv = _orth_rows(Vb, xp)  # unit rows before stacking: Ṽ's scale follows (TGAHS)⁺
    Q = _orth_rows(xp.concatenate([Qv, grams.pooled(r, Qv.shape[0] + r, seed)]), xp)
    if r >= Q.shape[0]:
        return Q[:r]
    C, n2 = grams(Q)
    U = xp.asarray(best_fair_subspace(C, n2, r), dtype=Q.dtype)
    return U.T @ Q


# ---------------------------------------------------------------------------
# Algorithm 3
# ---------------------------------------------------------------------------


def _lewis_sample(M, p, s, seed, xp):
    """Row indices and scales ``q_i^{−1/p}`` of ℓp Lewis-weight sampling of M (about s rows)."""
    n, t = M.shape
    if s >= n or n < t:
        return xp.arange(n), xp.ones(n, dtype=M.dtype)
    w = lewis_weights(M, min(p, 3.9), exact=True, seed=seed)
    q = xp.minimum(1.0, s * w / float(w.sum()))
    keep = xp.flatnonzero(_kernels.uniforms(n, derive_seed(seed, 1), xp) < q)
    return keep, q[keep] ** (-1.0 / p)


def _weighted_choice(weights, count, seed, xp):
    """``count`` distinct indices, drawn without replacement ∝ weights (Efraimidis–Spirakis keys)."""
    u = _kernels.uniforms(weights.size, seed, xp)
    keys = xp.log(u) / xp.maximum(weights, 1e-300)
    return xp.sort(xp.argsort(-keys)[:count])


def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def _bicriteria(groups, k, p, embed, columns, t, s, seed, xp, timings=None):
    """One run of Algorithm 3: ``Ṽ = (T G A H S)⁺ (T G A)``; returns Ṽ and sizes.

    ``timings`` (if given) accumulates ``sketch_s`` (G, H, column step,
    Lewis weights, T) and ``factor_s`` (the pseudo-inverse step).
    """
    t0 = time.perf_counter()
    n_emb, d_emb = embed
    d = groups[0].shape[1]
    GA = xp.concatenate([Gaussian(n_emb, A.shape[0], seed=derive_seed(seed, 10 + i)) @ A
                         for i, A in enumerate(groups)])
    H = Gaussian(d_emb, d, seed=derive_seed(seed, 1)).todense(xp).T.astype(GA.dtype)  # d × d'
    GAH = GA @ H
    if columns == "sample":
        # Theorem 2.12's ℓp column subset: t columns of GAH drawn by ℓp Lewis weights of
        # its top-k right singular subspace (d' × k), without replacement.
        Wk = xp.linalg.svd(GAH, full_matrices=False)[2][:k].T
        w = lewis_weights(Wk, min(p, 3.9), exact=True, seed=derive_seed(seed, 2))
        cols = _weighted_choice(w, min(t, d_emb), derive_seed(seed, 3), xp)
        GAHS = GAH[:, cols]
    else:
        GAHS = GAH
    keep, scale = _lewis_sample(GAHS, p, s, derive_seed(seed, 4), xp)
    TGAHS = GAHS[keep] * scale[:, None]
    TGA = GA[keep] * scale[:, None]
    _sync(xp)
    t1 = time.perf_counter()
    # TGAHS is at most ℓn' × d' (60 × 30 by default): its pseudo-inverse is a
    # host-sized problem, and a cuSOLVER SVD of it costs milliseconds of launches.
    Vt = xp.asarray(np.linalg.pinv(to_host(TGAHS)) @ to_host(TGA))
    _sync(xp)
    if timings is not None:
        timings["sketch_s"] += t1 - t0
        timings["factor_s"] += time.perf_counter() - t1
    return Vt, {"t": int(GAHS.shape[1]), "s": int(keep.size)}


def _check_common(groups, k, p, trials, seed):
    groups, xp = as_groups(groups, keep_sparse=True)
    k = _check_k(k, groups)
    if p is None:
        p = min(3.0, max(1.0, math.log(len(groups))))
    p = check_real_in(p, "p", 1, 16)
    trials = check_positive_int(trials, "trials")
    return groups, xp, k, p, trials, check_seed(seed)


def low_rank(groups, k, *, rank=None, p=None, embed=(30, 30), columns="full", t=None, s=None,
             trials=5, seed=None):
    """Socially fair rank-k approximation: ``min_V max_i ||A_i V⁺V − A_i||_F`` (Algorithm 3).

    Parameters
    ----------
    groups : list of (n_i, d) arrays or sparse matrices (NumPy or CuPy, one device)
        SciPy sparse groups stay sparse (products, and residuals a row
        block at a time: 500000 x 200 CSR groups at 1 % took 0.27x the
        time and 0.1x the memory of densifying them); cupyx ones are
        densified.
    k : int
        Target rank.
    rank : int, optional
        Rows of the returned V.  Default k; a larger value returns a
        bicriteria solution of that rank (capped at the rank of Ṽ).
    p : float in [1, 16], optional
        The ℓp relaxation of the max over groups (Lemma 3.1 wants
        ``p ≈ log ℓ``); default ``max(1, min(3, ln ℓ))``.  The paper's
        experiments use p = 1.  Lewis weights need p < 4 for their
        fixed-point iteration: for p >= 4 the sampling probabilities use
        ℓ_{3.9} Lewis weights (a deviation; the ``q^{−1/p}`` scaling keeps p).
    embed : (int, int)
        Rows n' of the Dvoretzky Gaussians G (per group) and columns d' of
        H.  ``dvoretzky_size(n, p, ε)`` gives Theorem 2.11's sizes, which
        are far larger; the paper's experiments use 30 and 30 (default).
    columns : {"full", "sample"}
        ``"full"``: S = I (all d' columns of GAH, as in the paper's
        experiments); ``"sample"``: t columns picked by ℓp Lewis weights
        (Theorem 2.12's bicriteria step, see Notes).
    t : int, optional
        Columns kept by ``columns="sample"``; default ``min(d', 2k⌈ln(k+1)⌉ + k)``.
    s : int, optional
        Rows kept by the Lewis-weight sampling matrix T; default all rows
        when ``ℓ n' <= 4t``, else ``4t``.
    trials : int
        Independent runs; the best fair cost (on the full data) is kept, the
        paper's success-boosting remark.
    seed : int, optional

    Returns
    -------
    RowSpaceResult
        ``.V`` (rank × d, orthonormal rows), ``.cost`` (the fair cost on the
        full data), ``.info`` (``embed``, ``columns``, ``t``, ``s``, ``p``,
        ``bicriteria_rank`` (rank of Ṽ), ``trials``, ``best_trial``,
        ``group_costs``, ``timings``: ``sketch_s`` for G, H, the column
        step, Lewis weights and T; ``factor_s`` for ``(TGAHS)⁺(TGA)``;
        ``select_s`` for extracting the rank-k row space).

    Notes
    -----
    Algorithm 3: stack ``GA = [G_1A_1; ...; G_ℓA_ℓ]`` with Gaussian ``G_i``
    (n' rows each) and take ``GAH`` with a Gaussian H (d' columns): by
    Dvoretzky's theorem the entrywise ℓp norm of ``G_i A_i M H`` tracks
    ``||A_i M||_F``, so ``Σ_i ||A_i(V⁺V − I)||_F^p`` becomes an entrywise
    ℓp low-rank problem on GAH.  A column subset ``GAHS`` (Theorem 2.12)
    spans a good ℓp solution, T samples rows by ℓp Lewis weights of GAHS,
    and ``Ṽ = (TGAHS)⁺(TGA)`` (rank ≤ t) is the bicriteria answer.

    Extracting k rows (not in the paper, whose guarantee is bicriteria): an
    orthonormal basis Q of Ṽ's row space together with the pooled top-k
    row space (the SVD baseline's, computed once per call) is formed, each
    group's Gram matrix in that basis ``C_i = (A_iQᵀ)ᵀ(A_iQᵀ)`` is formed
    (one pass over the data, or ``Q A_iᵀA_i Qᵀ`` from Grams formed once when
    d is small against the trials' bases), and the best k-dim subspace for
    ``max_i (||A_i||² − tr(UᵀC_iU))`` is searched by smoothed-max descent
    from the pooled, the per-group and a multiplicative-weights start
    (``best_fair_subspace``).  The baseline's rows are in the basis because
    Ṽ alone can miss the directions that every group shares: on 40 random
    instances with d = 35-90 (d > d' = 30) the answer was up to 1.5 % above
    the best fair subspace found from the full Grams and above the baseline
    in 6 of them; with them, at most 0.095 % above and never above the
    baseline.

    Deviation: Theorem 2.12 (Woodruff–Yasuda ℓp column subset selection) is
    replaced by ℓp Lewis-weight sampling of columns on the top-k right
    singular subspace of GAH, the standard practical surrogate.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import fair
    >>> A1 = np.array([[2.0, 0, 0, 0], [0, 2, 0, 0]]); A2 = np.array([[0, 0, 1.99, 0], [0, 0, 0, 1.99]])
    >>> res = fair.low_rank([A1, A2], 2, seed=0)
    >>> round(res.cost, 3), round(fair.baseline([A1, A2], 2).cost, 3)
    (1.995, 2.814)
    """
    with annotate("gpusketch.fair.low_rank"):
        groups, xp, k, p, trials, seed = _check_common(groups, k, p, trials, seed)
        r = k if rank is None else _check_k(rank, groups, "rank")
        if r < k:
            raise ValueError(f"rank must be at least k = {k}, got {rank}")
        if columns not in ("full", "sample"):
            raise ValueError(f"columns must be 'full' or 'sample', got {columns!r}")
        if not isinstance(embed, (tuple, list)) or len(embed) != 2:
            raise ValueError(f"embed must be a pair (rows, columns) of the Dvoretzky embedding, got {embed!r}")
        n_emb, d_emb = (check_positive_int(v, "embed") for v in embed)
        t = min(d_emb, 2 * k * math.ceil(math.log(k + 1)) + k) if t is None else check_positive_int(t, "t")
        t_eff = t if columns == "sample" else d_emb
        s = (len(groups) * n_emb if len(groups) * n_emb <= 4 * t_eff else 4 * t_eff) if s is None else \
            check_positive_int(s, "s")
        best = None
        timings = {"sketch_s": 0.0, "factor_s": 0.0, "select_s": 0.0}
        grams = _BasisGrams(groups, trials, xp)
        for trial in range(trials):
            Vb, sizes = _bicriteria(groups, k, p, (n_emb, d_emb), columns, t, s, derive_seed(seed, trial), xp,
                                    timings)
            t0 = time.perf_counter()
            V = _extract(groups, Vb, r, xp, grams, derive_seed(seed, 99))
            timings["select_s"] += time.perf_counter() - t0
            c2 = group_costs2(groups, V, xp)
            if best is None or max(c2) < max(best[1]):
                best = (V, c2, trial, sizes, int(_orth_rows(Vb, xp).shape[0]))
        V, c2, trial, sizes, rho = best
        info = {"embed": (n_emb, d_emb), "columns": columns, "p": p, "trials": trials, "best_trial": trial,
                "bicriteria_rank": rho, "group_costs": [math.sqrt(c) for c in c2], "seed": seed,
                "timings": timings, **sizes}
        return RowSpaceResult(V, math.sqrt(max(c2)), info)


def column_subset(groups, k, *, columns=None, p=None, trials=5, seed=None):
    """Socially fair column subset selection (Algorithm 4).

    Parameters
    ----------
    groups : list of (n_i, d) arrays or sparse matrices
        SciPy sparse groups stay sparse (products, and residuals a row
        block at a time); cupyx ones are densified.
    k : int
        Target rank of the fair low-rank problem.
    columns : int, optional
        Columns to select, ``k' = O(k log k)``; default ``min(d, k + 2k⌈ln(k+1)⌉)``.
    p, trials, seed
        As in ``low_rank`` (Ṽ comes from Algorithm 3).

    Returns
    -------
    ColumnSubsetResult
        ``.columns`` (sorted indices), ``.M`` (one ``k' × d`` matrix per
        group), ``.cost = max_i ||A_i[:, columns] M_i − A_i||_F``, ``.info``.

    Notes
    -----
    Algorithm 4: Ṽ (bicriteria, from Algorithm 3), leverage scores of the
    columns, k' distinct columns drawn ∝ leverage (without replacement,
    Efraimidis–Spirakis keys on Philox uniforms).  The paper's mixing
    matrix is ``S⁺Ṽ⁺Ṽ`` for every group; here each group gets its
    least-squares mixing ``M_i = (A_i C)⁺ A_i``, which is never worse for
    the group and so never worse for the max.

    Deviation: the leverage scores are those of the fair rank-k row space V
    that ``low_rank`` extracts from Ṽ, not of Ṽ itself.  The paper draws
    ``O(r log r)`` columns by Ṽ's leverage, r = rank(Ṽ); we draw
    ``k' = O(k log k)``, the count that leverage sampling of a rank-k V
    supports.  Ṽ's leverage carries no information once r reaches d (its
    rows then span every column equally): with d = 10, k = 1 and all the
    mass in one column, Ṽ's scores were uniform and 1 of 20 seeds missed
    that column in all five trials, at 180 times the cost.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import fair
    >>> rng = np.random.default_rng(0)
    >>> groups = [rng.standard_normal((50, 3)) @ rng.standard_normal((3, 12)) for _ in range(3)]
    >>> res = fair.column_subset(groups, 3, columns=6, seed=1)
    >>> len(res.columns), res.M[0].shape, bool(res.cost < 1e-8)
    (6, (6, 12), True)
    """
    with annotate("gpusketch.fair.column_subset"):
        groups, xp, k, p, trials, seed = _check_common(groups, k, p, trials, seed)
        d = groups[0].shape[1]
        kc = min(d, k + 2 * k * math.ceil(math.log(k + 1))) if columns is None else check_positive_int(columns, "columns")
        if kc > d:
            raise ValueError(f"columns must be at most d = {d}, got {kc}")
        best = None
        grams = _BasisGrams(groups, trials, xp)
        for trial in range(trials):
            tseed = derive_seed(seed, trial)
            Vb, _ = _bicriteria(groups, k, p, (30, 30), "full", None, 10**9, tseed, xp)
            V = _extract(groups, Vb, k, xp, grams, derive_seed(seed, 99))  # the fair rank-k row space (Notes)
            lev = (V * V).sum(axis=0)  # leverage scores of its columns (they sum to k)
            cols = _weighted_choice(lev + 1e-12 * float(lev.max()), kc, derive_seed(tseed, 20), xp)
            Ms, c2 = [], []
            for A in groups:
                AC = to_dense(A[:, cols])
                M = xp.ascontiguousarray(to_dense(A.T @ xp.linalg.pinv(AC).T).T)  # (A C)⁺ A, A on the right
                Ms.append(M)
                c2.append(residual2(A, AC, M, xp))
            if best is None or max(c2) < max(best[2]):
                best = (cols, Ms, c2, trial)
        cols, Ms, c2, trial = best
        info = {"k": k, "p": p, "trials": trials, "best_trial": trial,
                "group_costs": [math.sqrt(c) for c in c2], "seed": seed}
        return ColumnSubsetResult(cols, Ms, math.sqrt(max(c2)), info)
