"""Tukey regression by row sampling and by an oblivious sketch (Clarkson, Wang, Woodruff, ICML 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _kernels
from .._backend import (
    array_namespace,
    as_matrix,
    as_system,
    check_positive_int,
    check_real_in,
    check_seed,
    is_sparse,
    sparse_module,
    to_dense,
    to_host,
)
from .._nvtx import annotate
from .._random import STREAM_UNIFORM, derive_seed
from ..linalg._numerics import svd_rank
from ..operators import MultiLevelCountSketch
from ..operators._base import MAX_SKETCH_ROWS
from .irls import irls
from .lewis import lewis_weights
from .losses import TukeyLoss

__all__ = ["heavy_coordinates", "tukey_regression", "TukeyResult"]

_METHODS = ("sampling", "oblivious", "full")


@dataclass(frozen=True)
class TukeyResult:
    """Tukey regression solution.

    Attributes
    ----------
    x : array
        Solution of the reduced weighted problem, on the device of A.
    cost : float
        ``Σ_i M((Ax − b)_i)`` on the full data.
    rows : array
        Row indices of the reduced problem (``"sampling"``), or ``None`` for
        the oblivious sketch (its rows are sketch buckets).
    weights : array
        Weights ``w`` of the reduced problem ``min Σ w_i M((SAx − Sb)_i)``.
    info : dict
    """

    x: Any
    cost: float
    rows: Any
    weights: Any
    info: dict = field(default_factory=dict)


def _keeps_sparse(A, xp, p):
    """Whether a sparse A stays sparse: on the CPU with p = 2, where the group leverage
    scores have a sparse route (``_kernels._group_leverage_sparse``)."""
    return is_sparse(A) and xp is np and p == 2


def _stack(A, b, xp, p):
    """``[A b]``: CSR where ``_keeps_sparse``, dense and C-order otherwise (the sampling rounds
    gather its rows; concatenating a Fortran-order A had given a Fortran-order ``[A b]``,
    and Tukey sampling took 2.4x the time)."""
    if _keeps_sparse(A, xp, p):
        return sparse_module(xp).hstack([A, b[:, None]], format="csr")
    d = A.shape[1]
    R = xp.empty((A.shape[0], d + 1), dtype=xp.result_type(A.dtype, b.dtype))
    R[:, :d] = to_dense(A)
    R[:, d] = b
    return R


def _scores(M, p, seed):
    """Leverage scores (p = 2, by ``_group_leverage`` with one group) or ℓp Lewis weights of M, exact.

    ``seed`` is an int or a zero-argument callable giving one (only Lewis weights use it).
    """
    xp = array_namespace(M)
    if p == 2:
        return _group_leverage(M, xp.zeros(M.shape[0], dtype=xp.int64), 1, xp)
    if M.shape[0] <= M.shape[1]:
        # No more rows than columns (a small group): Lewis weights depend only on the
        # column space, so take the basis U_r Σ_r of the SVD, which has r <= n columns;
        # with r = n every row has leverage 1, which is then the fixed point.
        U, s, _ = xp.linalg.svd(M, full_matrices=False)
        r = svd_rank(s, M.shape)
        if r in (0, M.shape[0]):
            return xp.full(M.shape[0], 1.0 if r else 0.0, dtype=M.dtype)
        M = U[:, :r] * s[:r]
    return lewis_weights(M, p, exact=True, seed=seed() if callable(seed) else seed)


def _group_leverage(Ad, group, alpha, xp, threshold=0.0):
    """Leverage score of each row of ``Ad`` within its group (rows with equal ``group``).

    ``group`` holds labels in ``[0, alpha)``, shape (n,) or (k, n) for k
    labelings of the same rows (the result has its shape).

    All α groups at once instead of α QRs (kernel ``group_leverage``): float64
    Gram matrices ``G_g = A_gᵀA_g``, Jacobi-scaled (``s = diag(G_g)^{−1/2}``),
    ``W_g = V_g Λ_g^{−1/2}`` from their ``eigh`` over the eigenvalues above
    ``10 d ε λ_max`` (smaller ones count as rank deficiency; the CPU takes
    ``W_g = L_g⁻ᵀ`` from a Cholesky factor where it can certify that none
    is cut), and ``ℓ_i = ||(a_i ∘ s) W_{g(i)}||²``.  With ``threshold > 0``
    scores below it are returned as 0, and in groups of at least 12 rows per
    column the CPU scores only the rows that the bound
    ``ℓ_i <= ||a_i ∘ s||² / λ_min`` cannot place below it.  On Gaussian-like
    data that skips the second GEMM for nearly every row (the scaled Gram of
    a group of L rows has ``λ_min ≈ (1 − √(d/L))²``, against
    ``||a_i ∘ s||² ≈ d/L``); at 10 rows per column half the rows pass, and
    the bound's eigenvalues cost about what they save.  With a threshold the
    CPU's scores run in float32 first, and the rows a rigorous rounding
    bound cannot place below the threshold are scored again in float64.  The
    CPU twin gathers each group's rows and runs its GEMMs on them; the GPU
    twin (and the CPU, for groups under 512 rows) pads the groups into one
    stack and runs batched GEMMs and factorizations.  For groups of more
    than 64 d rows the CPU first bounds every row through the Grams of a
    subset of the rows, runs of four at a stride (a subset's Gram is below
    the group's), and only groups where that bound leaves a row at or above
    the threshold are gathered: the scores at or above it are the same, at a
    fraction of the passes over A.  A SciPy sparse ``Ad`` of groups over 512
    rows and density up to 1/4 takes the CPU twin's sparse route: all Grams
    from one block-diagonal sparse product, the scores from sparse-times-dense
    products (``_kernels._group_leverage_sparse``).
    Squaring the condition number costs ``ε κ²`` relative accuracy, harmless
    for the 1/5 threshold the partition test applies and for sampling
    probabilities.
    """
    return _kernels.call("group_leverage", xp, Ad, xp.asarray(group), alpha, float(threshold))


def heavy_coordinates(A, alpha, *, method="partition", p=2, seed=None):
    """Rows that can carry a large coordinate of a vector in range(A) with small Tukey loss.

    Returns a set I with: every ``y = Ax`` with ``||y||_M <= α`` (loss in units of
    its saturation value) has all coordinates ``|y_i| > τ`` inside I
    (Theorem 2.1).

    Parameters
    ----------
    A : (n, d) array or sparse matrix
        A SciPy sparse A with p = 2 is scored sparse (group Grams and scores
        from sparse products, O(nnz·d + n·d) per partition), other sparse
        input densified.
    alpha : int >= 1
        Past ``2³¹ − 1`` the partition draws from ``2³¹ − 1`` groups (the kernels
        index hash buckets with 32-bit ints): still singletons but for about
        ``n²/2³²`` pairs.
    method : {"partition", "peeling"}
        ``"peeling"``: Figure 2 — α rounds, each adding the rows whose
        leverage score in the remaining rows is at least ``1/(2α)`` (the bound
        of the paper's eq. (2)).  ``"partition"``: Figure 3 — ``⌈2 ln(dα)⌉ + 2``
        repetitions of a uniform random partition into α groups, adding rows
        whose leverage score within their group is at least 1/5 (the heavy
        row holds at least 1/(1+4) of its group's mass when the group's light
        mass is at most 4, which Markov gives with probability 3/4).  For
        p = 2 the groups' leverage scores come from one batched pass
        (``_group_leverage``) rather than one QR per group; for p < 2 their
        Lewis weights from one batched fixed-point iteration
        (``_group_lewis_weights``), stopped once every weight's side of 1/5 is
        certain.
    p : float in [1, 2]
        With p < 2, ℓp Lewis weights replace leverage scores.
    seed : int, optional

    Returns
    -------
    index array (sorted), on the device of A

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch.robust import heavy_coordinates
    >>> A = np.random.default_rng(0).standard_normal((2000, 3)); A[7] *= 200
    >>> 7 in heavy_coordinates(A, 4, seed=1).tolist()
    True
    """
    with annotate("gpusketch.robust.heavy_coordinates"):
        A, xp = as_matrix(A)
        alpha = check_positive_int(alpha, "alpha")
        if method not in ("partition", "peeling"):
            raise ValueError(f"method must be 'partition' or 'peeling', got {method!r}")
        p = check_real_in(p, "p", 1, 2)
        Ad = A if _keeps_sparse(A, xp, p) else to_dense(A)
        return _heavy_coordinates(Ad, alpha, method, p, check_seed(seed), xp)


def _heavy_coordinates(Ad, alpha, method, p, seed, xp):
    """``heavy_coordinates`` on a dense, validated ``Ad`` (Tukey sampling calls it every round)."""
    n, d = Ad.shape
    chosen = np.zeros(n, dtype=bool)
    if method == "peeling":
        for t in range(alpha):
            rest = np.flatnonzero(~chosen)
            if rest.size == 0:
                break
            u = to_host(_scores(Ad[xp.asarray(rest)], p, derive_seed(seed, t)))
            new = rest[u >= 1.0 / (2 * alpha)]
            if new.size == 0:
                break
            chosen[new] = True
    else:
        reps = int(math.ceil(2 * math.log(max(d * alpha, 2)))) + 2

        # Labels are hash buckets, indexed by 32-bit ints in the kernels: past 2³¹ − 1 groups
        # the partition is drawn over 2³¹ − 1 of them, all singletons but for ~n²/2³² pairs.
        buckets = min(alpha, MAX_SKETCH_ROWS)

        def labels(t):
            return _kernels.call("hash_values", xp, 0, n, buckets, 1, derive_seed(seed, t), STREAM_UNIFORM)[0][:, 0]

        # With α > n most groups are empty: number the non-empty ones 0, 1, ... (the
        # same row sets, so the same scores) so that no pass costs O(α).
        groups = min(alpha, n)

        def compact(lab):
            return lab if alpha <= n else xp.unique(lab, return_inverse=True)[1].reshape(-1)

        if p == 2 and alpha <= n:
            # All groups of a repetition in one batched pass, and several repetitions per
            # call (at most 1 GiB of scores), which share its screening pass; the CPU
            # hashes the labels only where that pass reads them.
            per = max(1, min(reps, (1 << 30) // (8 * n)))
            for t0 in range(0, reps, per):
                seeds = [derive_seed(seed, t) for t in range(t0, min(reps, t0 + per))]
                u = to_host(_kernels.call("hashed_group_leverage", xp, Ad, alpha, seeds, STREAM_UNIFORM,
                                          threshold=0.2))
                chosen[(u >= 0.2).any(axis=0)] = True
        elif p == 2:
            for t in range(reps):
                u = to_host(_group_leverage(Ad, compact(labels(t)), groups, xp, threshold=0.2))
                chosen[u >= 0.2] = True
        else:  # Lewis weights within every group, all groups in one fixed-point iteration
            for t in range(reps):
                u = to_host(_group_lewis_weights(Ad, compact(labels(t)), groups, p, 0.2, xp))
                chosen[u >= 0.2] = True
    return xp.asarray(np.flatnonzero(chosen))


def _group_lewis_weights(Ad, group, groups, p, threshold, xp):
    """ℓp Lewis weights of each row within its group, for every group at once, as far as
    their side of ``threshold`` needs.

    ``lewis_weights(A_g, p, exact=True)``'s fixed point, ``w ← (τ w^{2/p − 1})^{p/2}``
    with τ the leverage scores of ``diag(w^{1/2 − 1/p}) A_g``, run on all groups
    together: each step is one batched ``_group_leverage`` pass over the rows
    instead of one QR per group (one call per group and step cost 0.5 ms of
    Python: 1982 groups × ~45 steps were 51 s of Tukey sampling at p = 1 on
    10⁵ × 20).  The map contracts ``log w`` by ``c = |1 − p/2|`` per step in the
    max norm (Cohen & Peng, p < 4), so after a step that moved ``log w`` by at
    most δ every weight is within ``c δ / (1 − c)`` of its fixed point in
    ``log``: the loop stops once that places every nonzero weight on one side of
    ``threshold``, and the returned iterate compares with it as the fixed point
    does.  It also stops when no weight moves by more than 500 ε of itself, or
    after 1000 steps.  A group of no more rows than its rank has every weight 1
    (the fixed point ``_scores`` takes directly); a rank-deficient group's
    scores are those of its range, as there.  ``threshold=None``: run until
    settled.
    """
    n = Ad.shape[0]
    w = xp.ones(n, dtype=xp.float64)
    tiny = np.finfo(np.float64).tiny
    settled = 500 * np.finfo(np.float64).eps
    c = abs(1 - p / 2)
    for _ in range(1000):
        wc = xp.maximum(w, tiny)  # zero rows have weight 0; keep their powers finite
        tau = _group_leverage(Ad * (wc ** (0.5 - 1 / p))[:, None], group, groups, xp)
        w = (tau * wc ** (2 / p - 1)) ** (p / 2)
        if bool((xp.abs(w - wc) <= settled * w + tiny).all()):
            break
        live = w > 0  # (zero rows stay 0: below any threshold)
        if threshold is None or not bool(live.any()):
            continue
        log_w = xp.log(xp.where(live, w, 1.0))
        reach = c / (1 - c) * float(xp.abs(log_w - xp.log(wc))[live].max()) * (1 + 1e-6) + 1e-12
        if bool((~live | (xp.abs(log_w - math.log(threshold)) > reach)).all()):
            break
    return w


def tukey_regression(A, b, tau, *, method="sampling", rows=None, p=2, alpha=None, branching=4.0, trials=1,
                     seed=None):
    """Tukey regression ``min_x Σ_i M((Ax − b)_i)`` by dimensionality reduction, then weighted IRLS.

    Parameters
    ----------
    A : (n, d) array or sparse matrix;  b : (n,) array
    tau : float, 1.5e-154 <= tau <= 1.3e154 (τ² finite and normal in float64)
        Tukey threshold (``TukeyLoss(tau, p)``).
    method : {"sampling", "oblivious", "full"}
        ``"sampling"``: Figure 4's recursive row sampling.  ``"oblivious"``: the
        §2.4 sketch.  ``"full"``: IRLS on all rows (the baseline).
    rows : int, optional
        Size of the reduced problem; default ``40 (d + 1)``.  At
        ``10 (d + 1)`` (the earlier default) the reductions were unreliable
        on heavy-tailed designs: with A of t(1.5) entries (n = 5000-20000,
        d = 2-11, half with 5 % of b at 10⁴), row sampling's cost was median
        1.22, p90 2.32, max 5.2 times the full IRLS's (163 cases), the
        oblivious sketch's max 4.4 (274 cases); at ``40 (d + 1)``: median
        1.023, p90 1.13, max 1.33, and max 1.50.  Gaussian A: max 1.35 → 1.09
        and 3.25 → 1.57.  The reduced IRLS stays a small problem.  With
        ``rows >= n`` both reductions keep the whole problem (row sampling
        has nothing to halve; the oblivious sketch, which measured cost
        ratios up to 49 at n = 6, d = 5, is skipped).
    p : float in [1, 2]
        Loss exponent (and Lewis weights instead of leverage scores for p < 2).
    alpha : int, optional
        Heavy-coordinate budget of Figure 3 (the paper's poly(d log n / ε));
        default ``d + 1``.
    branching : float > 1
        Subsampling ratio β between levels of the oblivious sketch (default 4;
        the paper's is ``d log n``, see Notes).
    trials : int
        Independent reductions; the one whose solution has the lowest cost
        on the full data is returned (the paper's experiments take the best
        of 10).
    seed : int, optional

    Returns
    -------
    TukeyResult
        ``.x``, ``.cost`` (full data), ``.rows`` and ``.weights`` of the reduced
        problem, ``.info`` (with the ``seed`` that replays the run, drawn when
        None was given).

    Notes
    -----
    Row sampling (Figure 4), on ``[A b]`` (``y = Ax − b`` lies in its range):
    each round finds heavy rows I (``heavy_coordinates``, Figure 3, with
    ``min(α, |R| / (10(d+1)))`` groups so that groups stay much larger than d
    as the problem shrinks, and none below ``10(d+1)`` rows — the paper stops
    at poly(d log n/ε) ≫ αd rows, we go down to ``rows``), keeps
    them with probability 1, keeps every other row with probability
    ``min(1, 1/2 + u_i · rows/(4(d+1)))`` (u its leverage score or Lewis
    weight among the non-heavy rows; the paper's ``poly(d/ε)`` factor is taken
    as ``rows/(4(d+1))``, so an average row, ``u ≈ (d+1)/|R|``, is kept with
    probability at most 3/4 down to the target size while rows of high
    leverage survive), and divides the weights of kept rows by their
    probability (doubling them per halving).  Rounds repeat until at most
    ``rows`` remain, or stop when a round removes fewer than 5 % of the rows.

    Oblivious sketch (§2.4): a ``MultiLevelCountSketch`` of ``H + 1`` levels,
    level h a CountSketch into ``r = ⌈rows/(H+1)⌉`` buckets of the rows whose
    Philox uniform is below ``β^{-h}`` (nested subsamples), all of weight
    ``β^h``; one pass over A (one scatter-add kernel on the GPU) and one over
    b.  Its guarantee is an O(log n) approximation, not 1 + ε.

    Deviation: the paper's branching is ``β = d log n`` with ``H = log_β n``
    levels, for sketches of poly(d log n) rows.  At the sizes the paper's
    experiments use (2d–10d rows) that leaves 2–3 levels: level 0 sums
    ``n/r`` residuals per bucket, far beyond τ, so all of it saturates, and
    one level carries the fit.  We default to ``β = 4`` and stop at
    ``H = ⌈log_β(4n/rows)⌉`` (the deepest level keeps about ``rows/4``
    rows; deeper ones would hold mostly empty buckets): some level then has
    about one row per bucket for every group of similar residuals.  Measured
    on the Figure 5 setting (n = 10⁴ and 10⁵, d = 20, τ = 10, best of 10),
    the ratio at 3d rows fell from 3.3 (clean) / 12.9 (outliers, n = 10⁵) at
    ``β = d ln n`` to 1.4–2.5 at β = 4.

    The reduced problem is solved by ``irls`` with the weights.

    A SciPy sparse A with p = 2 stays sparse through row sampling (``[A b]`` in
    CSR, its group leverage scores from sparse products; only the reduced
    rows, and late rounds' few denser ones, are densified): 200000 × 200 at
    1 % took 0.49x the time of the densifying route (CPU, 2 cores).

    The reductions pay off for large n: at the paper's n = 10⁴, d = 20 one
    sampling trial took 1.2-2.8x the time of ``"full"`` (CPU, 2 cores), while
    at n = 10⁶, d = 50 the best of 3 sampling trials took 0.18x and the
    oblivious sketch 0.011x the time of statsmodels' RLM on the full data
    (``bench/results/robust-cpu-scale.md``, at ratios 1.043 and 1.335).

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch.robust import tukey_regression
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((10_000, 5)); x = rng.standard_normal(5)
    >>> b = A @ x + rng.standard_normal(10_000); b[:500] = 1e4
    >>> full = tukey_regression(A, b, 3.0, method="full", seed=1)
    >>> red = tukey_regression(A, b, 3.0, rows=60, seed=1)
    >>> bool(red.cost <= 1.5 * full.cost)
    True
    """
    with annotate("gpusketch.robust.tukey_regression"):
        A, b, xp = as_system(A, b)
        n, d = A.shape
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        loss = TukeyLoss(tau, p)  # validates tau and p
        rows, branching, trials = check_reduction(d, rows, branching, trials)
        alpha = (d + 1) if alpha is None else check_positive_int(alpha, "alpha")
        seed = check_seed(seed)
        if method == "full":
            res = irls(A, b, loss, seed=seed)
            return TukeyResult(res.x, res.cost, xp.arange(n), xp.ones(n), {"method": "full", **res.info})
        best = None
        R = _stack(A, b, xp, p) if method == "sampling" else None  # read-only: one copy for every trial
        for t in range(trials):
            s = derive_seed(seed, t)
            if method == "sampling":
                SA, Sb, w, kept, info = _row_sampling(A, b, R, rows, alpha, p, s, xp)
            else:
                SA, Sb, w, kept, info = _oblivious(A, b, rows, branching, s, xp)
            red = irls(SA, Sb, loss, weights=w, seed=derive_seed(s, 99))
            cost = loss.total(to_dense(A @ red.x) - b)
            if best is None or cost < best[1]:
                best = (red.x, cost, kept, w, {"method": method, "seed": seed, "trial": t,
                                               "reduced_rows": int(Sb.shape[0]), **info})
        x, cost, kept, w, info = best
        return TukeyResult(x, cost, kept, w, info)


def check_reduction(d, rows, branching, trials):
    """``tukey_regression``'s ``(rows, branching, trials)`` validated, rows defaulting to ``40 (d + 1)``."""
    rows = 40 * (d + 1) if rows is None else check_positive_int(rows, "rows")
    if rows <= d:
        raise ValueError(f"rows must exceed d = {d}, got {rows}")
    branching = float(check_real_in(branching, "branching", 1, math.inf, closed="()"))
    return rows, branching, check_positive_int(trials, "trials")


def oblivious_sketch(n, rows, beta, seed):
    """The §2.4 sketch of an n-row problem for ``rows`` reduced rows, and its ``info``; None
    when ``rows >= n`` (no sketch can have fewer rows than the problem: it is used whole)."""
    if rows >= n:
        return None, {"levels": 0}
    H = max(1, int(math.ceil(math.log(max(4.0 * n / rows, beta)) / math.log(beta))))
    r = int(math.ceil(rows / (H + 1)))
    S = MultiLevelCountSketch(r, n, H + 1, branching=beta, seed=seed)
    return S, {"levels": H + 1, "branching": beta, "buckets_per_level": r}


def _row_sampling(A, b, R, rows, alpha, p, seed, xp):
    # R: [A b] (``_stack``), read only; then only its kept rows (one copy of the survivors at a time)
    n = A.shape[0]
    cols = R.shape[1]
    idx = xp.arange(n)
    w = xp.ones(n, dtype=R.dtype)
    rounds = 0
    while idx.size > rows:
        rounds += 1
        # Figure 3 needs groups much larger than d (its Ω(1) threshold must exceed the
        # average leverage d/|Γ|); as the problem shrinks, use fewer groups.
        # Below 10(d+1) rows every row's leverage is Ω(1): no row can be told apart as
        # heavy, so the last rounds sample by leverage alone.
        groups = min(alpha, idx.size // (10 * cols))
        is_heavy = xp.zeros(idx.size, dtype=bool)
        if groups >= 1:
            with annotate("gpusketch.robust.heavy_coordinates"):  # R is [A b]'s rows: validated once
                is_heavy[_heavy_coordinates(R, groups, "partition", p, derive_seed(seed, 2 * rounds), xp)] = True
        prob = xp.ones(idx.size, dtype=R.dtype)
        light = xp.flatnonzero(~is_heavy)
        if light.size > cols:
            u = _light_scores(R, is_heavy, light, p, derive_seed(seed, 2 * rounds + 1), xp)
            prob[light] = xp.minimum(1.0, 0.5 + u * (rows / (4 * cols)))
        keep = _kernels.uniforms(idx.size, derive_seed(seed, 10_000 + rounds), xp) < prob
        kept = int(keep.sum())
        if kept > 0.95 * idx.size:
            break  # no progress: the heavy set and high-leverage rows fill the problem
        if kept < cols:
            break  # a round that would leave fewer than d + 1 rows (or none): keep these
        w = w[keep] / prob[keep]
        idx = idx[keep]
        R = R[xp.flatnonzero(keep)]
    return to_dense(A[idx]), b[idx], w, idx, {"rounds": rounds}


def _light_scores(R, is_heavy, light, p, seed, xp):
    """Leverage scores (ℓp Lewis weights for p < 2) of the non-heavy rows ``light`` of R
    among themselves.  On the CPU with p = 2 they are the group leverage scores of the
    labelling heavy / non-heavy, read from R in place: the non-heavy group, most of R,
    is gathered a block at a time beyond 32 MiB (``_group_leverage``), not copied whole
    as ``R[light]`` would be."""
    if light.size == R.shape[0]:
        return _scores(R, p, seed)
    if p == 2 and xp is np:
        return _group_leverage(R, is_heavy.astype(np.int64), 2, xp)[light]
    return _scores(R[light], p, seed)


def _oblivious(A, b, rows, beta, seed, xp):
    n = A.shape[0]
    S, info = oblivious_sketch(n, rows, beta, seed)
    if S is None:
        return to_dense(A), b, xp.ones(n, dtype=b.dtype), xp.arange(n), info
    SA, Sb = S.matmul_each(A, b)  # S's hashes once for both
    return to_dense(SA), Sb, S.weights(xp).astype(b.dtype), None, info
