"""Losses, IRLS (against statsmodels RLM), Lewis weights and ℓp regression."""

import warnings

import numpy as np
import pytest

import gpusketch as gs
from gpusketch.robust import ClippedLpLoss, HuberLoss, TukeyLoss, irls
from gpusketch.robust.lp import solve_lp_small
from conftest import sparse_module, to_numpy


def test_tukey_assumption_1():
    tau = 3.0
    M = TukeyLoss(tau)
    a = np.linspace(-2 * tau, 2 * tau, 2001)
    v = M(a)
    np.testing.assert_allclose(v, M(-a))  # symmetric
    pos = a >= 0
    assert np.all(np.diff(v[pos]) >= -1e-15)  # nondecreasing in |a|
    inside = (np.abs(a) <= tau) & (a != 0)
    ratio = v[inside] / a[inside] ** 2
    assert ratio.min() >= 1 / 6 - 1e-12 and ratio.max() <= 0.5 + 1e-12  # nearly p-th power
    np.testing.assert_allclose(v[np.abs(a) >= tau], tau**2 / 6)  # flat
    # IRLS weight = M'(a)/a, checked by finite differences
    h = 1e-6
    x = np.array([0.3, 1.0, 2.5])
    np.testing.assert_allclose(M.weight(x), (M(x + h) - M(x - h)) / (2 * h) / x, rtol=1e-5)


@pytest.mark.parametrize("loss", [TukeyLoss(2.0, p=1.5), ClippedLpLoss(2.0, p=1.5), HuberLoss(2.0)])
def test_weights_match_derivatives(loss):
    h = 1e-6
    x = np.array([0.4, 1.3, 1.9, 3.0])
    np.testing.assert_allclose(loss.weight(x), (loss(x + h) - loss(x - h)) / (2 * h) / x, rtol=1e-4, atol=1e-8)
    # array-likes, as NumPy's ufuncs take them (a list raised "unsupported operand ... 'list'")
    np.testing.assert_array_equal(loss(list(x)), loss(x))
    np.testing.assert_array_equal(loss.weight(list(x)), loss.weight(x))
    assert loss.total(list(x)) == loss.total(x) and float(loss(0.4)) == loss(x)[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", [TukeyLoss(2.0), TukeyLoss(2.0, p=1), TukeyLoss(2.0, p=1.5),
                                  ClippedLpLoss(2.0, p=1), HuberLoss(2.0)])
def test_losses_near_zero_in_both_precisions(xp, loss, dtype):
    # Exact fits give finite weights, capped at |a| = 1e-8·τ for p < 2, with no
    # floating-point warning in float32; small values keep their relative accuracy.
    a = np.array([0.0, 1e-30, 1e-9, 1e-5, 1e-3, 0.5], dtype=dtype)
    with np.errstate(divide="raise", over="raise", invalid="raise"):  # underflow to 0 is fine
        w, v = loss.weight(xp.asarray(a)), loss(xp.asarray(a))
    assert w.dtype == v.dtype == dtype
    w, v = to_numpy(w), to_numpy(v)
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    np.testing.assert_allclose(w[:3], to_numpy(loss.weight(xp.full(3, 2e-8, dtype=dtype))), rtol=1e-5)
    # near 0 the biweight is a²/2 (1 − a²/(2τ²) + …), so TukeyLoss(p) ≈ (3a²)^{p/2}/6
    exact = {TukeyLoss: lambda x: (3 * x * x) ** (loss.p / 2) / 6,
             ClippedLpLoss: lambda x: x ** loss.p, HuberLoss: lambda x: x * x / 4}[type(loss)]
    np.testing.assert_allclose(v[3:5], exact(a[3:5].astype(np.float64)), rtol=1e-4)


@pytest.mark.parametrize("loss", [TukeyLoss(2.0), ClippedLpLoss(2.0, p=1.5), HuberLoss(2.0)])
def test_losses_take_real_residuals_only(loss):
    # complex residuals gave complex "losses" (the biweight's polynomial of a + bi), object ones objects
    np.testing.assert_array_equal(loss(np.array([1, -3, 0])), loss(np.array([1.0, -3.0, 0.0])))
    assert loss(np.array([True, False])).dtype == np.float64
    for bad in (np.array([1 + 2j, 3]), np.array([1.0, 2.0], dtype=object), np.array([1.0], dtype=np.float16)):
        for f in (loss, loss.weight, loss.total):
            with pytest.raises(TypeError, match="dtype"):
                f(bad)


def test_clipped_lp_values():
    M = ClippedLpLoss(2.0, p=1)
    np.testing.assert_allclose(M(np.array([-1.0, 0.5, 7.0])), [1.0, 0.5, 2.0])


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "1"])
def test_loss_bad_tau(bad):
    with pytest.raises(ValueError, match="tau"):
        TukeyLoss(bad)


@pytest.mark.parametrize("bad", [0.5, 3, "2"])
def test_loss_bad_p(bad):
    with pytest.raises(ValueError, match="p"):
        ClippedLpLoss(1.0, p=bad)


def outlier_problem(n=2000, d=5, frac=0.05, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    x = rng.standard_normal(d)
    b = A @ x + 0.5 * rng.standard_normal(n)
    out = rng.choice(n, int(frac * n), replace=False)
    b[out] = 1e4
    return A, b, x


def test_irls_against_statsmodels_rlm(xp):
    sm = pytest.importorskip("statsmodels.api")
    A, b, _ = outlier_problem()
    tau = 4.685
    fit = sm.RLM(b, A, M=sm.robust.norms.TukeyBiweight(c=tau)).fit(scale_est=sm.robust.scale.HuberScale())
    M = TukeyLoss(tau)
    theirs = M.total(A @ fit.params - b)
    res = irls(xp.asarray(A), xp.asarray(b), M, seed=1)
    assert res.cost <= 1.05 * theirs
    assert abs(res.cost - M.total(A @ to_numpy(res.x) - b)) <= 1e-9 * res.cost


def test_irls_recovers_truth_and_stops_cleanly():
    A, b, x = outlier_problem(frac=0.1, seed=3)
    res = irls(A, b, TukeyLoss(2.0), seed=2)
    np.testing.assert_allclose(res.x, x, atol=0.1)
    # every start meets the relative-decrease test, in 7-14 steps of the 100 allowed
    assert {r["reason"] for r in res.info["runs"]} == {"converged"}
    assert max(r["iterations"] for r in res.info["runs"]) < 30
    # perfect fit: exact data
    res = irls(A, A @ x, TukeyLoss(1.0), seed=2)
    assert res.cost < 1e-20
    # all weights zero: every residual beyond tau from the start, x0 given
    res = irls(A, A @ x + 1e6, TukeyLoss(1.0), x0=np.zeros(5), seed=2)
    assert res.info["runs"][0]["reason"].startswith("all IRLS weights are zero")
    # the cap: one step per start, and the runs say so
    res = irls(A, b, TukeyLoss(2.0), maxiter=1, restarts=1, seed=2)
    assert [(r["iterations"], r["reason"]) for r in res.info["runs"]] == [(1, "maxiter reached")] * 3
    res = irls(A, b, TukeyLoss(2.0), restarts=0, seed=2)  # least squares and Huber starts only
    assert [r["start"] for r in res.info["runs"]] == ["least squares", "huber"]
    # ... and each allowed step is taken: from x0 = 0 the cost falls at steps 1 and 2
    costs = [irls(A, b, TukeyLoss(2.0), x0=np.zeros(5), maxiter=k).cost for k in (1, 2)]
    assert TukeyLoss(2.0).total(-b) > costs[0] > costs[1]


def test_irls_over_relaxed_steps_converge_where_plain_steps_crawl(monkeypatch):
    # The oblivious sketch's weighted reduced problem (30000 x 20, 840 rows): plain IRLS steps
    # crawl along a flat valley and every start stops at maxiter = 100; with the extrapolated
    # steps every start converges, to a reduced objective no higher.
    from gpusketch.robust.tukey import _oblivious

    irls_module = __import__("sys").modules["gpusketch.robust.irls"]
    rng = np.random.default_rng(1)
    A = rng.standard_normal((30000, 20))
    b = A @ np.ones(20) + rng.standard_normal(30000)
    SA, Sb, w, _, _ = _oblivious(A, b, 840, 4.0, 5, np)
    res = irls(SA, Sb, TukeyLoss(3.0), weights=w, seed=1)
    assert all(r["reason"] == "converged" and r["iterations"] <= 60 for r in res.info["runs"])
    monkeypatch.setattr(irls_module, "_MAX_DOUBLINGS", 0)
    plain = irls(SA, Sb, TukeyLoss(3.0), weights=w, seed=1)
    assert all(r["reason"] == "maxiter reached" for r in plain.info["runs"])
    assert res.cost <= plain.cost * (1 + 1e-12)


def test_irls_weights_equal_row_duplication():
    A, b, _ = outlier_problem(n=300, seed=4)
    w = np.ones(300)
    w[:50] = 2.0
    res_w = irls(A, b, TukeyLoss(2.0), weights=w, seed=5)
    res_d = irls(np.vstack([A, A[:50]]), np.concatenate([b, b[:50]]), TukeyLoss(2.0), seed=5)
    assert abs(res_w.cost - res_d.cost) <= 1e-6 * res_d.cost
    # Weights below 1 are weights too: scaling them all scales the objective, not the minimiser.
    res_s = irls(A, b, TukeyLoss(2.0), weights=0.3 * w, seed=5)
    assert abs(res_s.cost - 0.3 * res_w.cost) <= 1e-6 * res_w.cost
    np.testing.assert_allclose(res_s.x, res_w.x, rtol=1e-6, atol=1e-9)
    # A zero weight drops its row (from one start, the iterations are the same).
    keep = np.ones(300, dtype=bool)
    keep[::7] = False
    x0 = np.zeros(A.shape[1])
    res_z = irls(A, b, TukeyLoss(2.0), weights=keep.astype(float), x0=x0)
    res_k = irls(A[keep], b[keep], TukeyLoss(2.0), x0=x0)
    np.testing.assert_allclose(res_z.x, res_k.x, rtol=1e-9, atol=1e-12)


def test_lewis_weights(xp):
    rng = np.random.default_rng(6)
    A = rng.standard_normal((1500, 8)) * np.exp(rng.standard_normal((1500, 1)))
    w2 = to_numpy(gs.lewis_weights(xp.asarray(A), 2, exact=True))
    np.testing.assert_allclose(w2, to_numpy(gs.leverage_scores(xp.asarray(A), exact=True)), atol=1e-12)
    w1 = to_numpy(gs.lewis_weights(xp.asarray(A), 1, exact=True))
    assert abs(w1.sum() - 8) < 1e-6
    # the fixed point: w_i = (a_i^T (A^T W^{-1} A)^{-1} a_i)^{1/2}
    G = A.T @ (A / w1[:, None])
    q = np.einsum("ij,ij->i", A @ np.linalg.inv(G), A)
    np.testing.assert_allclose(w1, np.sqrt(q), rtol=1e-6)
    approx = to_numpy(gs.lewis_weights(xp.asarray(A), 1, seed=7))
    assert 0.25 < (approx / w1).min() and (approx / w1).max() < 4
    # A square, invertible A (n = d, the smallest allowed): every row is needed, all weights are 1.
    for exact in (True, False):
        np.testing.assert_allclose(to_numpy(gs.lewis_weights(xp.asarray(A[:8]), 1, exact=exact, seed=7)), 1.0, rtol=1e-8)


def test_lewis_default_step_counts():
    """The sketched iteration runs the k steps with |1 − p/2|^k ln n <= 0.05: 9 for p = 1 at
    10⁶ rows (the figure the docstring gives), 5 for p = 1.5; one step at p = 2."""
    from gpusketch.robust.lewis import default_iters

    assert [default_iters(p, 10**6, False) for p in (1, 1.5, 3, 2)] == [9, 5, 9, 1]
    assert default_iters(1, 10, False) == 6 and default_iters(1, 10**6, True) == 1000


@pytest.mark.parametrize("p", [0.5, 1, 3.5])
def test_exact_lewis_weights_reach_the_fixed_point(xp, p):
    """The exact route iterates to convergence: w_i = (a_iᵀ(AᵀW^{1−2/p}A)⁻¹a_i)^{p/2} to 1e-10
    even where the contraction |1 − p/2| is slow (a fixed 30 steps left 7e-4 at p = 0.5)."""
    rng = np.random.default_rng(16)
    A = rng.standard_normal((3000, 10)) * np.exp(rng.standard_normal((3000, 1)) * 2)
    A[:5] *= 1000
    w = to_numpy(gs.lewis_weights(xp.asarray(A), p, exact=True))
    G = A.T @ (A * (w ** (1 - 2 / p))[:, None])
    q = np.einsum("ij,ij->i", A @ np.linalg.inv(G), A)
    np.testing.assert_allclose(w, q ** (p / 2), rtol=1e-10)
    assert abs(w.sum() - 10) < 1e-8


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p", [0.5, 0.6, 1, 3])
def test_lewis_weights_with_zero_rows(xp, p, dtype):
    # Zero weights were floored at the dtype's tiny before the power 1/2 − 1/p: for p < 2/3
    # that overflowed to inf, a zero row times inf gave NaN, and the next step raised.
    rng = np.random.default_rng(18)
    A = rng.standard_normal((40, 3))
    A[::4] = 0
    live = np.abs(A).sum(axis=1) > 0
    for exact in (True, False):
        w = to_numpy(gs.lewis_weights(xp.asarray(A.astype(dtype)), p, exact=exact, seed=1))
        assert w.dtype == dtype and np.all(np.isfinite(w)) and np.all(w[~live] == 0)
        if exact:  # the fixed point of the rows that are not zero
            ref = to_numpy(gs.lewis_weights(xp.asarray(A[live]), p, exact=True))
            np.testing.assert_allclose(w[live], ref, rtol=1e-10 if dtype == np.float64 else 1e-3)


def test_exact_lewis_weights_settle_in_float32(monkeypatch):
    """float32 cannot reach float64's 1e-13: the stopping rule scales with ε, so the
    exact route stops in tens of steps, not at its cap of 1000."""
    from gpusketch.robust import lewis

    steps = []
    monkeypatch.setattr(lewis, "leverage_scores",
                        lambda *a, _f=lewis.leverage_scores, **k: steps.append(1) or _f(*a, **k))
    A = np.random.default_rng(17).standard_normal((2000, 8))
    w32 = gs.lewis_weights(A.astype(np.float32), 1, exact=True)
    assert w32.dtype == np.float32 and len(steps) < 50
    np.testing.assert_allclose(w32, gs.lewis_weights(A, 1, exact=True), rtol=1e-4)


def test_lewis_weights_sparse_input():
    rng = np.random.default_rng(8)
    A = rng.standard_normal((600, 5)) * (rng.random((600, 5)) < 0.6)
    w = gs.lewis_weights(sparse_module(np).csr_matrix(A), 1.5, exact=True)
    np.testing.assert_allclose(w, gs.lewis_weights(A, 1.5, exact=True), rtol=1e-10)


@pytest.mark.parametrize("p", [1, 1.5, 2])
def test_lp_regression_near_full_solution(xp, p):
    rng = np.random.default_rng(9)
    A = rng.standard_normal((6000, 6))
    b = A @ rng.standard_normal(6) + rng.standard_t(2, size=6000)
    full = np.sum(np.abs(A @ solve_lp_small(A, b, float(p)) - b) ** p) ** (1 / p)
    res = gs.lp_regression(xp.asarray(A), xp.asarray(b), p=p, seed=10)
    # default m ~ 20 (d+1) ln(d+2) rows: measured within 2 % of the full optimum
    assert full <= res.cost * (1 + 1e-9) and res.cost <= 1.05 * full
    assert res.info["rows"] < 1000
    if p == 1:  # the default p
        np.testing.assert_array_equal(to_numpy(gs.lp_regression(xp.asarray(A), xp.asarray(b), seed=10).x),
                                      to_numpy(res.x))


def test_lp_regression_sample_size_must_exceed_d():
    A = np.random.default_rng(3).standard_normal((50, 4))
    with pytest.raises(ValueError, match="m must be an integer > d = 4, got 4"):
        gs.lp_regression(A, np.ones(50), m=4)
    assert gs.lp_regression(A, np.ones(50), m=5, seed=1).x.shape == (4,)
    # A square A keeps its default m = n = d: the whole problem, solved exactly (it raised
    # "lp_regression needs n > d"); a wide one is still refused.
    S = A[:4] + 3 * np.eye(4)
    for p in (1, 1.5):
        np.testing.assert_allclose(gs.lp_regression(S, np.ones(4), p, seed=1).x, np.linalg.solve(S, np.ones(4)),
                                   rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=r"lp_regression needs n >= d, got A of shape \(3, 4\)"):
        gs.lp_regression(A[:3], np.ones(3))


@pytest.mark.parametrize("p", [1, 1.5, 2])
def test_lp_regression_of_a_zero_system_is_zero(xp, p):
    # [A b] = 0 has Lewis weights 0 and probabilities 0/0: the sample was empty and the LP's
    # scaling raised NumPy's "zero-size array to reduction operation maximum".
    A, b = xp.zeros((300, 4)), xp.zeros(300)
    for M in (A, sparse_module(xp).csr_matrix(A)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = gs.lp_regression(M, b, p, seed=1)
        assert type(res.x) is type(A) and res.x.shape == (4,)
        np.testing.assert_array_equal(to_numpy(res.x), np.zeros(4))
        assert res.cost == 0.0 and res.info["rows"] == 0


def test_lp_regression_tiny_sample_is_worse():
    rng = np.random.default_rng(9)
    A = rng.standard_normal((6000, 6))
    b = A @ rng.standard_normal(6) + rng.standard_t(2, size=6000)
    full = np.sum(np.abs(A @ solve_lp_small(A, b, 1.0) - b))
    costs = [gs.lp_regression(A, b, p=1, m=8, seed=s).cost for s in range(5)]
    assert min(costs) > 1.02 * full


ROBUST_BAD = [
    (lambda: gs.lp_regression(np.ones((10, 2)), np.ones(10), p=3), ValueError, "p"),
    (lambda: gs.lp_regression(np.ones((10, 2)), np.ones(9)), ValueError, "rows"),
    (lambda: gs.lp_regression(np.ones((2, 3)), np.ones(2)), ValueError, "n >= d"),  # n = d is solved exactly
    (lambda: gs.lp_regression(np.eye(10, 2), np.full(10, np.nan)), ValueError, "NaN"),
    (lambda: gs.lp_regression(np.eye(10, 2), np.ones(10), m=1), ValueError, "m"),
    (lambda: gs.lewis_weights(np.eye(10, 2), 4), ValueError, "p"),
    (lambda: gs.lewis_weights(np.eye(2, 10), 1), ValueError, "n >= d"),
    (lambda: irls(np.eye(10, 2), np.ones(9), TukeyLoss(1.0)), ValueError, "rows"),
    (lambda: irls(np.eye(10, 2), np.ones(10), "tukey"), TypeError, "loss"),
    (lambda: irls(np.eye(10, 2), np.ones(10), TukeyLoss(1.0), weights=-np.ones(10)), ValueError, "nonnegative"),
    (lambda: irls(np.eye(10, 2), np.ones(10), TukeyLoss(1.0), x0=np.ones(3)), ValueError, "x0"),
    (lambda: irls(np.eye(10, 2), np.ones(10), TukeyLoss(1.0), x0=np.array([0.0, np.nan])), ValueError, "x0 contains NaN"),
    (lambda: irls(np.eye(10, 2), np.ones(10), TukeyLoss(1.0), tol=0), ValueError, "tol"),
]


@pytest.mark.parametrize("fn,exc,word", ROBUST_BAD)
def test_robust_bad_input(fn, exc, word):
    with pytest.raises(exc, match=word):
        fn()


from gpusketch.robust import heavy_coordinates, tukey_regression  # noqa: E402


@pytest.mark.parametrize("method", ["partition", "peeling"])
def test_heavy_coordinates_recover_planted_rows(xp, method):
    rng = np.random.default_rng(11)
    A = rng.standard_normal((4000, 4))
    planted = [5, 900, 2500]
    A[planted] *= 300
    I = set(to_numpy(heavy_coordinates(xp.asarray(A), 4, method=method, seed=12)).tolist())
    assert set(planted) <= I
    assert len(I) < 200  # far fewer than n: the light rows are left out


def test_heavy_coordinates_peeling_is_figure_2():
    """method="peeling" with p = 2 is Figure 2 exactly: α rounds, each adding the rows whose
    leverage among the rows not yet chosen is at least 1/(2α).  (Swapping the two methods
    passed the planted-rows test, which both satisfy.)"""
    rng = np.random.default_rng(13)
    A = rng.standard_normal((300, 3))
    A[:12] *= np.geomspace(3, 60, 12)[:, None]  # a ladder of heavy rows, found over several rounds
    alpha = 5
    chosen = np.zeros(300, dtype=bool)
    for _ in range(alpha):
        rest = np.flatnonzero(~chosen)
        Q = np.linalg.qr(A[rest])[0]
        new = rest[(Q**2).sum(axis=1) >= 1 / (2 * alpha)]
        if new.size == 0:
            break
        chosen[new] = True
    expected = np.flatnonzero(chosen).tolist()
    assert 3 < len(expected) < 300
    assert heavy_coordinates(A, alpha, method="peeling", seed=1).tolist() == expected


@pytest.mark.parametrize("p", [2, 1.5])
def test_heavy_coordinates_with_more_groups_than_rows(xp, p):
    # alpha = 1e12 >> n: each row is alone in its group (a collision has probability
    # ~ n^2 / 2 alpha), so every nonzero row has leverage / Lewis weight 1 and is kept,
    # and the zero row is not.  Empty groups must cost nothing (this used to allocate
    # per-group arrays of size alpha).
    A = np.random.default_rng(3).standard_normal((40, 5))
    A[7] = 0.0
    I = to_numpy(heavy_coordinates(xp.asarray(A), 10**12, p=p, seed=4)).tolist()
    assert I == [i for i in range(40) if i != 7]


def test_lewis_scores_of_groups_with_fewer_rows_than_columns():
    # Groups of fewer than d rows (many groups with p < 2): Lewis weights of the
    # group's column space.  A rank-3 group of 4 rows in 6 columns has the weights of
    # its orthonormal basis; a full-row-rank group has all weights 1; a zero group 0.
    from gpusketch.robust.tukey import _scores

    rng = np.random.default_rng(5)
    M = rng.standard_normal((3, 6))
    M = np.vstack([M, M[0] + M[1]])
    U = np.linalg.svd(M, full_matrices=False)[0][:, :3]
    np.testing.assert_allclose(_scores(M, 1.5, 0), gs.lewis_weights(U, 1.5, exact=True), rtol=1e-10)
    np.testing.assert_array_equal(_scores(M[:3], 1.5, 0), np.ones(3))
    np.testing.assert_array_equal(_scores(np.zeros((2, 5)), 1.0, 0), np.zeros(2))
    u = np.array([1.0, -2.0, 0.5])  # rank 1: one column's ℓp Lewis weights are |u_i|^p / Σ |u_j|^p
    np.testing.assert_allclose(_scores(np.outer(u, rng.standard_normal(5)), 1.5, 0), np.abs(u) ** 1.5 / np.sum(np.abs(u) ** 1.5),
                               rtol=1e-8)
    I = heavy_coordinates(rng.standard_normal((60, 6)), 20, p=1.5, seed=6)  # groups of ~3 rows
    assert to_numpy(I).size == 60

def tukey_problem(outliers, seed=5):
    rng = np.random.default_rng(seed)
    n, d = 5000, 10
    A = rng.standard_normal((n, d))
    b = rng.standard_normal(n)
    if outliers:
        b[rng.choice(n, n // 20, replace=False)] = 1e4
    return A, b


@pytest.mark.parametrize("outliers", [False, True])
def test_tukey_reductions_approximation_ratio(xp, outliers):
    # The paper's Figure 5 setting, smaller (n = 5000, d = 10, tau = 10, 5 % outliers at 1e4).
    # Measured on CPU: sampling 1.13 / 1.17 at 3d rows; oblivious 2.24 / 1.29 at 3d, 1.19 / 1.11 at 5d rows.
    A, b = tukey_problem(outliers)
    Ax, bx = xp.asarray(A), xp.asarray(b)
    full = tukey_regression(Ax, bx, 10.0, method="full", seed=1)
    s = tukey_regression(Ax, bx, 10.0, rows=30, trials=5, seed=2)
    assert s.cost <= 1.5 * full.cost
    assert to_numpy(s.rows).size == to_numpy(s.weights).size <= 40
    assert to_numpy(s.weights).min() >= 1.0
    o = tukey_regression(Ax, bx, 10.0, method="oblivious", rows=30, trials=5, seed=2)
    assert o.cost <= 3.0 * full.cost and o.rows is None
    o = tukey_regression(Ax, bx, 10.0, method="oblivious", rows=50, trials=5, seed=2)
    assert o.cost <= 2.0 * full.cost
    # cost is the objective on the full data at the returned x
    assert abs(s.cost - TukeyLoss(10.0).total(A @ to_numpy(s.x) - b)) <= 1e-9 * s.cost


def test_default_rows_hold_on_a_heavy_tailed_design():
    """A of t(1.5) entries: leverage sits on a few huge rows.  At the earlier default of
    10(d+1) rows, over these 12 seeds, row sampling reached 1.95x the full IRLS cost and the
    oblivious sketch 2.74x; at 40(d+1), 1.013x and 1.214x."""
    rs, ro = [], []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        A = rng.standard_t(1.5, size=(8000, 5))
        b = A @ rng.standard_normal(5) + rng.standard_normal(8000)
        full = tukey_regression(A, b, 10.0, method="full", seed=1).cost
        res = tukey_regression(A, b, 10.0, seed=seed)
        assert res.info["reduced_rows"] <= 2 * 40 * 6
        rs.append(res.cost / full)
        ro.append(tukey_regression(A, b, 10.0, method="oblivious", seed=seed).cost / full)
    assert max(rs) < 1.1 and max(ro) < 1.4, (max(rs), max(ro))


@pytest.mark.parametrize("method", ["sampling", "partition", "peeling"])
def test_sparse_rows_take_the_sparse_route_with_dense_results(rng, method, monkeypatch):
    """A CSR A (CPU, p = 2) stays sparse through Tukey row sampling and heavy_coordinates:
    the same heavy sets, rows, weights and cost as the densified A, and no dense copy of it."""
    import scipy.sparse as sp

    from gpusketch import _kernels

    monkeypatch.setattr(_kernels, "_GROUP_SMALL_ROWS", 8)
    n, d = 6000, 8
    A = sp.random(n, d, density=0.1, format="csr", random_state=4)
    A.data = rng.standard_normal(A.nnz)
    b = A @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    b[:300] = 1e4
    densified, toarray = [], sp.csr_matrix.toarray
    monkeypatch.setattr(sp.csr_matrix, "toarray", lambda self, *a, **k: densified.append(self.shape)
                        or toarray(self, *a, **k))
    if method == "sampling":
        got = tukey_regression(A, b, 1.0, rows=90, seed=2)
        # (the last rounds' few, denser rows may go dense: the padded route is faster there)
        assert max(shape[0] for shape in densified) < n // 10
        want = tukey_regression(A.tocsc().toarray(), b, 1.0, rows=90, seed=2)
        np.testing.assert_array_equal(got.rows, want.rows)
        np.testing.assert_allclose(got.weights, want.weights, rtol=1e-12)
        assert got.cost == pytest.approx(want.cost, rel=1e-9)
    else:
        got = heavy_coordinates(A, 30, method=method, seed=2)
        assert not densified
        np.testing.assert_array_equal(got, heavy_coordinates(A.toarray(), 30, method=method, seed=2))
        assert got.size > 0


def test_zero_matrix_has_no_heavy_rows(xp):
    """A = 0 in groups large enough for the CPU's subset screening (2000 x 3, 3 groups): its
    Grams have no live column, which raised IndexError from an empty eigenvalue array."""
    A = xp.zeros((2000, 3))
    assert heavy_coordinates(A, 3, seed=1).size == 0
    res = tukey_regression(A, xp.zeros(2000), 1.0, seed=1)
    assert res.cost == 0.0
    np.testing.assert_array_equal(to_numpy(res.x), np.zeros(3))


@pytest.mark.parametrize("p", [1.0, 1.5])
def test_group_lewis_weights_side_of_threshold_as_the_fixed_point(rng, p):
    """The batched Lewis iteration stops once the contraction bound places every weight on
    one side of the threshold: each row must then compare with it as the per-group
    ``lewis_weights(exact=True)`` fixed point does, also for a threshold 1e-9 above or
    below a weight (near-ties run to full convergence).  Groups: planted heavy rows, a
    rank-deficient group, a group of fewer rows than columns, an empty one."""
    from gpusketch.robust.tukey import _group_lewis_weights, _scores

    n, d, groups = 600, 5, 9
    A = rng.standard_normal((n, d))
    A[:6] *= 30
    g = rng.integers(0, groups, n)
    g[g == 8] = 7  # group 8 empty
    g[g == 6] = 5
    g[:3] = 6  # group 6: three rows < d columns
    A[g == 4, 3:] = 0  # group 4 of rank 3
    ref = np.zeros(n)
    for j in range(groups):
        rows = np.flatnonzero(g == j)
        if rows.size:
            ref[rows] = to_numpy(_scores(A[rows], p, 0))
    heavy = np.flatnonzero(ref >= 0.2)
    assert heavy.size >= 6
    for threshold in (0.2, ref[heavy[0]] * (1 + 1e-9), ref[heavy[0]] * (1 - 1e-9), ref[7] * (1 + 1e-9)):
        w = _group_lewis_weights(A, g, groups, p, threshold, np)
        np.testing.assert_array_equal(w >= threshold, ref >= threshold)
    w = _group_lewis_weights(A, g, groups, p, None, np)  # until settled: the fixed point itself
    np.testing.assert_allclose(w, ref, rtol=1e-9, atol=1e-12)


def test_tukey_reduction_with_too_few_rows_is_worse():
    A, b = tukey_problem(True)
    full = tukey_regression(A, b, 10.0, method="full", seed=1)
    worst = min(tukey_regression(A, b, 10.0, method="oblivious", rows=11, seed=s).cost for s in range(3))
    assert worst > 1.2 * full.cost


TUKEY_BAD = [
    (lambda: tukey_regression(np.eye(50, 3), np.ones(50), 0.0), ValueError, "tau"),
    (lambda: tukey_regression(np.eye(50, 3), np.ones(50), 1.0, p=3), ValueError, "p"),
    (lambda: tukey_regression(np.eye(50, 3), np.ones(49), 1.0), ValueError, "rows"),
    (lambda: tukey_regression(np.eye(50, 3), np.full(50, np.nan), 1.0), ValueError, "NaN"),
    (lambda: tukey_regression(np.eye(50, 3), np.ones(50), 1.0, method="lts"), ValueError, "method"),
    (lambda: tukey_regression(np.eye(50, 3), np.ones(50), 1.0, rows=3), ValueError, "rows"),
    (lambda: tukey_regression(np.eye(50, 3), np.ones(50), 1.0, method="oblivious", branching=1.0), ValueError,
     "branching"),
    (lambda: heavy_coordinates(np.eye(50, 3), 0), ValueError, "alpha"),
    (lambda: heavy_coordinates(np.eye(50, 3), 2, method="greedy"), ValueError, "method"),
]


@pytest.mark.parametrize("fn,exc,word", TUKEY_BAD)
def test_tukey_bad_input(fn, exc, word):
    with pytest.raises(exc, match=word):
        fn()


def test_solve_lp_small_l1_dual_matches_primal_lp(rng):
    """The dual route of solve_lp_small reaches the optimum of the primal LP min Σt, −t <= Ax − b <= t."""
    import scipy.optimize
    import scipy.sparse as sp

    n, d = 120, 4
    A = rng.standard_normal((n, d))
    b = A @ rng.standard_normal(d) + rng.laplace(size=n)
    I = sp.identity(n)
    A_ub = sp.vstack([sp.hstack([A, -I]), sp.hstack([-A, -I])])
    primal = scipy.optimize.linprog(np.r_[np.zeros(d), np.ones(n)], A_ub=A_ub, b_ub=np.r_[b, -b],
                                    bounds=[(None, None)] * d + [(0, None)] * n, method="highs")
    x = solve_lp_small(A, b, 1.0)
    assert np.abs(A @ x - b).sum() == pytest.approx(primal.fun, rel=1e-9)


@pytest.mark.parametrize("p", [1.01, 1.1, 1.5])
def test_solve_lp_small_reaches_the_lp_optimum_near_p_1(p):
    """1 < p < 2: the minimum of the convex ||Ax − b||_p^p to 1e-10, where the gradient vanishes.

    Plain IRLS (Newton damped by p − 1) stopped 1.3e-6 to 2e-5 above it at p = 1.01 in 200
    steps; an exact fit raised LinAlgError (weights 0^(p−2) = inf) instead of returning x.
    """
    import scipy.optimize

    rng = np.random.default_rng(13945)
    A = rng.standard_normal((20, 5))
    b = A @ rng.standard_normal(5) + rng.standard_normal(20)
    b[rng.random(20) < 0.1] += 100.0
    f = lambda x: np.sum(np.abs(A @ x - b) ** p)
    x = solve_lp_small(A, b, p)
    ref = scipy.optimize.minimize(f, x, method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-15, "maxiter": 40000})
    assert f(x) <= ref.fun * (1 + 1e-10)
    exact = A[:, :1] @ np.array([2.0])
    np.testing.assert_allclose(solve_lp_small(A[:, :1], exact, p), [2.0], rtol=1e-12)


@pytest.mark.parametrize("route", ["padded", "per_group", "padded_chunked", "per_group_chunked"])
@pytest.mark.parametrize("alpha", [7, 200])
def test_group_leverage_matches_exact_per_group(xp, rng, alpha, route, monkeypatch):
    """Both routes (padded batched, the GPU's and small groups'; per group on the CPU) equal an SVD per group.

    ``_chunked``: a chunk budget of 1 byte, so every group is a chunk of its own (at
    the tests' sizes all groups fit in one 256 MiB chunk, and group offsets g0 > 0
    are never reached otherwise).
    """
    from gpusketch import _kernels
    from gpusketch.robust.tukey import _group_leverage

    if route.startswith("per_group"):
        if xp is not np:
            pytest.skip("the per-group route is the CPU's")
        monkeypatch.setattr(_kernels, "_GROUP_SMALL_ROWS", 0)
    else:
        monkeypatch.setattr(_kernels, "_GROUP_SMALL_ROWS", 10**9)
    if route.endswith("_chunked"):
        monkeypatch.setattr(_kernels, "_GROUP_CHUNK_BYTES", 1)

    A = rng.standard_normal((500, 6))
    A[3] *= 100
    A[:, 2] *= 1e-4  # columns of very different norms: the Jacobi scaling keeps the bound useful
    g = rng.integers(0, alpha, 500)
    ref = np.zeros(500)
    for j in range(alpha):
        r = np.flatnonzero(g == j)
        if r.size:
            U = np.linalg.svd(A[r], full_matrices=False)[0][:, : min(r.size, 6)]
            ref[r] = (U**2).sum(axis=1)
    out = _group_leverage(xp.asarray(A), xp.asarray(g), alpha, xp)
    np.testing.assert_allclose(to_numpy(out), ref, atol=1e-10)
    # Screened: every row at or above the threshold is scored exactly, the others are 0.
    screened = to_numpy(_group_leverage(xp.asarray(A), xp.asarray(g), alpha, xp, threshold=0.2))
    np.testing.assert_allclose(screened, np.where(ref >= 0.2, ref, 0.0), atol=1e-10)
    if alpha == 7:  # large groups: the bound rules out most rows, the planted one stays
        assert screened[3] == pytest.approx(ref[3]) and np.count_nonzero(screened) < 250


@pytest.mark.parametrize("bound", [True, False])
def test_scaled_inverse_root_certifies_cholesky_or_takes_eigh(rng, bound):
    """The CPU's Cholesky route (W = L⁻ᵀ, upper triangular) serves a batch only when every
    Gram is certified far from the eigenvalue cut; otherwise the batch takes eigh.  Both give
    W Wᵀ = G_s⁻¹; with ``bound`` the smallest eigenvalue comes back, without it 0 (no bound)."""
    from gpusketch._kernels import _scaled_inverse_root

    d = 6
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    well = rng.standard_normal((60, d))
    well = well.T @ well
    # κ = 1e11: inside the eigenvalue cut (7.5e13), past pocon's 1/(1e4 d ε) = 7.5e10
    for kappa, cholesky in ((1e2, True), (1e11, bound)):
        ill = (Q * np.geomspace(1.0, 1.0 / kappa, d)) @ Q.T
        G = np.stack([well, ill])
        s, W, lam_min, triangular = _scaled_inverse_root(G, np, bound=bound)
        assert triangular is cholesky
        for k in range(2):
            Gs = G[k] * s[k][:, None] * s[k][None, :]
            lam = np.linalg.eigvalsh(Gs)
            np.testing.assert_allclose(W[k] @ W[k].T @ Gs, np.eye(d), atol=1e-8 * lam[-1] / lam[0])
            if cholesky:
                np.testing.assert_array_equal(W[k], np.triu(W[k]))
            if bound or not cholesky:
                assert lam_min[k] == pytest.approx(lam[0], rel=1e-4)
            else:
                assert lam_min[k] == 0


def test_float32_score_pass_keeps_every_score_at_or_above_threshold(rng):
    """The CPU's float32 TRMM pass (``_scaled_scores_cpu`` with a threshold) must return the
    float64 score of every row at or above the threshold, even a row within one float32
    rounding of it, and 0 or the float64 score below."""
    from gpusketch._kernels import _scaled_inverse_root, _scaled_scores_cpu

    for d, L in ((5, 40), (60, 600), (200, 2000)):
        # correlated columns (κ ≈ 1e3 after the Jacobi scaling: float32 loses ~1e-3) of very different norms
        Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
        B = rng.standard_normal((L, d)) @ (Q * np.geomspace(1.0, 1e-3, d)) @ Q.T * rng.lognormal(0, 2, d)
        B[: L // 10] *= 4.0  # a spread of scores around the thresholds below
        s, W, _, triangular = _scaled_inverse_root((B.T @ B)[None], np, bound=False)
        assert triangular
        exact = _scaled_scores_cpu(B, s[0], W[0], True)
        np.testing.assert_allclose(exact, (np.linalg.qr(B)[0] ** 2).sum(axis=1), rtol=1e-8)
        # rows 1e-12 above the threshold: far inside one float32 rounding
        for threshold in (np.quantile(exact, 0.9), 0.2, *(np.sort(exact)[-3:] * (1 - 1e-12))):
            q = _scaled_scores_cpu(B, s[0], W[0], True, threshold)
            at = exact >= threshold
            assert at.any() or threshold == 0.2
            np.testing.assert_allclose(q[at], exact[at], rtol=1e-12)  # float64 (on a subset of rows)
            np.testing.assert_allclose(q[~at], np.where(q[~at] > 0, exact[~at], 0.0), rtol=1e-12)


@pytest.mark.parametrize("alpha", [1, 3, 40])
def test_group_leverage_sparse_route_matches_dense(rng, alpha, monkeypatch):
    """The CPU's sparse route (one block-diagonal Gram product, group-ordered row blocks)
    scores a CSR X as the dense routes score ``X.toarray()``: columns a group never
    touches, a group with no rows, a group of one row, and the threshold's zeros."""
    import scipy.sparse as sp

    from gpusketch import _kernels
    from gpusketch.robust.tukey import _group_leverage

    monkeypatch.setattr(_kernels, "_GROUP_SMALL_ROWS", 8)  # the test's groups take the sparse route
    monkeypatch.setattr(_kernels, "_GROUP_BLOCK_ROWS", 97)  # row blocks that split groups
    n, d = 3000, 12
    X = sp.random(n, d, density=0.08, format="csr", random_state=3)
    X.data = rng.standard_normal(X.nnz)
    X = sp.lil_matrix(X)
    X[5, 3] = 1e3  # a planted heavy row
    g = rng.integers(0, alpha, n)
    if alpha > 3:
        g[g == 7] = 8  # group 7 is empty
        g[11] = 7  # ... but for one row
        X[np.flatnonzero(g == 9), :4] = 0  # columns group 9 never touches
    X = sp.csr_matrix(X)
    before = X.copy()
    ref = _group_leverage_reference(X.toarray(), g, alpha)
    for threshold in (0.0, 0.2):
        out = _group_leverage(X, g, alpha, np, threshold=threshold)
        want = ref if threshold == 0 else np.where(ref >= threshold, ref, 0.0)
        np.testing.assert_allclose(out, want, atol=1e-10)
    assert out[5] > 0.99
    assert (X != before).nnz == 0


def test_group_leverage_sparse_route_sums_repeated_entries(rng):
    """A CSR X may store one (row, column) entry as several that add (non-canonical).
    The sparse route's screen squares entries: split in two halves, a heavy row's
    bound fell to half and the row (score 0.37 >= 0.25) was screened out."""
    import scipy.sparse as sp

    from gpusketch.robust.tukey import _group_leverage

    n, d = 20000, 12
    C = sp.random(n, d, density=0.1, format="lil", random_state=1)  # stored twice: 0.2 <= 0.25
    C[5, :] = 0
    C[5, 3] = 24.0
    C = sp.csr_matrix(C)
    C.data = np.where(C.data == 24.0, 24.0, rng.standard_normal(C.nnz))
    counts = np.diff(C.indptr)
    rows = np.repeat(np.arange(n), 2 * counts)
    halves = np.stack([C.data, C.data], axis=1) * 0.5  # each entry stored twice, half each
    cols = np.stack([C.indices, C.indices], axis=1)
    order = np.argsort(np.repeat(np.arange(n), counts), kind="stable")
    D = sp.csr_matrix((halves[order].ravel(), cols[order].ravel(), np.r_[0, np.cumsum(2 * counts)]), shape=(n, d))
    assert not D.has_canonical_format and abs(D - C).max() < 1e-15
    before = (D.data.copy(), D.indices.copy())
    g = rng.integers(0, 2, n)
    ref = _group_leverage(C, g, 2, np, threshold=0.25)
    assert 0.3 < ref[5] < 0.4
    np.testing.assert_allclose(_group_leverage(D, g, 2, np, threshold=0.25), ref, rtol=1e-12)
    np.testing.assert_array_equal(D.data, before[0])
    np.testing.assert_array_equal(D.indices, before[1])


def test_scaled_inverse_root_zero_columns_keep_the_cholesky_route(rng):
    """A column a group never touches is left out of its factor (W's row and column 0)
    instead of sending the batch to eigh: W Wᵀ is then the pseudo-inverse of G_s."""
    from gpusketch._kernels import _scaled_inverse_root

    B = rng.standard_normal((40, 6))
    B[:, [1, 4]] = 0
    G = np.stack([B.T @ B, np.zeros((6, 6)), (lambda C: C.T @ C)(rng.standard_normal((40, 6)))])
    for bound in (True, False):
        s, W, lam_min, triangular = _scaled_inverse_root(G, np, bound=bound)
        assert triangular
        for k in range(3):
            Gs = G[k] * s[k][:, None] * s[k][None, :]
            np.testing.assert_allclose(W[k] @ W[k].T, np.linalg.pinv(Gs), atol=1e-10)
            np.testing.assert_array_equal(W[k], np.triu(W[k]))
        assert lam_min[1] == np.inf


def _group_leverage_reference(A, g, alpha):
    ref = np.zeros(A.shape[0])
    for j in range(alpha):
        r = np.flatnonzero(g == j)
        if r.size:
            U, s, _ = np.linalg.svd(A[r], full_matrices=False)
            U = U[:, s > s[0] * 1e-10]
            ref[r] = (U**2).sum(axis=1)
    return ref


@pytest.mark.parametrize("case", ["gaussian", "column_outside_subset", "zero_column", "column_in_one_subset_row"])
def test_group_leverage_subset_screening_keeps_every_score_above_threshold(rng, case, monkeypatch):
    """The CPU's subset screening (groups of > 64 d rows, k labelings at once) returns every
    score at or above the threshold exactly and the others as 0 or exact; groups the subset
    bound clears are not scored at all."""
    from gpusketch import _kernels
    from gpusketch.robust.tukey import _group_leverage

    n, d, alpha = 20000, 8, 5
    A = rng.standard_normal((n, d))
    A[:, 1] *= 1e-4
    A[[17, 2500, 4999]] *= 40  # heavy rows
    A[[100, 7000, 13000]] *= 15  # leverage about 0.2-0.5: the bound must not lose them
    stride = n // (_kernels._SCREEN_ROWS * d * alpha)
    assert stride >= 2
    if case == "column_outside_subset":  # nonzero in one row off the subset: no bound, exact route
        A = np.c_[A, np.zeros(n)]
        A[5, -1] = 1.0  # row 5 is in run 1 of four rows, off the subset (runs 0, stride, ...); leverage 1
    elif case == "zero_column":  # dropped from the bound
        A = np.c_[A, np.zeros(n)]
    elif case == "column_in_one_subset_row":  # row 0 is in the subset: the other groups' subset Grams are singular
        A = np.c_[A, np.zeros(n)]
        A[0, -1] = 1.0
    labels = rng.integers(0, alpha, (3, n)).astype(np.int32)
    calls = []
    exact = _kernels._group_leverage_exact
    monkeypatch.setattr(_kernels, "_group_leverage_exact",
                        lambda *a, **k: calls.append(k.get("only", a[4] if len(a) > 4 else None)) or exact(*a, **k))
    before = A.copy()
    out = _group_leverage(A, labels, alpha, np, threshold=0.2)
    np.testing.assert_array_equal(A, before)
    assert out.shape == labels.shape
    for k in range(3):
        ref = _group_leverage_reference(A, labels[k], alpha)
        assert ((ref >= 0.2) & (ref < 0.6)).sum() >= 2
        np.testing.assert_allclose(out[k][ref >= 0.2], ref[ref >= 0.2], atol=1e-9)
        np.testing.assert_allclose(out[k], np.where(out[k] > 0, ref, 0.0), atol=1e-9)
        np.testing.assert_array_equal(out[k], _group_leverage(A, labels[k], alpha, np, threshold=0.2))
    if case == "column_outside_subset":
        assert out[:, 5] == pytest.approx(1.0)
        assert all(only is None for only in calls)  # every group scored exactly
    elif case == "column_in_one_subset_row":  # no bound for the groups without row 0: candidates
        assert out[:, 0] == pytest.approx(1.0)
        assert calls and all(only is not None and len(only) >= alpha - 1 for only in calls)
    else:
        assert {17, 2500, 4999} <= set(np.flatnonzero((out >= 0.2).any(axis=0)))
        # The planted rows' groups are candidates; the bound clears at least one group per labeling.
        assert calls and all(only is not None for only in calls) and sum(map(len, calls)) < len(calls) * alpha




def test_group_leverage_exact_route_on_threads_as_serial(rng, monkeypatch):
    """Below the subset screening's reach (groups of under 64 d rows) the labelings' exact
    scores on threads equal the serial ones."""
    from gpusketch import _kernels
    from gpusketch.robust.tukey import _group_leverage

    n, d, alpha = 20000, 16, 20
    assert n // (_kernels._SCREEN_ROWS * d * alpha) < 2 and n > _kernels._GROUP_SMALL_ROWS * alpha
    A = rng.standard_normal((n, d))
    A[[17, 2500, 4999]] *= 40
    labels = rng.integers(0, alpha, (3, n)).astype(np.int32)
    monkeypatch.setattr(_kernels, "_cpu_threads", lambda work: 1)
    serial = _group_leverage(A, labels, alpha, np, threshold=0.2)
    assert (serial[:, [17, 2500, 4999]] >= 0.2).all()
    monkeypatch.setattr(_kernels, "_cpu_threads", lambda work: 2)
    np.testing.assert_array_equal(_group_leverage(A, labels, alpha, np, threshold=0.2), serial)


def test_group_leverage_subset_screening_on_threads_as_serial(rng, monkeypatch):
    """The labelings' subset Grams on threads (past 2^21 entries) give each labeling its own
    bounds: the groups scored exactly, labeling by labeling, and the scores are the serial
    route's.  Labeling 0 puts 10 rows outside group 0 (their groups' subset Grams are
    singular: every non-empty group a candidate); the others are balanced."""
    from gpusketch import _kernels
    from gpusketch.robust.tukey import _group_leverage

    n, d, alpha = 20000, 8, 5
    A = rng.standard_normal((n, d))
    A[[17, 2500, 4999]] *= 40
    labels = rng.integers(0, alpha, (3, n)).astype(np.int32)
    labels[0] = 0
    labels[0, rng.choice(n, 10, replace=False)] = rng.integers(1, alpha, 10)
    calls = []
    exact = _kernels._group_leverage_exact
    monkeypatch.setattr(_kernels, "_group_leverage_exact",
                        lambda *a, **k: calls.append(None if k.get("only") is None else list(k["only"])) or exact(*a, **k))
    serial = _group_leverage(A, labels, alpha, np, threshold=0.2)
    serial_calls, calls[:] = list(calls), []
    assert len(serial_calls) == 3 and serial_calls[0] == np.unique(labels[0]).tolist()  # every non-empty group
    assert len(serial_calls[1]) < len(serial_calls[0])
    monkeypatch.setattr(_kernels, "_cpu_threads", lambda work: 2)
    np.testing.assert_array_equal(_group_leverage(A, labels, alpha, np, threshold=0.2), serial)
    assert calls == serial_calls


def test_hash_labels_read_where_asked_equal_hash_values():
    """Heavy coordinates' labels hashed only where read are hash_values' buckets (nnz = 1)."""
    from gpusketch import _kernels
    from gpusketch._random import STREAM_UNIFORM

    n, groups, seeds = 10_003, 37, [5, 2**63 + 11]
    labels = _kernels._HashLabels(n, groups, seeds, STREAM_UNIFORM)
    rows = np.sort(np.random.default_rng(0).choice(n, 500, replace=False))
    q = np.arange(0, -(-n // 4), 7)
    for k, seed in enumerate(seeds):
        ref = _kernels.call("hash_values", np, 0, n, groups, 1, seed, STREAM_UNIFORM)[0][:, 0]
        np.testing.assert_array_equal(labels.all(k), ref)
        np.testing.assert_array_equal(labels.at(k, rows), ref[rows])
        runs = _kernels._run_rows(q)
        runs = runs[runs < n]  # the last run is cut at n
        np.testing.assert_array_equal(labels.at_runs(k, q, runs.size), ref[runs])
        given = _kernels._GivenLabels(ref[None])
        np.testing.assert_array_equal(given.at_runs(0, q, runs.size), ref[runs])


@pytest.mark.parametrize("heavy", [False, True])
@pytest.mark.parametrize("n", [20_000, 3_000])  # subset screening, exact route
def test_hashed_group_leverage_equals_given_labels(xp, rng, n, heavy, monkeypatch):
    """The twin that hashes its labels scores like group_leverage on hash_values' labels; on the
    CPU's screened route it hashes every label only for labelings with candidate groups."""
    from gpusketch import _kernels
    from gpusketch._random import STREAM_UNIFORM
    from gpusketch.robust.tukey import _group_leverage

    d, groups, seeds = 16, 5, [3, 4, 5]  # d = 16: Gaussian rows clear the bound with a wide margin
    A = rng.standard_normal((n, d))
    if heavy:
        A[[17, n - 1]] *= 60
    full = []
    monkeypatch.setattr(_kernels._HashLabels, "all",
                        lambda self, k, _all=_kernels._HashLabels.all: full.append(k) or _all(self, k))
    out = to_numpy(_kernels.call("hashed_group_leverage", xp, xp.asarray(A), groups, seeds, STREAM_UNIFORM,
                                 threshold=0.2))
    assert out.shape == (3, n)
    for k, seed in enumerate(seeds):
        lab = _kernels.call("hash_values", np, 0, n, groups, 1, seed, STREAM_UNIFORM)[0][:, 0]
        ref = _group_leverage_reference(A, lab, groups)
        np.testing.assert_allclose(out[k][ref >= 0.2], ref[ref >= 0.2], atol=1e-9)
        np.testing.assert_allclose(out[k], np.where(out[k] > 0, ref, 0.0), atol=1e-9)
        given = to_numpy(_group_leverage(xp.asarray(A), xp.asarray(lab), groups, xp, threshold=0.2))
        np.testing.assert_array_equal(out[k] >= 0.2, given >= 0.2)
    if heavy:
        assert {17, n - 1} <= set(np.flatnonzero((out >= 0.2).any(axis=0)))
    if xp is np and n == 20_000:  # screened: full labels only where a group is a candidate
        assert full == ([0, 1, 2] if heavy else [])


def test_l1_solvers_keep_float32(rng):
    """HiGHS works in float64; x comes back in the inputs' dtype, with the float64 answer's cost."""
    from gpusketch import kron

    A = rng.standard_normal((300, 4))
    b = A @ rng.standard_normal(4) + rng.laplace(size=300)
    F = [rng.standard_normal((20, 2)), rng.standard_normal((15, 2))]
    bk = rng.laplace(size=300)
    calls = [
        lambda A, b, F, bk: gs.lp_regression(A, b, 1, seed=1),
        lambda A, b, F, bk: kron.lp_regression(F, bk, 1, seed=1),
        lambda A, b, F, bk: kron.rank_regression(A[:60], b[:60], seed=1),
        lambda A, b, F, bk: kron.rank_regression(A[:60], b[:60], method="exact"),
    ]
    f32 = lambda X: X.astype(np.float32)  # noqa: E731
    for call in calls:
        lo = call(f32(A), f32(b), [f32(G) for G in F], f32(bk))
        hi = call(A, b, F, bk)
        assert lo.x.dtype == np.float32 and hi.x.dtype == np.float64
        assert lo.cost == pytest.approx(hi.cost, rel=1e-4)


@pytest.mark.parametrize("c", [1e-150, 1e-8, 1e8, 1e150])
def test_l1_and_minimax_solvers_are_scale_equivariant(rng, c):
    """Scaling A and b by c leaves x unchanged (and A·diag(D) gives x/D). HiGHS's and SLSQP's
    tolerances are absolute: unscaled (2000 × 6), the ℓ1 LP returned x off by 4e-3 at c = 1e-8, a model
    error at 1e150, and the fair ℓ2 dual stopped at its start at c = 1e8 (a 1.2 % gap)."""
    from gpusketch import fair, kron

    A = rng.standard_normal((1000, 6))
    b = A @ np.ones(6) + rng.standard_normal(1000)
    b[:50] = 50.0
    D = 10.0 ** np.arange(-4.0, 2.0)
    calls = [
        lambda A, b: gs.lp_regression(A, b, 1, seed=1).x,
        lambda A, b: solve_lp_small(A[:300], b[:300], 1),
        lambda A, b: fair.regression([A, A[:300]], [b, b[:300]]).x,
        lambda A, b: fair.regression([A, A[:300]], [b, b[:300]], norm=1).x,
        lambda A, b: kron.rank_regression(A[:200], b[:200], seed=1).x,
    ]
    for call in calls:
        x = call(A, b)
        np.testing.assert_allclose(call(c * A, c * b), x, rtol=1e-8, atol=1e-10)
        if c == 1e8:  # column scales from 1e-4 to 10
            np.testing.assert_allclose(call(A * D, b) * D, x, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("p", [1.1, 1.5, 1.9])
def test_solve_lp_small_irls_matches_a_general_minimiser(rng, p):
    """1 < p < 2: the IRLS of solve_lp_small against BFGS on Σ|Ax − b|^p (C¹ for p > 1).

    The reduced problems of lp_regression and kron.lp_regression are solved by it,
    and their tests take their reference optimum from it too: this is its
    independent check.  Measured gaps 4e-12 (p = 1.1) to 2e-16 (p = 1.9).
    """
    import scipy.optimize

    A = rng.standard_normal((200, 4))
    b = A @ rng.standard_normal(4) + rng.standard_t(2, size=200)

    def f(x):
        r = A @ x - b
        return np.sum(np.abs(r) ** p), A.T @ (p * np.abs(r) ** (p - 1) * np.sign(r))

    ref = scipy.optimize.minimize(f, np.linalg.lstsq(A, b, rcond=None)[0], jac=True, method="BFGS",
                                  options={"gtol": 1e-12, "maxiter": 5000})
    x = solve_lp_small(A, b, p)
    assert f(x)[0] <= ref.fun * (1 + 1e-10)
    assert f(np.linalg.lstsq(A, b, rcond=None)[0])[0] > ref.fun * (1 + 1e-5)  # the start is not the answer


def test_reductions_as_large_as_the_problem_keep_it_whole(xp):
    """lp_regression with m >= n keeps every row unweighted (the exact ℓ1 fit; sampling there
    had given cost ratios up to 1.17 at n = 12, d = 5), and Tukey's oblivious sketch with
    rows >= n is the problem itself (it had given cost ratios up to 49 at n = 6)."""
    rng = np.random.default_rng(31)
    A, b = rng.standard_normal((12, 5)), rng.standard_normal(12)
    for seed in range(4):  # (a sample of m = n draws happened to keep all 12 rows at seed 1)
        res = gs.lp_regression(xp.asarray(A), xp.asarray(b), 1, seed=seed)  # default m = 12
        assert res.info["rows"] == 12
        assert res.cost == pytest.approx(np.abs(A @ solve_lp_small(A, b, 1.0) - b).sum(), rel=1e-9)
    red = tukey_regression(xp.asarray(A), xp.asarray(b), 1.0, method="oblivious", seed=1)  # rows 60 >= 12
    assert red.info["levels"] == 0 and red.info["reduced_rows"] == 12
    np.testing.assert_array_equal(to_numpy(red.rows), np.arange(12))
    np.testing.assert_array_equal(to_numpy(red.weights), np.ones(12))


@pytest.mark.parametrize("p", [1.0, 1.5])
def test_lp_regression_weights_matter_on_uneven_rows(p):
    """Rows of very different scale have uneven Lewis weights, so the q^{-1/p} rescaling of the
    kept rows decides the answer (on Gaussian rows q is nearly uniform and any scale passes).
    Measured over 6 seeds: within 1.0093 of the full solve; with q^{-2/p}, 1.09-1.26."""
    for s in range(3):
        g = np.random.default_rng(s)
        A = g.standard_normal((4000, 5)) * np.exp(g.standard_normal((4000, 1)))
        b = A @ np.ones(5) + 3 * g.laplace(size=4000)
        full = solve_lp_small(A, b, p)
        opt = (np.abs(A @ full - b) ** p).sum() ** (1 / p)
        assert gs.lp_regression(A, b, p, seed=s).cost <= 1.03 * opt


@pytest.mark.parametrize("p,sparse", [(2, False), (1.5, False), (2, True)])
def test_tukey_sampling_trials_share_one_read_only_stack(rng, monkeypatch, p, sparse):
    """``[A b]`` is stacked once for all trials and never written: a read-only stack
    runs every trial, and the best of three is no worse than trial 0 alone."""
    import scipy.sparse as sp

    from gpusketch.robust import tukey

    stacks = []
    stack = tukey._stack

    def read_only(*args):
        R = stack(*args)
        (R.data if sp.issparse(R) else R).setflags(write=False)
        stacks.append(R)
        return R

    monkeypatch.setattr(tukey, "_stack", read_only)
    n, d = 20000, 6
    A = sp.random(n, d, density=0.5, format="csr", random_state=4) if sparse else rng.standard_normal((n, d))
    b = A @ np.ones(d) + rng.standard_normal(n)
    b[:400] = 1e3
    res = tukey_regression(A, b, 3.0, rows=100, trials=3, p=p, seed=11)
    assert len(stacks) == 1
    first = tukey_regression(A, b, 3.0, rows=100, trials=1, p=p, seed=11)  # trial 0 alone
    assert res.cost <= first.cost
    if res.info["trial"] == 0:
        np.testing.assert_array_equal(res.x, first.x)


def test_tukey_sampling_never_reduces_below_d_plus_one_rows():
    """Each round keeps a row with probability >= 1/2, so on a handful of rows a round can
    keep none: with rows = 2 or 3 and d = 1, 4 of 80 seeded runs reduced to 0 rows and
    IRLS refused the empty problem.  A round that would leave fewer than d + 1 rows now
    ends the recursion at the rows it has."""
    for seed, rows in ((7, 2), (11, 2), (37, 2), (37, 3)):
        rng = np.random.default_rng(seed)
        A = rng.standard_normal((300, 1))
        res = tukey_regression(A, 3 * A[:, 0], 100.0, p=1.0, rows=rows, seed=seed)
        assert res.info["reduced_rows"] >= 2
        np.testing.assert_allclose(res.x, [3.0], rtol=1e-6)


def test_lp_regression_with_columns_in_other_units_as_unscaled():
    # The reduced ℓp problem (least squares, IRLS) is solved on unit-max columns: with
    # column scales 1e-8 .. 1e8 the cost is the unscaled problem's (NumPy's rank cut on A
    # itself: 3.6e-4 above it at p = 1.5 in one draw).
    rng = np.random.default_rng(33)
    A = rng.standard_normal((4000, 10))
    b = A @ rng.standard_normal(10) + rng.standard_normal(4000)
    b[:200] = 1e3
    D = np.logspace(-8, 8, 10)
    for p in (1.5, 2.0):
        ref = gs.lp_regression(A, b, p, seed=1)
        res = gs.lp_regression(A * D, b, p, seed=1)
        np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-9)
        x = solve_lp_small(A[:300] * D, b[:300], p)
        np.testing.assert_allclose(x * D, solve_lp_small(A[:300], b[:300], p), rtol=1e-6, atol=1e-9)

