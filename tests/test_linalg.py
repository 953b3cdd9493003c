"""lstsq, leverage scores, randomized SVD, rank and independent rows against exact answers."""

import warnings

import numpy as np
import pytest

import _fake_cupy
import gpusketch as gs
from conftest import flip_svd_signs, one_entry_per_column, refinement_off, sparse_module, to_numpy


def ill_conditioned(n, d, kappa, seed):
    r = np.random.default_rng(seed)
    U, _ = np.linalg.qr(r.standard_normal((n, d)))
    V, _ = np.linalg.qr(r.standard_normal((d, d)))
    return (U * np.logspace(0, -np.log10(kappa), d)) @ V.T


# Relative gap of ||Ax - b|| to the SVD-based numpy solution.  At kappa = 1e10 even a
# Householder QR solve differs from it by ~2e-10 (measured), so the bound is 1e-9 there.
@pytest.mark.parametrize("kappa,gap", [(1e2, 1e-12), (1e8, 5e-12), (1e10, 1e-9)])
@pytest.mark.parametrize("refine", [True, False], ids=["refined", "sketch-R"])
def test_precondition_matches_exact(xp, kappa, gap, refine, monkeypatch):
    # Both preconditioners: the sketch's R, and R refined by a Cholesky pass over A R⁻¹
    # (refine_preconditioner), after which LSMR stops within an iteration or two.
    if not refine:
        refinement_off(monkeypatch)
    A = ill_conditioned(3000, 40, kappa, 1)
    b = np.random.default_rng(2).standard_normal(3000)
    x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
    c_ref = np.linalg.norm(A @ x_ref - b)
    res = gs.lstsq(xp.asarray(A), xp.asarray(b), seed=3)
    assert abs(float(res.cost) - c_ref) <= gap * c_ref
    assert np.linalg.norm(A @ (to_numpy(res.x) - x_ref)) <= 1e-6 * np.linalg.norm(b)
    assert res.info["iterations"] < 100 and res.info["method"] == "precondition"
    assert res.info["preconditioner"] == ("refined" if refine else "sketch")
    if refine:
        assert res.info["iterations"] <= 2  # measured 1; with the sketch's R alone 13-16
    assert type(res.x) is type(xp.asarray(b))


@pytest.mark.parametrize("refine", [True, False], ids=["refined", "sketch-R"])
def test_precondition_of_float32_a_and_float64_b_answers_in_float64(xp, refine, monkeypatch):
    # x takes the dtype of A and b together on both routes (the refined one had kept A's
    # float32: LSMR's x0 fixes the dtype of its iterate).
    if not refine:
        refinement_off(monkeypatch)
    A = ill_conditioned(3000, 8, 1e2, 4).astype(np.float32)
    b = np.random.default_rng(5).standard_normal(3000)
    for rhs in (b, np.stack([b, -b], axis=1)):
        res = gs.lstsq(xp.asarray(A), xp.asarray(rhs), seed=6)
        assert res.x.dtype == np.float64 and res.info["preconditioner"] == ("refined" if refine else "sketch")
        x_ref = np.linalg.lstsq(A.astype(np.float64), rhs, rcond=None)[0]
        np.testing.assert_allclose(to_numpy(res.x), x_ref, rtol=1e-9, atol=1e-12)


def test_refined_preconditioner_falls_back_where_its_cholesky_fails(monkeypatch):
    from gpusketch.linalg import _precondition

    monkeypatch.setattr(_precondition, "_cholesky_inverse", lambda G, xp: None)
    A = ill_conditioned(3000, 40, 1e8, 1)
    b = np.random.default_rng(2).standard_normal(3000)
    res = gs.lstsq(A, b, seed=3)
    x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
    assert res.info["preconditioner"] == "sketch" and res.info["iterations"] > 5
    assert abs(res.cost - np.linalg.norm(A @ x_ref - b)) <= 5e-12 * res.cost


def test_refined_route_takes_as_own_gram_where_r_is_well_conditioned(xp, monkeypatch):
    """``refine_preconditioner`` forms ``R⁻ᵀ(AᵀA)R⁻¹`` from A's own Gram where the sketch's
    κ₂(R), estimated by power iteration, is at most 1e4 and A is float64 (``gram_refines``;
    a 2-nonzero sketch of the κ(A) = 1e3 A below gave an R of κ₂ 1027, estimated at
    1026), else the Gram of ``A R⁻¹``: both reach the direct answer.  Forced onto A's own Gram at κ = 1e8 (its
    rounding then swamps G), the route still answers to tol: through LSMR's iterations
    from a poorer preconditioner, or the sketch's R where G's Cholesky fails."""
    from gpusketch.linalg import _precondition

    grams = []
    finish = _precondition.finish_gram_refinement
    monkeypatch.setattr(_precondition, "finish_gram_refinement", lambda *a: grams.append(1) or finish(*a))
    b = np.random.default_rng(8).standard_normal(5000)
    for kappa, dtype, gram in ((1e2, np.float64, True), (1e3, np.float64, True), (1e8, np.float64, False),
                               (1e2, np.float32, False)):
        A = ill_conditioned(5000, 30, kappa, 9).astype(dtype)
        grams.clear()
        res = gs.lstsq(xp.asarray(A), xp.asarray(b), seed=10)
        assert res.info["preconditioner"] == "refined" and bool(grams) == gram, (kappa, dtype)
        A64 = A.astype(np.float64)
        x_ref = np.linalg.lstsq(A64, b, rcond=None)[0]
        assert float(res.cost) == pytest.approx(np.linalg.norm(A64 @ x_ref - b), rel=1e-12)
        if gram:
            assert res.info["iterations"] == 0
    monkeypatch.setattr(_precondition, "GRAM_REFINE_MAX_COND", np.inf)
    # (measured 3 and 14 iterations; gaps as in test_precondition_matches_exact)
    for kappa, route, gap in ((1e8, "refined", 1e-11), (1e10, "sketch", 1e-9)):
        A = ill_conditioned(5000, 30, kappa, 9)
        grams.clear()
        res = gs.lstsq(xp.asarray(A), xp.asarray(b), seed=10)
        assert grams and res.info["preconditioner"] == route
        x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
        assert float(res.cost) == pytest.approx(np.linalg.norm(A @ x_ref - b), rel=gap)


def test_refinement_band_of_a_own_gram_only(monkeypatch):
    """Past ``refine_pays``' ``"any"`` bound and within its ``"gram"`` one (d = 200 at
    tol = 1e-6: 160 < d <= 319 with the CPU's constants), the sketch is R alone's (8 nonzeros a column), refined
    from A's own Gram where κ(R) allows (κ = 1e2: no iteration), else LSMR on R alone
    (κ = 1e6); both answer to tol."""
    import sys

    lstsq_module = sys.modules["gpusketch.linalg.lstsq"]
    made = []
    sketch_for = lstsq_module.sketch_for
    monkeypatch.setattr(lstsq_module, "sketch_for", lambda *a, **k: made.append(sketch_for(*a, **k)) or made[-1])
    b = np.random.default_rng(11).standard_normal(2000)
    for kappa, route in ((1e2, "refined"), (1e6, "sketch")):
        A = ill_conditioned(2000, 200, kappa, 12)
        res = gs.lstsq(A, b, tol=1e-6, seed=13)
        assert made[-1].nnz == 8 and res.info["preconditioner"] == route
        assert (res.info["iterations"] == 0) == (route == "refined")
        x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
        assert float(res.cost) == pytest.approx(np.linalg.norm(A @ x_ref - b), rel=1e-10)


def test_sparse_a_refines_from_its_own_gram(xp, monkeypatch):
    """A sparse A whose Gram is cheap next to the iterations (``refine_pays`` with A) is
    sketched with 2 nonzeros a column and, where κ(R) allows, refined from its own sparse
    Gram (no iteration); past that (κ = 1e6) R alone iterates.  Both reach the direct
    answer.  A sparse A whose Gram costs more than the iterations is not refined (its
    sketch is R alone's, 8 nonzeros a column)."""
    import sys

    import scipy.sparse as sp

    from gpusketch.linalg._precondition import refine_pays

    lstsq_module = sys.modules["gpusketch.linalg.lstsq"]
    made = []
    sketch_for = lstsq_module.sketch_for
    monkeypatch.setattr(lstsq_module, "sketch_for", lambda *a, **k: made.append(sketch_for(*a, **k)) or made[-1])
    csr = sparse_module(xp).csr_matrix
    b = np.random.default_rng(14).standard_normal(20000)
    for kappa, route in ((1e2, "refined"), (1e6, "sketch")):
        # κ ≈ 2.8 κ from near-collinear column pairs (column 2j + 1 = column 2j + its own/κ),
        # kept sparse: graded columns alone would not do, as κ on unit columns decides (``gram_refines``)
        mix = sp.identity(40, format="lil")
        for j in range(0, 40, 2):
            mix[j, j + 1], mix[j + 1, j + 1] = 1.0, 1 / kappa
        A = sp.random(20000, 40, density=0.05, format="csr", random_state=15) @ mix.tocsr()
        res = gs.lstsq(csr(A), xp.asarray(b), seed=16)
        assert made[-1].nnz == 2 and res.info["preconditioner"] == route
        assert (res.info["iterations"] == 0) == (route == "refined")
        x_ref = np.linalg.lstsq(A.toarray(), b, rcond=None)[0]
        assert float(res.cost) == pytest.approx(np.linalg.norm(A @ x_ref - b), rel=1e-12)
    # measured: SciPy's Gram 0.04 s against 0.014 s an iteration at 1e6 x 100, 1 %; 1.5 s against
    # 0.005 s at 20000 x 1000, 20 % (here 1 and 200 nonzeros a row)
    r = np.random.default_rng(17)
    thin = sp.csr_matrix((np.ones(10**6), r.integers(0, 100, 10**6), np.arange(10**6 + 1)), shape=(10**6, 100))
    wide = sp.csr_matrix((np.ones(10**6), np.tile(np.arange(0, 1000, 5), 5000), np.arange(0, 10**6 + 1, 200)),
                         shape=(5000, 1000))  # 200 nonzeros a row
    assert refine_pays(*thin.shape, 1, 1e-10, np, thin) == "any" and refine_pays(*wide.shape, 1, 1e-10, np, wide) is None


def test_refined_route_sketches_with_two_nonzeros_a_column_and_reads_a_twice_to_finish(xp, monkeypatch):
    # The refined route needs SA only of full rank: the default sparse sign has
    # REFINE_SKETCH_NNZ nonzeros a column (8 on the route of R alone, or when an operator is
    # given).  Its warm start, tested as LSMR would test it, finishes in two products with A.
    import sys

    from gpusketch.linalg import _precondition

    lstsq_module = sys.modules["gpusketch.linalg.lstsq"]
    made, products = [], []
    sketch_for, dense_times = lstsq_module.sketch_for, lstsq_module.dense_times
    monkeypatch.setattr(lstsq_module, "sketch_for", lambda *a, **k: made.append(sketch_for(*a, **k)) or made[-1])
    monkeypatch.setattr(lstsq_module, "dense_times", lambda *a, **k: products.append(a[0].shape) or dense_times(*a, **k))
    A = ill_conditioned(4000, 30, 1e6, 3)
    b = np.random.default_rng(4).standard_normal(4000)
    x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
    Ad, bd = xp.asarray(A), xp.asarray(b)
    res = gs.lstsq(Ad, bd, seed=5)
    assert made[-1].nnz == _precondition.REFINE_SKETCH_NNZ == 2 and res.info["preconditioner"] == "refined"
    assert res.info["iterations"] == 0 and products == [A.shape, A.shape]
    np.testing.assert_allclose(to_numpy(res.x), x_ref, rtol=1e-8, atol=1e-12 * np.abs(x_ref).max())
    assert float(res.cost) == pytest.approx(np.linalg.norm(A @ x_ref - b), rel=1e-13)
    gs.lstsq(Ad, bd, sketch=gs.SparseSign(400, 4000, seed=5))
    assert made[-1].nnz == 8  # an operator passed is used as it is
    refinement_off(monkeypatch)
    assert gs.lstsq(Ad, bd, seed=5).info["preconditioner"] == "sketch" and made[-1].nnz == 8


def test_refined_warm_start_that_fails_lsmrs_test_goes_on_to_lsmr():
    # A residual of 1e-7 ||b||: the warm start's normal-equation residual, at round-off of
    # ||b||, is not yet tol ||r||, and one LSMR iteration from it reaches the direct answer.
    from gpusketch.linalg.lstsq import warm_start_passes

    rng = np.random.default_rng(6)
    A = ill_conditioned(30000, 20, 1e3, 7)
    b = A @ rng.standard_normal(20)
    b += 1e-7 * np.linalg.norm(b) / np.sqrt(30000) * rng.standard_normal(30000)
    res = gs.lstsq(A, b, seed=1)
    x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
    assert res.info["preconditioner"] == "refined" and res.info["iterations"] == 1
    np.testing.assert_allclose(res.x, x_ref, rtol=1e-9)
    # The test, column by column: ||Āᵀr|| <= tol ||r||, or ||r|| <= tol (||b|| + ||y0||).
    one = np.ones(2)
    assert warm_start_passes(np.array([1e-11, 0.0]), one, 10 * one, one, 1e-10)
    assert not warm_start_passes(np.array([1e-11, 2e-10]), one, 10 * one, one, 1e-10)
    assert warm_start_passes(np.array([1.0, 1.0]), np.array([1e-9, 0.0]), 10 * one, one, 1e-10)


def test_refined_route_of_a_rank_deficient_a_is_the_minimum_norm_solution(xp, monkeypatch):
    # A rank-deficient SA's V_r Σ_r⁻¹ is refined like R⁻¹ (its r columns): the warm start
    # passes LSMR's test, and its residual's Aᵀr serves the normal equations' check, so x
    # costs two products with A after the refinement pass (LSMR took 13-16 iterations).
    import sys

    lstsq_module = sys.modules["gpusketch.linalg.lstsq"]
    products, dense_times = [], lstsq_module.dense_times
    monkeypatch.setattr(lstsq_module, "dense_times", lambda *a, **k: products.append(a[0].shape) or dense_times(*a, **k))
    rng = np.random.default_rng(8)
    A = rng.standard_normal((5000, 12)) * np.logspace(0, -4, 12)
    A[:, 11] = A[:, 0] - A[:, 1]
    B = rng.standard_normal((5000, 2))
    for b in (B[:, 0], B):
        products.clear()
        with pytest.warns(gs.RankDeficientWarning, match="sketch rank 11") as rec:
            res = gs.lstsq(xp.asarray(A), xp.asarray(b), seed=2)
        assert rec[0].filename == __file__ and res.info["rank_deficient"]
        assert res.info["preconditioner"] == "refined" and np.all(np.asarray(res.info["iterations"]) == 0)
        assert products == [A.shape, A.shape]
        x_ref = np.linalg.pinv(A) @ b
        np.testing.assert_allclose(to_numpy(res.x), x_ref, rtol=1e-9, atol=1e-12 * np.abs(x_ref).max())
        np.testing.assert_allclose(to_numpy(res.cost), np.linalg.norm(A @ x_ref - b, axis=0), rtol=1e-12)


@pytest.mark.parametrize("refine", [True, False], ids=["refined", "sketch-R"])
def test_precondition_of_a_rank_deficient_float32_a_is_the_minimum_norm_solution_at_its_rank(refine, monkeypatch):
    # A float32 A rounded off a rank-7 product: its normal-equation residual in the rounding's
    # directions (~u₃₂) is no missed direction of the sketch.  The check, at float64's bound,
    # had sent such calls to the direct solve (on the route of R alone, here), whose float32 x
    # then fitted the rounding (norm 1e7 times this one; that solve is mended too).
    if not refine:
        refinement_off(monkeypatch)
    rng = np.random.default_rng(9)
    A = (rng.standard_normal((3000, 7)) @ rng.standard_normal((7, 10))).astype(np.float32)
    b = rng.standard_normal(3000).astype(np.float32)
    with pytest.warns(gs.RankDeficientWarning, match="sketch rank 7"):
        res = gs.lstsq(A, b, seed=3)
    assert "fallback" not in res.info and res.info["preconditioner"] == ("refined" if refine else "sketch")
    A64 = A.astype(np.float64)
    x_ref = np.linalg.lstsq(A64, b.astype(np.float64), rcond=3000 * np.finfo(np.float32).eps)[0]
    np.testing.assert_allclose(res.x, x_ref, rtol=1e-4, atol=1e-5 * np.abs(x_ref).max())


def test_refined_route_whose_sketch_lost_rank_still_solves():
    # One entry a column: a sparse sign of 2 nonzeros a column merged two of them at this
    # seed (1 of 400 seeds at 3000 × 16); SA's V_r Σ_r⁻¹ is refined, the normal equations
    # then show the missed direction and send the call to the direct solve, with no
    # warning (A has full rank).
    rng = np.random.default_rng(0)
    A = np.zeros((3000, 16))
    A[rng.choice(3000, 16, replace=False), np.arange(16)] = np.arange(1.0, 17.0)
    b = rng.standard_normal(3000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = gs.lstsq(A, b, seed=321)
    assert res.info["sketch_rank"] == 15 and res.info["fallback"] == "direct" and res.info["preconditioner"] == "refined"
    np.testing.assert_allclose(res.x, np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-12, atol=1e-15)


def test_refine_pays_where_the_iterations_it_saves_cost_more():
    """``"any"`` where either Gram pays (the sketch then has REFINE_SKETCH_NNZ a column),
    ``"gram"`` where only A's own does (a third of the flops; taken where κ(R) allows), None
    where neither: the measured wins and losses of the constants' comments."""
    from gpusketch.linalg._precondition import refine_pays

    assert refine_pays(1 << 20, 64, 1, 1e-10, np) == refine_pays(65536, 128, 1, 1e-6, np) == "any"
    assert refine_pays(200000, 200, 1, 1e-10, np) == refine_pays(65536, 256, 1, 1e-10, np) == "any"
    assert refine_pays(16384, 512, 1, 1e-10, np) == refine_pays(65536, 256, 1, 1e-6, np) == "gram"
    assert refine_pays(100000, 300, 1, 1e-10, np) == "gram"
    assert refine_pays(16384, 512, 1, 1e-6, np) is None and refine_pays(20000, 1000, 1, 1e-10, np) is None
    assert refine_pays(65536, 512, 8, 1e-6, np) == "any"  # columns of b: each iteration costs more
    assert refine_pays(100, 60, 1, 1e-10, np) is None  # fewer than 2d rows
    with _fake_cupy.installed() as cp:  # BLAS-3 is relatively faster on a GPU (the H100 table's parts)
        assert refine_pays(1 << 20, 512, 1, 1e-10, cp) == "any" and refine_pays(1 << 18, 2048, 1, 1e-10, cp) == "gram"
        assert refine_pays(1 << 18, 4096, 1, 1e-10, cp) is None


def _sparse_collinear(n, d, delta, seed):
    """A CSR matrix whose column pairs (2j, 2j+1) differ by delta times sparse noise: κ ~ 1/delta."""
    r = np.random.default_rng(seed)
    A = (r.random((n, d)) < 0.05) * r.standard_normal((n, d))
    A[:, 1::2] = A[:, ::2] + delta * (r.random((n, d // 2)) < 0.01) * r.standard_normal((n, d // 2))
    return A


@pytest.mark.parametrize("delta,route", [(1e-1, "seminormal"), (1e-4, "seminormal"), (1e-6, "dense")])
def test_direct_on_sparse_a_takes_the_seminormal_equations_while_well_conditioned(xp, delta, route):
    """Sparse A: the Gram is a sparse product and x comes from the corrected semi-normal
    equations (two refinement steps) while κ(A) <= 1e6, at a QR solve's accuracy; past that,
    the densified routes.  b of one and two columns, and row weights as irls passes them."""
    from gpusketch.linalg._numerics import qr_lstsq

    A = _sparse_collinear(4000, 20, delta, 30)
    r = np.random.default_rng(31)
    B = A @ r.standard_normal((20, 2)) + r.standard_normal((4000, 2))
    As = sparse_module(xp).csr_matrix(xp.asarray(A))
    for b in (B[:, 0], B):
        X_ref = np.linalg.lstsq(A, b, rcond=None)[0]
        res = gs.lstsq(As, xp.asarray(b), method="direct")
        assert res.info["factorization"] in (("cholesky_qr2", "householder") if route == "dense" else (route,))
        kappa = np.linalg.cond(A)
        assert np.linalg.norm(to_numpy(res.x) - X_ref) <= 100 * kappa * np.finfo(float).eps * np.linalg.norm(X_ref)
    s = np.sqrt(r.random(4000) + 0.1)  # an IRLS step: rows scaled by the square roots of the weights
    x, deficient, used = qr_lstsq(As, xp.asarray(B[:, 0]), xp, scale=xp.asarray(s))
    x_ref = np.linalg.lstsq(A * s[:, None], B[:, 0] * s, rcond=None)[0]
    assert used in (("cholesky_qr2", "householder") if route == "dense" else (route,)) and not deficient
    assert np.linalg.norm(to_numpy(x) - x_ref) <= 100 * np.linalg.cond(A * s[:, None]) * np.finfo(float).eps * np.linalg.norm(x_ref)


@pytest.mark.parametrize("method", ["precondition", "sketch", "direct"])
def test_lstsq_float32_stays_float32_without_warnings(xp, method):
    # float32 in, float32 out, x within float32 accuracy of the float64 solution,
    # and no RuntimeWarning (SciPy's LSMR overflows a float32 cast of 1e100).
    rng = np.random.default_rng(7)
    A = rng.standard_normal((2000, 20))
    b = A @ rng.standard_normal(20) + 0.1 * rng.standard_normal(2000)
    x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = gs.lstsq(xp.asarray(A, dtype=np.float32), xp.asarray(b, dtype=np.float32), method=method, seed=8)
    assert res.x.dtype == np.float32
    rel = np.linalg.norm(to_numpy(res.x) - x_ref) / np.linalg.norm(x_ref)
    assert rel < (0.05 if method == "sketch" else 1e-5)


@pytest.mark.parametrize("kappa,route", [(1e2, "cholesky_qr2"), (1e6, "cholesky_qr2"), (1e10, "householder")])
def test_direct_matches_exact_on_both_factorizations(xp, kappa, route):
    """Cholesky QR twice up to its orthogonality test's limit, Householder beyond: both at the
    accuracy of a backward-stable solve (x within κ ε of numpy's SVD solution, relative)."""
    A = ill_conditioned(3000, 40, kappa, 4)
    b = A @ np.random.default_rng(5).standard_normal(40) + 1e-3 * np.random.default_rng(6).standard_normal(3000)
    x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
    c_ref = np.linalg.norm(A @ x_ref - b)
    res = gs.lstsq(xp.asarray(A), xp.asarray(b), method="direct")
    assert res.info["factorization"] == route and not res.info["rank_deficient"]
    assert abs(float(res.cost) - c_ref) <= 1e-9 * c_ref
    assert np.linalg.norm(to_numpy(res.x) - x_ref) <= 100 * kappa * np.finfo(float).eps * np.linalg.norm(x_ref)


@pytest.mark.parametrize("kind", ["sparse_sign", "countsketch", "gaussian", "srht"])
def test_sketch_and_solve_cost_ratio(xp, kind):
    # m = 20 d + 10: cost within 1 + O(d/m); 1.15 leaves room for CountSketch's d^2 needs.
    rng = np.random.default_rng(4)
    A = rng.standard_normal((4000, 25))
    b = A @ rng.standard_normal(25) + rng.standard_normal(4000)
    c_ref = np.linalg.norm(A @ np.linalg.lstsq(A, b, rcond=None)[0] - b)
    res = gs.lstsq(xp.asarray(A), xp.asarray(b), method="sketch", sketch=kind, seed=5)
    assert 1.0 <= float(res.cost) / c_ref < 1.15
    assert res.info["m"] == 510


@pytest.mark.parametrize("method", ["sketch", "precondition"])
def test_lstsq_of_a_square_a_is_exact(xp, method):
    """n = d: the default sketch size is n, and S the identity, as for any n it reaches.
    It raised "the default sketch size is at most n, which needs n > d" (at n = d + 1 the
    identity already answered exactly)."""
    rng = np.random.default_rng(5)
    for n in (1, 7):
        A, b = rng.standard_normal((n, n)) + 3 * np.eye(n), rng.standard_normal(n)
        res = gs.lstsq(xp.asarray(A), xp.asarray(b), method=method, seed=1)
        assert res.info["sketch"] == "Sampling" and res.info["m"] == n
        np.testing.assert_allclose(to_numpy(res.x), np.linalg.solve(A, b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["sketch", "precondition"])
def test_lstsq_takes_m_from_a_sketch_operator(method):
    # An operator passed as ``sketch`` was checked against the default m (210 for d = 10)
    # and refused; its own rows are the sketch size.
    rng = np.random.default_rng(42)
    A, b = rng.standard_normal((5000, 10)), rng.standard_normal(5000)
    S = gs.CountSketch(300, 5000, seed=1)
    res = gs.lstsq(A, b, method=method, sketch=S)
    assert res.info["m"] == 300 and res.info["seed"] == 1
    ref = gs.lstsq(A, b, method=method, sketch="countsketch", m=300, seed=1)
    np.testing.assert_array_equal(res.x, ref.x)
    lev = gs.leverage_sample(A, 300, seed=2)  # a Sampling: its row count is random
    assert gs.lstsq(A, b, method=method, sketch=lev).info["m"] == lev.shape[0]
    with pytest.raises(ValueError, match="sketch has 10 rows; a sketched solve needs more than d = 10"):
        gs.lstsq(A, b, method=method, sketch=gs.CountSketch(10, 5000, seed=1))
    with pytest.raises(ValueError, match=r"sketch has shape \(300, 5000\), expected \(200, 5000\)"):
        gs.lstsq(A, b, method=method, sketch=S, m=200)


def test_sketch_and_solve_can_fail_with_tiny_sketch():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((4000, 25))
    b = rng.standard_normal(4000)
    c_ref = np.linalg.norm(A @ np.linalg.lstsq(A, b, rcond=None)[0] - b)
    res = gs.lstsq(A, b, method="sketch", sketch="countsketch", m=27, seed=5)
    assert float(res.cost) / c_ref > 1.15


def test_direct_multiple_rhs_and_sparse(xp):
    rng = np.random.default_rng(6)
    A = rng.standard_normal((500, 12)) * (rng.random((500, 12)) < 0.5)
    B = rng.standard_normal((500, 3))
    X_ref = np.linalg.lstsq(A, B, rcond=None)[0]
    for method in ("direct", "precondition"):
        res = gs.lstsq(xp.asarray(A), xp.asarray(B), method=method, seed=7)
        np.testing.assert_allclose(to_numpy(res.x), X_ref, rtol=1e-8, atol=1e-10)
        assert to_numpy(res.cost).shape == (3,)
    As = sparse_module(xp).csr_matrix(xp.asarray(A))
    res = gs.lstsq(As, xp.asarray(B[:, 0]), seed=8)
    np.testing.assert_allclose(to_numpy(res.x), X_ref[:, 0], rtol=1e-8, atol=1e-10)
    for method in ("direct", "precondition", "sketch"):  # b of no columns, as numpy.linalg.lstsq takes it
        res = gs.lstsq(xp.asarray(A), xp.asarray(B[:, :0]), method=method, seed=9)  # precondition: IndexError
        assert res.x.shape == (12, 0) and to_numpy(res.cost).shape == (0,)


def test_block_lsmr_follows_scipy_lsmr_column_by_column(xp):
    # Each column runs SciPy's recurrences with its own scalars: the same iterations, stop
    # codes and answers (to round-off: GEMM and GEMV sum in different orders).  The block
    # holds a zero column (x = 0 at once), a consistent one (stop 1), a nonzero start, two
    # right-hand sides of very different sizes, and a maxiter that cuts some columns off.
    from scipy.sparse.linalg import lsmr

    from gpusketch.linalg._block_lsmr import block_lsmr

    rng = np.random.default_rng(21)
    A = rng.standard_normal((2000, 30)) * np.linspace(1, 3, 30)
    B = rng.standard_normal((2000, 6))
    B[:, 1] = 0.0
    B[:, 2] = A @ rng.standard_normal(30)
    B[:, 5] *= 1e6
    X0 = np.zeros((30, 6))
    X0[:, 3] = rng.standard_normal(30)
    Ad = xp.asarray(A)
    for atol, maxiter in ((1e-10, 200), (1e-4, 200), (1e-10, 12)):
        X, its, stops = block_lsmr(lambda V: Ad @ V, lambda U: Ad.T @ U, xp.asarray(B), xp.asarray(X0),
                                   atol=atol, btol=atol, maxiter=maxiter, xp=xp)
        X = to_numpy(X)
        for j in range(6):
            x, stop, it = lsmr(A, B[:, j], atol=atol, btol=atol, maxiter=maxiter, x0=X0[:, j])[:3]
            assert (its[j], stops[j]) == (it, stop), (j, atol, maxiter)
            np.testing.assert_allclose(X[:, j], x, rtol=1e-11, atol=1e-11 * np.abs(x).max(initial=0.0))
    assert list(stops) == [7, 0, 7, 7, 7, 7]  # the last pass: maxiter = 12 stops all but b = 0
    assert B[:, 1].sum() == 0.0 and X0[:, 0].sum() == 0.0  # inputs untouched
    # float32: the machine-precision stops (istop 5) fire in float32, as SciPy's float32
    # scalars fire them; tested in float64 they ran 143-166 iterations instead of 79-87.
    A32 = (rng.standard_normal((6000, 40)) * np.linspace(1, 100, 40)).astype(np.float32)
    B32 = rng.standard_normal((6000, 3)).astype(np.float32)
    Ad = xp.asarray(A32)
    X, its, stops = block_lsmr(lambda V: Ad @ V, lambda U: Ad.T @ U, xp.asarray(B32), xp.zeros((40, 3), np.float32),
                               atol=1e-10, btol=1e-10, maxiter=500, xp=xp)
    assert to_numpy(X).dtype == np.float32
    for j in range(3):
        with warnings.catch_warnings():  # SciPy casts its 1e100 condition bound to float32
            warnings.simplefilter("ignore", RuntimeWarning)
            stop, it = lsmr(A32, B32[:, j], atol=1e-10, btol=1e-10, maxiter=500)[1:3]
        # float64 against float32 scalars: the trajectories part after a few tens of steps
        assert stops[j] == stop == 5 and abs(its[j] - it) <= max(3, it // 10), (j, its[j], it)


def test_precondition_solves_the_columns_of_b_together(xp):
    # A b of k columns runs one block LSMR: column j agrees with lstsq(A, b_j) (iterations
    # and x) and with the exact answer, and a column cannot borrow another's scalars (the
    # columns' scales differ by 1e8).  F-order and C-order B give the same answer.
    # (κ(A) = 1e2: at 1e8 both answers sit ~1e-9 from the exact one, as the 1-D test allows.)
    A = ill_conditioned(3000, 40, 1e2, 22)
    rng = np.random.default_rng(23)
    B = rng.standard_normal((3000, 4)) * np.array([1.0, 1e-4, 1e4, 1.0])
    B[:, 3] = A @ rng.standard_normal(40)  # consistent: stops on ||r||
    X_ref = np.linalg.lstsq(A, B, rcond=None)[0]
    res = gs.lstsq(xp.asarray(A), xp.asarray(B), seed=24)
    res_f = gs.lstsq(xp.asarray(A), xp.asarray(np.asfortranarray(B)), seed=24)
    np.testing.assert_array_equal(to_numpy(res_f.x), to_numpy(res.x))
    assert len(res.info["iterations"]) == 4
    for j in range(4):
        one = gs.lstsq(xp.asarray(A), xp.asarray(B[:, j]), seed=24)
        assert abs(one.info["iterations"] - res.info["iterations"][j]) <= 1
        scale = np.linalg.norm(B[:, j])
        assert np.linalg.norm(A @ (to_numpy(res.x)[:, j] - to_numpy(one.x))) <= 1e-12 * scale  # measured 6e-15
        assert np.linalg.norm(A @ (to_numpy(res.x)[:, j] - X_ref[:, j])) <= 1e-8 * scale  # 3e-10
        cost_ref = np.linalg.norm(A @ X_ref[:, j] - B[:, j])
        assert abs(float(to_numpy(res.cost)[j]) - cost_ref) <= 1e-13 * scale  # 1e-15


def test_rank_deficient_warns_and_returns_min_norm(xp):
    rng = np.random.default_rng(9)
    A = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 10))  # rank 6 of 10 columns
    b = rng.standard_normal(400)
    x_ref = np.linalg.lstsq(A, b, rcond=None)[0]  # minimum norm
    for method in ("direct", "precondition"):
        with pytest.warns(gs.RankDeficientWarning) as rec:
            res = gs.lstsq(xp.asarray(A), xp.asarray(b), method=method, seed=10)
        assert rec[0].filename == __file__  # the warning points at the caller's line
        np.testing.assert_allclose(to_numpy(res.x), x_ref, rtol=1e-7, atol=1e-9)
        assert res.info["rank_deficient"]


@pytest.mark.parametrize("sparse", [False, True])
def test_precondition_falls_back_when_the_sketch_loses_rank_that_a_has(xp, sparse):
    """A of full rank whose nonzeros are one entry per column: a CountSketch that puts two
    of those rows into one bucket merges two directions.  x was confined to SA's row space
    (rank 19 dense, 17 sparse): off by 13 % (dense) and 15 % (sparse) here, with a
    RankDeficientWarning that blamed A.  Now the normal equations catch it and the direct
    solve answers, without a warning; a truly deficient A still warns (test above)."""
    A, b, x_ref = one_entry_per_column()
    d = A.shape[1]
    A_in = sparse_module(xp).csr_matrix(xp.asarray(A)) if sparse else xp.asarray(A)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.RankDeficientWarning)
        res = gs.lstsq(A_in, xp.asarray(b), sketch="countsketch", seed=0)
    assert res.info["fallback"] == "direct" and res.info["sketch_rank"] < d  # 19 dense, 17 sparse (m = 90)
    assert res.info["method"] == "precondition" and not res.info["rank_deficient"]
    np.testing.assert_allclose(to_numpy(res.x), x_ref, rtol=1e-10, atol=1e-12)


def test_sketch_and_solve_warns_when_the_sketch_loses_rank(xp):
    """Sketch and solve on the one-entry-per-column A: a CountSketch of seed 2 merges two of
    its rows (rank 19 of 20 at m = 410; 3 of 10 seeds do), so x misses a direction of A.  It
    returned that x with no warning; now it warns, naming both causes, and records the rank.
    A sketch that keeps the rank (sparse sign, same seed) stays silent."""
    A, b, _ = one_entry_per_column()
    with pytest.warns(gs.RankDeficientWarning, match="rank 19 < 20.*merged directions") as rec:
        res = gs.lstsq(xp.asarray(A), xp.asarray(b), method="sketch", sketch="countsketch", seed=2)
    assert rec[0].filename == __file__
    assert res.info["rank_deficient"] and res.info["sketch_rank"] == 19
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.RankDeficientWarning)
        ok = gs.lstsq(xp.asarray(A), xp.asarray(b), method="sketch", seed=2)
    assert not ok.info["rank_deficient"] and "sketch_rank" not in ok.info


@pytest.mark.parametrize("shape", [(400, 10), (15, 10)])  # CholeskyQR2 (n >= 2d), Householder
def test_direct_rank_deficient_solves_through_the_svd_of_r(xp, shape):
    from gpusketch.linalg import _numerics

    # A = QR, R = UΣVᵀ: R's SVD decides the rank and gives the minimum-norm x, where the SVD of
    # all of A (lstsq's gelsd) was taken (CPU, 200000 × 100: 2.75 → 1.65 s rank deficient,
    # 0.89 → 0.19 s at κ = 1e11).
    rng = np.random.default_rng(19)
    A = rng.standard_normal((shape[0], 6)) @ rng.standard_normal((6, shape[1]))
    B = rng.standard_normal((shape[0], 3))
    X_ref = np.linalg.lstsq(A, B, rcond=None)[0]
    with pytest.warns(gs.RankDeficientWarning):
        res = gs.lstsq(xp.asarray(A), xp.asarray(B), method="direct")
    assert res.info["factorization"].endswith("+svd") and res.info["rank_deficient"]
    np.testing.assert_allclose(to_numpy(res.x), X_ref, rtol=1e-8, atol=1e-10)
    with pytest.warns(gs.RankDeficientWarning):  # the rule at float32's precision
        res32 = gs.lstsq(xp.asarray(A.astype(np.float32)), xp.asarray(B[:, 0].astype(np.float32)), method="direct")
    assert res32.x.dtype == np.float32 and res32.info["rank_deficient"]
    # full rank by the rule (σ_min/σ_max 2.5x the cut max(n, d) ε) but flagged by the
    # condition estimate (within 10x of it): ``full_rank`` clears it (its columns graded,
    # R with unit columns is orthogonal), and the triangular solve answers as accurately
    C = np.linalg.qr(rng.standard_normal(shape))[0] * np.geomspace(1, 2.5 * max(shape) * np.finfo(float).eps, shape[1])
    R = np.linalg.qr(C, mode="r")
    assert _numerics.qr_rank_deficient(R, C.shape) and _numerics.full_rank(R, C.shape)  # flagged, then cleared
    full = gs.lstsq(xp.asarray(C), xp.asarray(B), method="direct")
    assert not full.info["factorization"].endswith("+svd") and not full.info["rank_deficient"]
    ref = np.linalg.norm(C @ np.linalg.lstsq(C, B, rcond=None)[0] - B, axis=0)
    np.testing.assert_allclose(to_numpy(full.cost), ref, rtol=1e-9)


def test_solvers_do_not_depend_on_the_units_of_the_columns(xp):
    # Columns in other units (scales 1e-8 .. 1e8: κ₂ 1e16, against 1.1 for the scaled A): the
    # fits, costs and leverage scores are those of the unscaled A, with no warning.  The rank
    # rule on A itself had dropped 3 of 12 directions, with a RankDeficientWarning from every
    # method (on a 5000 x 12 draw: exact scores 5e-3 off, Huber IRLS's cost 1.6x).
    from gpusketch.linalg import _precondition
    from gpusketch.robust import HuberLoss, irls

    rng = np.random.default_rng(23)
    A0 = rng.standard_normal((3000, 12))
    b = A0 @ rng.standard_normal(12) + rng.standard_normal(3000)
    D = np.logspace(-8, 8, 12)
    A = xp.asarray(A0 * D)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.RankDeficientWarning)
        for method in ("direct", "precondition", "sketch"):
            ref = gs.lstsq(A0, b, method=method, seed=4)
            res = gs.lstsq(A, xp.asarray(b), method=method, seed=4)
            assert not res.info["rank_deficient"]
            np.testing.assert_allclose(float(res.cost), float(ref.cost), rtol=1e-9)
            np.testing.assert_allclose(to_numpy(res.x) * D, ref.x, rtol=1e-6, atol=1e-9 * np.abs(ref.x).max())
        np.testing.assert_allclose(to_numpy(gs.leverage_scores(A, exact=True)), gs.leverage_scores(A0, exact=True),
                                   rtol=0, atol=1e-12)
        # the refinement from A's own Gram, whose accuracy follows κ on unit columns (1.1 here)
        pre = _precondition.SketchPreconditioner(gs.SparseSign(58, 3000, nnz=2, seed=1) @ A, xp)
        assert _precondition.gram_refines(A, pre, _precondition.refinement_matrix(pre, np.float64, xp))
        huber = irls(A, xp.asarray(b), HuberLoss(1.0), seed=2)
        np.testing.assert_allclose(float(huber.cost), float(irls(A0, b, HuberLoss(1.0), seed=2).cost), rtol=1e-8)
        # a sparse A: the corrected semi-normal equations take κ on unit columns, as the rule does
        res = gs.lstsq(sparse_module(xp).csr_matrix(A), xp.asarray(b), method="direct")
        assert res.info["factorization"] == "seminormal"
        np.testing.assert_allclose(float(res.cost), float(gs.lstsq(A0, b, method="direct").cost), rtol=1e-9)
    # float32 (factored in float64, the rule at d ε₃₂): scales 1e-4 .. 1e4 had cost 2.4-2.7x (20000 x 12)
    A32, b32, D32 = A0.astype(np.float32), b.astype(np.float32), np.logspace(-4, 4, 12).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.RankDeficientWarning)
        for method in ("direct", "precondition"):
            ref = gs.lstsq(xp.asarray(A32), xp.asarray(b32), method=method, seed=4)
            res = gs.lstsq(xp.asarray(A32 * D32), xp.asarray(b32), method=method, seed=4)
            np.testing.assert_allclose(float(res.cost), float(ref.cost), rtol=1e-5)
    # a column 1e-300 times the others: kept (it has unit norm once scaled), its coefficient finite
    C = A0.copy()
    C[:, 0] *= 1e-300
    res = gs.lstsq(xp.asarray(C), xp.asarray(b), method="direct")
    assert bool(np.isfinite(to_numpy(res.x)).all())
    np.testing.assert_allclose(float(res.cost), float(gs.lstsq(A0, b, method="direct").cost), rtol=1e-9)


def test_intercept_and_offset_feature_fit_as_the_centred_design(xp):
    # [1, 10⁶ + u, z, t/2 + 1e-3 w]: κ₂ 1e12 (1.2e9 on unit columns), below NumPy's cut
    # max(n, d) ε σ₁, so NumPy's lstsq truncates it (residual 2.22x the fit's).  Its column
    # space is the centred design's [1, u − ū, z, ...]: every method fits as that does,
    # with no warning (at faa0721 the direct solve truncated as NumPy and warned).
    rng = np.random.default_rng(41)
    n = 20000
    u, z, w = rng.standard_normal((3, n))
    t = 1e6 + u
    A = np.c_[np.ones(n), t, z, t / 2 + 1e-3 * w]
    b = 3 + 2 * u + z + rng.standard_normal(n)
    C = np.c_[np.ones(n), t - t.mean(), z, (t - t.mean()) / 2 + 1e-3 * w]  # same column space, κ 1.3e3
    ref = np.linalg.norm(C @ np.linalg.lstsq(C, b, rcond=None)[0] - b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.RankDeficientWarning)
        for method in ("direct", "precondition"):
            res = gs.lstsq(xp.asarray(A), xp.asarray(b), method=method, seed=2)
            np.testing.assert_allclose(float(res.cost), ref, rtol=1e-9)


def test_seed_recorded_and_replayable():
    rng = np.random.default_rng(11)
    A, b = rng.standard_normal((300, 5)), rng.standard_normal(300)
    r1 = gs.lstsq(A, b, method="sketch")
    r2 = gs.lstsq(A, b, method="sketch", seed=r1.info["seed"])
    np.testing.assert_array_equal(r1.x, r2.x)


A_OK = np.ones((20, 3)) + np.eye(20, 3)
LSTSQ_BAD = [
    (lambda: gs.lstsq(A_OK, np.ones(19)), ValueError, "rows"),
    (lambda: gs.lstsq(A_OK, np.full(20, np.nan)), ValueError, "NaN"),
    (lambda: gs.lstsq(np.full((20, 3), np.inf), np.ones(20)), ValueError, "NaN or Inf"),
    (lambda: gs.lstsq(A_OK, np.ones(20), method="qr"), ValueError, "method"),
    (lambda: gs.lstsq(np.ones((3, 20)), np.ones(3), method="sketch"), ValueError, "n >= d"),
    (lambda: gs.lstsq(A_OK, np.ones(20), m=3), ValueError, "m"),
    (lambda: gs.lstsq(A_OK, np.ones(20), tol=0), ValueError, "tol"),
    (lambda: gs.lstsq(A_OK, np.ones(20), sketch="fft"), ValueError, "sketch"),
    (lambda: gs.lstsq(np.ones(20), np.ones(20)), ValueError, "A must be 2-D"),
    (lambda: gs.lstsq(A_OK.astype(complex), np.ones(20)), TypeError, "complex"),
    (lambda: gs.leverage_scores(np.ones((3, 5))), ValueError, "n >= d"),
    (lambda: gs.leverage_sample(A_OK, 0), ValueError, "s"),
    (lambda: gs.leverage_sample(A_OK, 5, gamma=0), ValueError, "gamma"),
    (lambda: gs.leverage_sample(A_OK, 5, osnap=0), ValueError, "osnap"),
    (lambda: gs.randomized_svd(A_OK, 4), ValueError, "k"),
    (lambda: gs.randomized_svd(A_OK, 0), ValueError, "k"),
    (lambda: gs.randomized_svd(A_OK, 2, power_iters=-1), ValueError, "power_iters"),
    (lambda: gs.randomized_svd(A_OK, 2, test_matrix="fft"), ValueError, "^test_matrix must be one of"),
    (lambda: gs.randomized_svd(A_OK, 2, test_matrix=gs.Gaussian(2, 3)), ValueError, r"^test_matrix has shape \(2, 3\)"),
    (lambda: gs.rank(np.full((4, 4), np.nan)), ValueError, "NaN"),
    (lambda: gs.independent_rows("abc"), TypeError, "A"),
]


@pytest.mark.parametrize("fn,exc,word", LSTSQ_BAD)
def test_linalg_bad_input(fn, exc, word):
    with pytest.raises(exc, match=word):
        fn()


def test_leverage_scores_exact_and_approximate(xp):
    rng = np.random.default_rng(12)
    A = rng.standard_normal((3000, 30)) * np.exp(rng.standard_normal((3000, 1)))  # uneven scores
    Q, _ = np.linalg.qr(A)
    exact = (Q**2).sum(axis=1)
    np.testing.assert_allclose(to_numpy(gs.leverage_scores(xp.asarray(A), exact=True)), exact, atol=1e-12)
    approx = to_numpy(gs.leverage_scores(xp.asarray(A), seed=13))
    ratio = approx / exact
    # OSNAP with 4d + 10 rows (distortion < ~0.5) and a JL estimate with 72 columns: within 4x.
    assert 0.25 < ratio.min() and ratio.max() < 4.0
    assert abs(approx.sum() / 30 - 1) < 0.5


@pytest.mark.parametrize("n", [8, 20, 42])
def test_small_n_needs_no_sketch(xp, n):
    """Where the default sketch would have n rows or more (4d + 10 for the scores, about
    20d for sketch-and-solve), A is used whole: exact scores and exact least squares.
    A square OSNAP of an 8 x 8 A had given scores off by factors up to e^5."""
    rng = np.random.default_rng(n)
    A = rng.standard_normal((n, 8)) * np.exp(rng.standard_normal((n, 1)))
    b = rng.standard_normal(n)
    Ad, bd = xp.asarray(A), xp.asarray(b)
    exact = to_numpy(gs.leverage_scores(Ad, exact=True))
    np.testing.assert_allclose(to_numpy(gs.leverage_scores(Ad, seed=1)), exact, rtol=1e-10)
    if n == 8:
        return  # n = d: sketched solvers refuse the default m (tested elsewhere)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    for method in ("sketch", "precondition"):
        res = gs.lstsq(Ad, bd, method=method, seed=1)
        assert res.info["sketch"] == "Sampling" and res.info["m"] == n
        np.testing.assert_allclose(to_numpy(res.x), x, rtol=1e-9, atol=1e-12)
    # an m the caller chose is the caller's sketch, even at m = n
    assert gs.lstsq(Ad, bd, method="sketch", m=n, seed=1).info["sketch"] == "SparseSign"


@pytest.mark.parametrize("shape", [(500, 9), (14, 9)])  # CholeskyQR2 fails / does not apply: Householder
def test_exact_leverage_scores_of_a_rank_deficient_a_are_the_svds(xp, shape):
    """A rank-deficient A's exact scores come from its Householder QR and the SVD of R
    (row norms of ``Q U_R`` over R's kept directions; on the host Q applied as reflectors),
    not from an SVD of A: they must equal the row norms of the SVD's ``U_r``, and sum to r."""
    rng = np.random.default_rng(15)
    n, d = shape
    A = rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) * np.geomspace(1, 1e3, d)
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    want = (U[:, :4] ** 2).sum(axis=1)
    got = to_numpy(gs.leverage_scores(xp.asarray(A), exact=True))
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert abs(got.sum() - 4) < 1e-8


@pytest.mark.parametrize("fmt", ["dense", "csc"])
def test_exact_leverage_scores_by_tsqr_over_many_blocks(monkeypatch, fmt):
    """On the host the exact scores' Householder route is a TSQR: 70000 × 32 takes 18 row
    blocks on threads (a sparse A densified a block at a time), each block's reflectors kept
    and Q applied a block at a time.  Columns graded over 9 decades (Householder is
    blind to column scaling: its Q's row norms are the reference) and a rank-deficient A
    (R's SVD keeps 28 directions; float64 and float32 rules) match, and A is untouched."""
    import sys

    import scipy.sparse as sp

    from gpusketch.linalg import _numerics

    leverage = sys.modules["gpusketch.linalg.leverage"]
    calls = []
    monkeypatch.setattr(leverage, "householder_tsqr",
                        lambda M: calls.append(M.shape) or _numerics.householder_tsqr(M))
    # CholeskyQR2 is blind to column scaling too: for the graded A its failure is taken as given
    fail, cholesky_qr2 = [False], leverage.streamed_cholesky_qr2
    monkeypatch.setattr(leverage, "streamed_cholesky_qr2", lambda *a: None if fail[0] else cholesky_qr2(*a))
    rng = np.random.default_rng(16)
    G = rng.standard_normal((70000, 32))
    G[:5] *= 50  # rows of high leverage
    graded = G * np.logspace(0, -9, 32)
    Q, _ = np.linalg.qr(graded)
    deficient = G.copy()
    # dependent columns among the first (trailing ones leave range(R) a coordinate subspace,
    # blind to R's row signs): R's small pivots sit in rows with large entries further right
    deficient[:, 1:8:2] = G[:, 0:8:2] @ rng.standard_normal((4, 4))
    U = np.linalg.svd(deficient, full_matrices=False)[0][:, :28]
    cases = [(graded, (Q * Q).sum(axis=1), 1e-10), (deficient, (U * U).sum(axis=1), 1e-10),
             (deficient.astype(np.float32), (U * U).sum(axis=1), 1e-4)]
    for A, want, rtol in cases:
        M = sp.csc_matrix(A) if fmt == "csc" else A
        fail[0] = A is graded
        A0 = A.copy()
        got = gs.leverage_scores(M, exact=True)
        assert got.dtype == A.dtype and calls[-1] == A.shape
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-3 * rtol * want.max())
        np.testing.assert_array_equal(M.toarray() if fmt == "csc" else M, A0)
    assert len(calls) == 3


def test_exact_leverage_scores_keep_cholesky_qr2_where_r_is_of_full_rank_by_the_rule(monkeypatch):
    """A CholeskyQR2 R flagged near the rank rule's line (20000 × 20 graded to κ = 3e10:
    the cut is 4.4e-12) that ``full_rank`` clears: the streamed Q's row norms serve, as
    LAPACK's Householder Q's to 1e-12, with no Householder QR.  Rotated after grading to
    κ = 1e12 (so that no column scaling helps), of rank 18 by the rule: the Householder
    route (CholeskyQR2's Gram fails), and the scores sum to 18."""
    import sys

    from gpusketch.linalg import _numerics

    leverage = sys.modules["gpusketch.linalg.leverage"]
    calls = []
    monkeypatch.setattr(leverage, "householder_tsqr",
                        lambda M: calls.append(M.shape) or _numerics.householder_tsqr(M))
    rng = np.random.default_rng(17)
    G = rng.standard_normal((20000, 20))
    H = np.linalg.qr(rng.standard_normal((20, 20)))[0]
    A = G * np.logspace(0, -np.log10(3e10), 20)
    streamed = _numerics.streamed_cholesky_qr2(A, np)
    assert streamed is not None and _numerics.qr_rank_deficient(streamed[0], A.shape)  # flagged
    Q, _ = np.linalg.qr(A)
    np.testing.assert_allclose(gs.leverage_scores(A, exact=True), (Q * Q).sum(axis=1), rtol=1e-12)
    assert calls == []
    B = G * np.logspace(0, -12, 20) @ H
    rank = _numerics.svd_rank(np.linalg.svd(B, compute_uv=False), B.shape)
    assert rank == 18 and gs.leverage_scores(B, exact=True).sum() == pytest.approx(rank, rel=1e-10)
    assert calls == [B.shape]


def test_leverage_scores_rank_deficient_sum_to_rank():
    rng = np.random.default_rng(14)
    A = rng.standard_normal((500, 4)) @ rng.standard_normal((4, 9))
    exact = gs.leverage_scores(A, exact=True)
    assert abs(exact.sum() - 4) < 1e-8
    # Sketched: P = V_r Σ_r⁻¹ from the SVD of SA whitens the rank-4 range as R⁻¹ does a full-rank
    # one, so the estimates keep the constant factor of the full-rank case (OSNAP with 46 rows,
    # 45 JL columns: ratios measured in [0.42, 2.6] over seeds 0-19).  Spread singular values
    # (1 to 1e3) make a preconditioner that does not whiten miss by far (Σ_r in place of
    # Σ_r⁻¹: ratios of 1e14 to 8e17, measured).
    B = A * np.geomspace(1, 1e3, 9)
    exact = gs.leverage_scores(B, exact=True)
    ratio = gs.leverage_scores(B, seed=3) / exact
    assert 0.25 < ratio.min() and ratio.max() < 4.0


def test_rank_deficient_preconditioner_does_not_hang_on_the_svd_signs(monkeypatch):
    """A rank-deficient sketch's P = V_r Σ_r⁻¹ fixes each singular pair's sign, so the
    approximate leverage scores (row norms of A P G for a fixed Gaussian G) and the
    sketched solution are the same whichever signs the SVD routine returns (LAPACK's and
    cuSOLVER's need not agree); they came out 10-25 % apart when the signs flipped."""
    from gpusketch.linalg._precondition import SketchPreconditioner

    rng = np.random.default_rng(40)
    A = rng.standard_normal((2000, 6)) @ rng.standard_normal((6, 15))
    b = rng.standard_normal(2000)
    with pytest.warns(gs.RankDeficientWarning):
        want = (gs.leverage_scores(A, seed=5), gs.lstsq(A, b, method="sketch", seed=5).x)
    flip_svd_signs(monkeypatch)
    pre = SketchPreconditioner(A[:200], np)
    P = pre.P  # V_r Σ_r⁻¹: each column's largest entry is positive
    assert pre.rank_deficient and np.all(P[np.abs(P).argmax(axis=0), np.arange(6)] > 0)
    with pytest.warns(gs.RankDeficientWarning):
        got = (gs.leverage_scores(A, seed=5), gs.lstsq(A, b, method="sketch", seed=5).x)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10)


@pytest.mark.parametrize("kind", ["full rank", "ill conditioned", "rank deficient", "float32"])
def test_preconditioner_without_q_matches_the_solving_one(xp, kind):
    """``SketchPreconditioner(solve=False)`` (the leverage scores, kron's factor bases) skips
    forming Q on the Householder route; its P must be the solving one's."""
    from gpusketch.linalg._precondition import SketchPreconditioner

    rng = np.random.default_rng(43)
    SA = rng.standard_normal((300, 40))
    if kind == "ill conditioned":  # CholeskyQR2 fails: Householder (rotated: graded columns alone
        SA = SA * np.logspace(0, -12, 40) @ np.linalg.qr(rng.standard_normal((40, 40)))[0]  # it passes)
    elif kind == "rank deficient":
        SA = SA[:, :30] @ rng.standard_normal((30, 40))
    elif kind == "float32":
        SA = SA.astype(np.float32)
    SA = xp.asarray(SA)
    full, lean = SketchPreconditioner(SA, xp), SketchPreconditioner(SA, xp, solve=False)
    assert lean.rank == full.rank == (30 if kind == "rank deficient" else 40)
    eye = xp.eye(full.rank, dtype=SA.dtype)
    np.testing.assert_allclose(to_numpy(lean.apply(eye)), to_numpy(full.apply(eye)), rtol=1e-12 if kind != "float32" else 1e-5)
    with pytest.raises(RuntimeError, match="solve=False"):
        lean.sketched_solution(SA[:, 0])


def test_leverage_sample_is_subspace_embedding(xp):
    rng = np.random.default_rng(15)
    A = rng.standard_normal((6000, 20))
    A[:10] *= 100  # a few heavy rows must be kept
    S = gs.leverage_sample(xp.asarray(A), 1200, seed=16)
    assert 300 < S.shape[0] < 2400  # heavy rows cap at f = 1, so fewer than s are kept
    assert set(range(10)) <= set(S.indices.tolist())
    U, _ = np.linalg.qr(A)
    s = np.linalg.svd(S @ U, compute_uv=False)
    assert 0.6 < s.min() ** 2 and s.max() ** 2 < 1.4


@pytest.mark.parametrize("d", [1, 3])
def test_leverage_sample_count_is_about_s_for_narrow_a(d):
    # F estimates ||AR⁻¹||_F² with >= 128 degrees of freedom whatever the rank; with
    # 8r (8 for d = 1) the kept count spread 0.40-4.52 s (5-95 %).  Poisson(50) alone
    # spreads 0.66-1.34 s over 40 draws at 2.5 sd; the bounds leave room for F's error.
    A = np.random.default_rng(40).standard_normal((5000, d))
    kept = np.array([gs.leverage_sample(A, 50, seed=t).shape[0] for t in range(40)]) / 50
    assert 0.4 < kept.min() and kept.max() < 2.0
    assert 0.85 < np.median(kept) < 1.15


def test_leverage_sample_composed_with_osnap(xp):
    # Theorem 7.4: sample, then an OSNAP down to O(d log d / eps^2) rows.
    rng = np.random.default_rng(26)
    A = rng.standard_normal((6000, 20))
    C = gs.leverage_sample(xp.asarray(A), 1500, osnap=400, seed=27)
    assert isinstance(C, gs.Composed) and C.shape == (400, 6000)
    U, _ = np.linalg.qr(A)
    s = np.linalg.svd(to_numpy(C @ xp.asarray(U)), compute_uv=False)
    assert 0.4 < s.min() ** 2 and s.max() ** 2 < 1.6


def test_leverage_sample_same_rows_cpu_and_gpu_seedwise():
    rng = np.random.default_rng(17)
    A = rng.standard_normal((2000, 8))
    S1, S2 = gs.leverage_sample(A, 200, seed=3), gs.leverage_sample(A, 200, seed=3)
    np.testing.assert_array_equal(S1.indices, S2.indices)


@pytest.mark.parametrize("test_matrix", ["gaussian", "sparse_sign"])
def test_randomized_svd_decaying_spectrum(xp, test_matrix):
    rng = np.random.default_rng(18)
    U, _ = np.linalg.qr(rng.standard_normal((800, 100)))
    V, _ = np.linalg.qr(rng.standard_normal((300, 100)))
    sv = 0.8 ** np.arange(100)
    A = (U * sv) @ V.T
    k = 10
    Uk, s, Vt = gs.randomized_svd(xp.asarray(A), k, seed=19, test_matrix=test_matrix)
    Uk, s, Vt = to_numpy(Uk), to_numpy(s), to_numpy(Vt)
    np.testing.assert_allclose(s, sv[:k], rtol=1e-6)
    err = np.linalg.norm(A - (Uk * s) @ Vt)
    opt = np.linalg.norm(sv[k:])
    assert err <= 1.001 * opt
    np.testing.assert_allclose(Uk.T @ Uk, np.eye(k), atol=1e-10)


def test_randomized_svd_without_power_iterations_is_worse():
    rng = np.random.default_rng(20)
    A = rng.standard_normal((400, 300)) * (0.97 ** np.arange(300))
    e = [np.linalg.norm(A - (lambda u, s, v: (u * s) @ v)(*gs.randomized_svd(A, 10, power_iters=q, seed=1)))
         for q in (0, 3)]
    assert e[1] < e[0]


def test_randomized_svd_full_rank_k_is_the_svd(xp):
    # k = min(n, d) is allowed: the range finder then spans all of range(A).
    A = np.random.default_rng(41).standard_normal((60, 8))
    U, s, Vt = (to_numpy(v) for v in gs.randomized_svd(xp.asarray(A), 8, seed=2))
    np.testing.assert_allclose(s, np.linalg.svd(A, compute_uv=False), rtol=1e-12)
    np.testing.assert_allclose((U * s) @ Vt, A, atol=1e-12)


def test_randomized_svd_signs_do_not_hang_on_the_svd_routine(monkeypatch):
    """U and Vt carry scikit-learn's ``svd_flip`` convention (largest |entry| of each row of
    Vt positive), in memory and on Dask, so an SVD routine that returns other signs
    (cuSOLVER against LAPACK) gives the same U and Vt; they had followed the routine."""
    import dask.array as da

    from gpusketch import dask as gsd

    rng = np.random.default_rng(42)
    A = rng.standard_normal((500, 5)) @ rng.standard_normal((5, 40)) + 1e-3 * rng.standard_normal((500, 40))
    want = gs.randomized_svd(A, 4, seed=3)
    dask_want = gsd.randomized_svd(da.from_array(A, chunks=(100, 40)), 4, seed=3)
    for Vt in (want[2], dask_want[2]):
        assert np.all(Vt[np.arange(4), np.abs(Vt).argmax(axis=1)] > 0)
    flip_svd_signs(monkeypatch)
    for got, ref in ((gs.randomized_svd(A, 4, seed=3), want),
                     (gsd.randomized_svd(da.from_array(A, chunks=(100, 40)), 4, seed=3), dask_want)):
        for g, r in zip(got, ref):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-12, atol=1e-14)


def test_rank_cases(xp):
    rng = np.random.default_rng(21)
    low = rng.standard_normal((600, 9)) @ rng.standard_normal((9, 80))
    dup = np.vstack([low[:5]] * 40)  # 200 rows, 5 distinct
    wide = rng.standard_normal((30, 500))
    cases = [(low, 9), (np.zeros((50, 20)), 0), (dup, 5), (wide, 30), (rng.standard_normal((100, 100)), 100)]
    for M, k in cases:
        assert gs.rank(xp.asarray(M), seed=22) == k
    sp = sparse_module(xp).csr_matrix(xp.asarray(low * (np.abs(low) > 0)))
    assert gs.rank(sp, seed=23) == 9


def test_rank_of_sparse_matrices_whose_rank_sits_in_single_entries(xp):
    # k nonzeros in distinct rows and columns: every one of them carries rank, so the sketches
    # must keep all k columns of S (and of R) independent.  With ±1 values and 2 nonzeros per
    # column (a SparseSign) 52 of these 300 came out short in rank and in independent_rows;
    # random values and 3 nonzeros per column (_rank_preserving) miss none.
    spm = sparse_module(xp)
    wrong = []
    for seed in range(0, 300, 1 if xp is np else 5):
        rng = np.random.default_rng(seed)
        k = int(rng.integers(1, 40))
        rows, cols = rng.choice(60, k, replace=False), rng.choice(80, k, replace=False)
        dense = np.zeros((60, 80))
        dense[rows, cols] = rng.integers(1, 4, k)
        A = spm.csr_matrix(xp.asarray(dense))
        picked = to_numpy(gs.independent_rows(A, seed=seed))
        if gs.rank(A, seed=seed) != k or len(picked) != k or np.linalg.matrix_rank(dense[picked]) != k:
            wrong.append(seed)
    assert wrong == []


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matrix_rank_certifies_full_rank_by_qr_and_otherwise_follows_the_svd_rule(xp, dtype, monkeypatch):
    """``matrix_rank`` skips the SVD where ``1/||R⁻¹||_F`` clears twice the cut at
    ``||R||_F``, and on the host where a pivoted QR's bounds place every singular value
    (``_pivoted_rank``: a clear gap at the cut); every answer is the SVD rule's
    (``svd_rank``), on both sides of the cut."""
    from gpusketch.linalg._numerics import matrix_rank, rank_cut, svd_rank

    rng = np.random.default_rng(40)
    U, _ = np.linalg.qr(rng.standard_normal((60, 40)))
    V, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    cut = rank_cut(1.0, (60, 40), dtype)  # the rule's relative cut for a 60 x 40 M

    def with_spectrum(s):
        return (U * s) @ V.T

    flat = np.ones(40)
    cases = {  # name: (singular values, whether the QR proves full rank, whether the pivoted QR decides)
        "well conditioned": (np.linspace(1.0, 0.1, 40), True, True),
        # full by the rule; 1/||R⁻¹||_F too small to prove it, by either QR
        "4x above the cut": (np.r_[flat[:39], 4 * cut], False, False),
        # |R₃₉,₃₉| of the pivoted QR is 0.73 of the cut here: too close to decide
        "4x below the cut": (np.r_[flat[:39], cut / 4], False, False),
        "1000x below the cut": (np.r_[flat[:39], cut / 1000], False, True),
        "rank 25": (np.r_[flat[:25], np.zeros(15)], False, True),
    }
    calls = []
    svd = xp.linalg.svd
    monkeypatch.setattr(xp.linalg, "svd", lambda *a, **k: calls.append(1) or svd(*a, **k))
    for name, (s, proved, pivoted) in cases.items():
        pivoted = pivoted and xp is np  # cuSOLVER has no pivoted QR
        M64 = with_spectrum(s)
        want = svd_rank(np.linalg.svd(M64, compute_uv=False), (60, 40), dtype)
        for M in (M64, M64.T):  # tall, and wide (its QR is of Mᵀ)
            calls.clear()
            got = matrix_rank(xp.asarray(M.astype(dtype)), (60, 40), xp)
            assert got == want, (name, M.shape)
            assert (calls == []) == (proved or pivoted), (name, M.shape)
            calls.clear()
            assert matrix_rank(xp.asarray(M.astype(dtype)), (60, 40), xp, certify=False) == want
            assert (calls == []) == pivoted  # without certify: no QR proof, the pivoted QR or the SVD
    assert [svd_rank(np.linalg.svd(with_spectrum(s), compute_uv=False), (60, 40), dtype) for s, *_ in cases.values()] == [
        40, 40, 39, 39, 25]
    assert matrix_rank(xp.zeros((30, 20), dtype=dtype), (30, 20), xp) == 0
    # Where ||R||_F ||R⁻¹||_F >= 40 already fails the proof (2 · 40 · max(shape) · ε >= 1),
    # no QR is taken: float32 with A's 220000 rows is decided by its float64 Gram (_gram_rank),
    # with or without certify, and no SVD either.
    qrs = []
    qr = xp.linalg.qr
    monkeypatch.setattr(xp.linalg, "qr", lambda *a, **k: qrs.append(1) or qr(*a, **k))
    calls.clear()
    M = xp.asarray(with_spectrum(cases["well conditioned"][0]).astype(dtype))
    assert matrix_rank(M, (220000, 40), xp) == 40
    assert matrix_rank(M, (220000, 40), xp, certify=False) == 40
    # (float64: the QR proves it; without certify the pivoted QR decides on the host, the SVD on a GPU)
    assert (qrs, calls) == (([], []) if dtype == np.float32 else ([1], [] if xp is np else [1]))


def test_float32_rank_from_the_float64_gram_is_the_svd_rules(xp, monkeypatch):
    """``_gram_rank`` returns the float32 rank rule's answer from the eigenvalues of the
    float64 Gram, or None where they cannot place a singular value on one side of the cut.
    200 matrices of graded spectra (down to 1e-6, a third with exact zeros), tall and wide,
    against the rule on the float64 SVD of the same float32 matrix: all decided alike
    (measured: 1 of 300 left open).  A singular value exactly on the cut (a scaled column
    of a permutation, so that float32 holds it exactly) is left open, and matrix_rank then
    asks the SVD."""
    from gpusketch.linalg._numerics import _gram_rank, matrix_rank, rank_cut, svd_rank

    rng = np.random.default_rng(41)
    decided = 0
    for _ in range(200):
        s, k = (int(v) for v in rng.integers(2, 120, 2))
        shape = (max(s, k) * int(rng.integers(1, 400)), max(s, k))
        p = min(s, k)
        U, _ = np.linalg.qr(rng.standard_normal((s, p)))
        V, _ = np.linalg.qr(rng.standard_normal((k, p)))
        sv = np.logspace(0, rng.uniform(-6, -1), p)
        if rng.random() < 0.3:
            sv[rng.random(p) < 0.3] = 0.0
        M = ((U * sv) @ V.T).astype(np.float32)
        got = _gram_rank(xp.asarray(M), shape, xp)
        if got is not None:
            decided += 1
            assert got == svd_rank(np.linalg.svd(M.astype(np.float64), compute_uv=False), shape, np.float32)
    assert decided >= 195
    shape = (50000, 80)
    cut = rank_cut(1.0, shape, np.float32)  # 50000 · 2⁻²³: a float32 number
    M = np.zeros((80, 30), dtype=np.float32)
    M[rng.permutation(80)[:30], np.arange(30)] = np.r_[np.ones(29), cut]
    assert float(M.max()) == 1.0 and np.float32(cut) == cut
    assert _gram_rank(xp.asarray(M), shape, xp) is None
    M[M == np.float32(cut)] = np.float32(cut * 1.001)  # a thousandth above it: decided
    assert _gram_rank(xp.asarray(M), shape, xp) == 30
    M[M == np.float32(cut * 1.001)] = np.float32(cut)
    want = svd_rank(np.linalg.svd(M, compute_uv=False), shape)
    calls = []
    svd = xp.linalg.svd
    monkeypatch.setattr(xp.linalg, "svd", lambda *a, **k: calls.append(a[0].shape) or svd(*a, **k))
    # The SVD of M's R decides (on the host after the pivoted QR's SVD of its 1 × 1 R₂₂,
    # which leaves the value on the cut open too).
    assert matrix_rank(xp.asarray(M), shape, xp) == want and calls[-1] == (30, 30)
    assert calls == ([(1, 1)] if xp is np else []) + [(30, 30)], calls
    assert _gram_rank(xp.zeros((40, 7), dtype=np.float32), shape, xp) == 0
    # full_rank_inverse (low_rank's RC) has no Gram route: past the QR proof's reach it does
    # not invert R at all.
    import gpusketch.linalg._numerics as numerics
    from gpusketch.linalg._numerics import full_rank_inverse

    inverses = []
    real = numerics._triangular_inverse
    monkeypatch.setattr(numerics, "_triangular_inverse", lambda *a: inverses.append(1) or real(*a))
    R = xp.asarray(np.eye(80, dtype=np.float32))
    assert full_rank_inverse(R, (10**6, 80), xp) is None and inverses == []  # 2 · 80 · 10⁶ ε₃₂ > 1
    assert full_rank_inverse(R, (500, 80), xp) is not None and inverses == [1]


def test_pivoted_rank_is_the_svd_rules_where_it_decides():
    """``_pivoted_rank``: the rank rule from a column-pivoted QR's bounds, or None.  300
    matrices (tall and wide, float64 and float32) of r graded singular values and a tail
    placed at 0.3-3 times the cut or at zero, against the rule on the SVD: every decided
    answer must be the rule's (measured: 177 of 300 decided; without the lower bound on
    ``σ_r``, 44 of 258 decided were wrong).  A tail of one singular value 3x above the cut
    whose direction is spread over 36 columns has every pivot below the cut: only the
    bound ``||R₂₂||₂`` sees it (without that check the answer came out one short)."""
    from gpusketch.linalg._numerics import _pivoted_rank, rank_cut, svd_rank

    rng = np.random.default_rng(0)
    decided = 0
    for t in range(300):
        dtype = np.float64 if t % 3 else np.float32
        n = int(rng.integers(20, 200))
        d = int(rng.integers(5, min(n, 120)))
        r = int(rng.integers(1, d))
        U, _ = np.linalg.qr(rng.standard_normal((n, d)))
        V, _ = np.linalg.qr(rng.standard_normal((d, d)))
        sv = np.zeros(d)
        sv[:r] = np.logspace(0, -rng.uniform(0, 4), r)
        tail = int(rng.integers(0, d - r + 1))
        if t % 2:
            sv[r:r + tail] = rng.uniform(0.3, 3.0, tail) * (rng.random(tail) < 0.5) * rank_cut(1.0, (n, d), dtype)
        M = ((U * sv) @ V.T).astype(dtype)
        if t % 5 == 0:
            M = M.T
        got = _pivoted_rank(M, M.shape, np)
        if got is not None:
            decided += 1
            assert got == svd_rank(np.linalg.svd(M.astype(np.float64), compute_uv=False), M.shape, dtype), t
    assert decided >= 150, decided
    n, d, r, m = 120, 60, 24, 36
    cut = rank_cut(1.0, (n, d), np.float64)
    Q, _ = np.linalg.qr(rng.standard_normal((n, r + 1)))
    M = np.zeros((n, d))
    M[:, :r] = Q[:, :r] @ np.diag(np.linspace(1, 0.5, r)) @ np.linalg.qr(rng.standard_normal((r, r)))[0]
    for factor, want in ((3.0, None), (0.3, r), (0.05, r)):  # the rule: r + 1, r, r
        Mt = M.copy()
        Mt[:, r:] += factor * cut * np.outer(Q[:, r], np.ones(m) / np.sqrt(m))
        assert _pivoted_rank(Mt, (n, d), np) == want, factor
    assert _pivoted_rank(np.zeros((7, 3)), (7, 3), np) == 0
    assert _pivoted_rank(np.ones((7, 3)), (7, 3), np) == 1


def test_rank_takes_only_a_lower_bound_from_a_sketch_of_both_sides():
    """A first sketch ``S A Rᵀ`` (z × z, both of A's sides cut) whose rank is z/c or more
    certifies nothing, and the next size is 2z whatever that rank is: ``_sketch_rank``
    returns once a z/c-row sketch of it is proved of full rank, and its own rank is never
    taken.  Before, a 6000 × 3000 A of rank 2500 took the pivoted QR (else the SVD) of its
    2877 × 2877 first sketch for nothing (2-core CPU: 7.5 s in all, 5.4 s without)."""
    import sys

    rank_module = sys.modules["gpusketch.linalg.rank"]
    log = []
    numerical_rank, proves = rank_module.matrix_rank, rank_module.proves_full_rank

    def recording_rank(M, *args, **kwargs):
        log.append(("rank", M.shape))
        return numerical_rank(M, *args, **kwargs)

    def recording_proof(M, *args):
        log.append(("proof", M.shape))
        return proves(M, *args)

    rng = np.random.default_rng(7)
    for (n, d, r), want in (((200, 200, 180), [("rank", (64, 64)), ("proof", (87, 174)), ("rank", (200, 200))]),
                            ((300, 260, 250), [("rank", (64, 64)), ("proof", (117, 234)), ("rank", (300, 260))])):
        A = rng.standard_normal((n, r)) @ rng.standard_normal((r, d))
        log.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rank_module, "matrix_rank", recording_rank)
            mp.setattr(rank_module, "proves_full_rank", recording_proof)
            assert gs.rank(A, seed=3) == r
        assert log == want
    # The sketch to z/c rows has 8 nonzeros a column: with 3, a sketch to half of the
    # 174 rows left rows empty in some draws, and no proof could pass.
    M = rng.standard_normal((174, 150)) @ rng.standard_normal((150, 174))
    sketches = [rank_module._sketch_rows(M, 87, seed, np, rank_module._ENOUGH_NNZ) for seed in range(20)]
    assert all(proves(S, (200, 200), np)[0] for S in sketches)


def test_rank_grows_its_sketch_instead_of_factoring_a(xp, monkeypatch):
    # Where the first sketch cannot certify its rank (k1 >= z/c), z doubles until it can or
    # until k1 = min(n, d): every matrix whose rank is taken is a sketch of at most 4k
    # columns, never A's 6000 (the paper's fallback, an SVD of all of A).  Attempts draw
    # fresh sketches.  A dense copy of a sparse A too large for memory raises MemoryError naming it.
    import sys

    from gpusketch import _backend

    rank_module = sys.modules["gpusketch.linalg.rank"]
    shapes = []
    numerical_rank = rank_module.matrix_rank

    def recording(M, dims, xp_, **kwargs):
        shapes.append(M.shape)
        return numerical_rank(M, dims, xp_, **kwargs)

    proofs = []
    proves = rank_module.proves_full_rank
    monkeypatch.setattr(rank_module, "matrix_rank", recording)
    monkeypatch.setattr(rank_module, "proves_full_rank", lambda M, *a: proofs.append(M.shape) or proves(M, *a))
    rng = np.random.default_rng(32)
    dense = (rng.random((300, 6000)) < 0.002) * rng.standard_normal((300, 6000))
    dense[np.arange(300), rng.choice(6000, 300, replace=False)] = 1.0  # full row rank
    A = sparse_module(xp).csr_matrix(xp.asarray(dense))
    assert gs.rank(A, seed=33) == np.linalg.matrix_rank(dense) == 300
    # (The sketches smaller than A's 300 rows need only show a rank of z/c: _sketch_rank's
    # proofs on z/c-row sketches of them, not matrix_rank.)
    assert len(shapes + proofs) >= 2 and max(c for _, c in shapes + proofs) <= 4 * 300, (shapes, proofs)
    proofs.clear()
    low = rng.standard_normal((2000, 40)) @ rng.standard_normal((40, 3000))  # z0 ~ 1100 > 2 * 40
    shapes.clear()
    # Certified by the first sketch, as before, but its rank is taken as CKL-RE would, adaptively:
    # sketches of the 1100 x 1100 sketch of 64 and then 128 rows and columns, never that sketch itself.
    assert gs.rank(xp.asarray(low), seed=34) == 40 and shapes == [(64, 64), (128, 128)] and proofs == []
    full = sparse_module(xp).csr_matrix(xp.asarray(rng.standard_normal((50, 50))))  # z >= 50: no sketch
    monkeypatch.setattr(_backend, "free_bytes", lambda xp_: 10_000)
    with pytest.raises(MemoryError, match=r"rank\(A\): a dense copy of the sparse 50 x 50 A needs"):
        gs.rank(full, seed=35)


@pytest.mark.parametrize("n", [500, 9000])  # column tiles, and columns in row blocks (n >= 8192)
@pytest.mark.parametrize("order", ["C", "F"])
def test_csc_times_dense_routes_equal_the_product(n, order):
    """rank's sketches of a dense M, ``S @ M`` and ``(S @ M.T).T``: a column-major operand goes
    by columns, not through SciPy's copy to row-major; each route gives the product."""
    import scipy.sparse

    from gpusketch import _kernels

    rng = np.random.default_rng(n)
    S = scipy.sparse.random(70, n, density=3 / 70, format="csc", random_state=1)
    X = np.asarray(rng.standard_normal((n, 37)), order=order)
    got = _kernels.call("csc_times_dense", np, S, X)
    np.testing.assert_allclose(got, S.toarray() @ X, rtol=1e-12, atol=1e-12)
    assert got.shape == (70, 37)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
@pytest.mark.parametrize("threads", [1, 3])
def test_csc_times_sparse_equals_the_product_in_the_operands_format(monkeypatch, fmt, threads):
    """rank's sketches of a sparse M: S goes to M's format (SciPy would copy M to S's), and
    threads split S's rows (CSR M) or M's columns (CSC M); the product, in M's format."""
    import scipy.sparse

    from gpusketch import _kernels

    monkeypatch.setattr(_kernels, "_cpu_threads", lambda work: threads)
    S = scipy.sparse.random(70, 400, density=3 / 70, format="csc", random_state=1)
    M = scipy.sparse.random(400, 37, density=0.2, format=fmt, random_state=2)
    before = M.toarray()
    got = _kernels.call("csc_times_sparse", np, S, M)
    assert scipy.sparse.issparse(got) and got.format == ("csr" if fmt == "coo" else fmt)
    np.testing.assert_allclose(got.toarray(), S.toarray() @ before, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(M.toarray(), before)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("threads", [1, 3])
def test_sparse_product_equals_the_product(monkeypatch, fmt, threads):
    """lstsq's products with a sparse A, ``A @ X`` and ``A.T @ X``: a CSR A in row blocks of
    equal entries among threads (views of A's arrays, A left as it was), vectors and matrices."""
    import scipy.sparse

    from gpusketch import _kernels

    monkeypatch.setattr(_kernels, "_cpu_threads", lambda work: threads)
    monkeypatch.setattr(_kernels, "_SPARSE_PRODUCT_MIN_WORK", 0)
    split = []
    monkeypatch.setattr(_kernels, "_csr_row_views", lambda *a, _f=_kernels._csr_row_views: split.append(1) or _f(*a))
    rng = np.random.default_rng(5)
    A = scipy.sparse.random(500, 30, density=0.2, format="csr", random_state=3)
    A = (scipy.sparse.diags((np.arange(500) % 9 != 3).astype(float)) @ A).asformat(fmt)  # empty rows
    A.data[:50] = 0.0  # stored zeros
    dense = A.toarray()
    before = (A.data.copy(), A.indices.copy(), A.indptr.copy())
    for X, T in ((rng.standard_normal(30), False), (rng.standard_normal((30, 4)), False),
                 (rng.standard_normal(500), True), (rng.standard_normal((500, 3)), True)):
        got = _kernels.call("sparse_product", np, A, X, transpose=T)
        np.testing.assert_allclose(got, (dense.T if T else dense) @ X, rtol=1e-12, atol=1e-12)
        assert isinstance(got, np.ndarray) and got.shape == ((30 if T else 500),) + X.shape[1:]
    for got, want in zip((A.data, A.indices, A.indptr), before):
        np.testing.assert_array_equal(got, want)
    assert bool(split) == (fmt == "csr" and threads == 3)
    if fmt == "csr":  # consecutive row blocks of near-equal entries, views of A's arrays
        for transpose in (False, True):
            views = _kernels._csr_row_views(A, 3, transpose)
            assert [(a, b) for a, b, _ in views] == [(0, 167), (167, 338), (338, 500)]
            assert all(abs(V.nnz - A.nnz / 3) <= np.diff(A.indptr).max() for _, _, V in views)
            assert all(np.shares_memory(V.data, A.data) for _, _, V in views)


def test_lstsq_on_csr_with_threaded_products_matches_dense(monkeypatch):
    """LSMR's products with a CSR A split among threads (forced here at a small size) give the
    dense A's solution, for one column of b and for several in lockstep."""
    import scipy.sparse

    from gpusketch import _kernels

    monkeypatch.setattr(_kernels, "_cpu_threads", lambda work: 3)
    monkeypatch.setattr(_kernels, "_SPARSE_PRODUCT_MIN_WORK", 0)
    split = []
    monkeypatch.setattr(_kernels, "_csr_row_views", lambda *a, _f=_kernels._csr_row_views: split.append(1) or _f(*a))
    rng = np.random.default_rng(8)
    A = scipy.sparse.random(3000, 25, density=0.3, format="csr", random_state=4)
    B = rng.standard_normal((3000, 3))
    for b in (B[:, 0], B):
        got = gs.lstsq(A, b, seed=2)
        want = np.linalg.lstsq(A.toarray(), b, rcond=None)[0]
        np.testing.assert_allclose(got.x, want, rtol=1e-6, atol=1e-8)  # LSMR's tol is on Aᵀr
        opt = np.linalg.norm(A.toarray() @ want - b, axis=0)
        np.testing.assert_allclose(got.cost, opt, rtol=1e-12)
    assert split


def test_independent_rows(xp):
    rng = np.random.default_rng(24)
    A = rng.standard_normal((500, 7)) @ rng.standard_normal((7, 60))
    A = np.vstack([A, A[:50]])  # duplicated rows
    rows = to_numpy(gs.independent_rows(xp.asarray(A), seed=25))
    assert len(rows) == 7 and len(set(rows.tolist())) == 7
    assert np.linalg.matrix_rank(A[rows]) == 7
    assert gs.independent_rows(np.zeros((10, 4))).size == 0
    R1 = np.outer(np.r_[0.0, 2.0, 0.0, -1.0], np.arange(1.0, 6.0))  # rank 1, rows 0 and 2 zero
    assert to_numpy(gs.independent_rows(xp.asarray(R1), seed=1)).tolist() in ([1], [3])


def test_independent_rows_factors_the_sketched_rows_not_rows_of_a(xp, monkeypatch):
    # Theorem 7.12: independent rows of B = A Rᵀ (2k + 10 columns) are independent rows of A,
    # so the factorisation sees s × k (B's sampled rows times a Gaussian), never s × d (d = 3000
    # here; at 200000 × 200000 the QR of A's rows was 27 of 28 s), and it is an LU, not the
    # pivoted QR of the rows (97 of 104 s at 10⁶ × 2000, s = 60800).
    import scipy.linalg

    lu_shapes, qr_shapes = [], []
    lu_factor, qr = scipy.linalg.lu_factor, scipy.linalg.qr

    def recording_lu(M, *args, **kwargs):
        lu_shapes.append(M.shape)
        return lu_factor(M, *args, **kwargs)

    def recording_qr(M, *args, **kwargs):
        qr_shapes.append(M.shape)
        return qr(M, *args, **kwargs)

    monkeypatch.setattr(scipy.linalg, "lu_factor", recording_lu)
    monkeypatch.setattr(scipy.linalg, "qr", recording_qr)
    rng = np.random.default_rng(28)
    A = rng.standard_normal((2000, 5)) @ rng.standard_normal((5, 3000))
    rows = to_numpy(gs.independent_rows(xp.asarray(A), seed=29))
    assert len(rows) == 5 and np.linalg.matrix_rank(A[rows]) == 5
    # (A pivoted QR of rank's 64 × 64 sketch decides that sketch's rank rule: never rows of A.)
    assert lu_shapes and all(shape[1] == 5 for shape in lu_shapes), lu_shapes
    assert all(max(shape) <= 64 for shape in qr_shapes), qr_shapes


def test_independent_rows_checks_the_rows_it_picks(monkeypatch):
    # A pick that fails the rank rule is never returned: with the LU's row interchanges
    # replaced by none (rows 0..k-1, here all copies of one row), the check refuses every
    # sample and the pivoted QR of all rows answers.
    import sys

    import scipy.linalg

    rank_module = sys.modules["gpusketch.linalg.rank"]
    lu_factor = scipy.linalg.lu_factor

    def no_pivoting(M, *args, **kwargs):
        lu, _ = lu_factor(M, *args, **kwargs)
        return lu, np.arange(min(M.shape))

    monkeypatch.setattr(scipy.linalg, "lu_factor", no_pivoting)
    monkeypatch.setattr(rank_module, "_first_rows", lambda *a: None)  # all candidates at once
    rng = np.random.default_rng(30)
    A = rng.standard_normal((40, 4)) @ rng.standard_normal((4, 50))
    A[:10] = A[0]
    picks = []
    pivot_rows = rank_module._pivot_rows
    monkeypatch.setattr(rank_module, "_pivot_rows", lambda *a: picks.append(pivot_rows(*a)) or picks[-1])
    rows = gs.independent_rows(A, seed=31)
    assert picks == [None] and len(rows) == 4 and np.linalg.matrix_rank(A[rows]) == 4


@pytest.mark.parametrize("n", [600, 5000])  # every row a candidate (s >= n), and a leverage sample
def test_independent_rows_factors_a_subset_first(xp, monkeypatch, n):
    """``_pivot_rows`` factors 2k candidate rows first and keeps their pivot rows where a QR
    proves them independent; otherwise it factors all candidates.  A has 35 rows that alone
    hold a direction each (leverage 1) and n - 35 rows in a 5-dimensional subspace.  Among
    a leverage sample the 2k rows of largest keep probability hold all 35, and one LU of 2k
    rows answers; 2k rows drawn at random from all n miss most of them, and all n are factored."""
    import sys

    rank_module = sys.modules["gpusketch.linalg.rank"]
    rng = np.random.default_rng(n)
    k = 40
    A = np.zeros((n, 60))
    A[:35, 5:40] = np.diag(rng.uniform(1, 2, 35))
    A[35:, :5] = rng.standard_normal((n - 35, 5))
    A = A[rng.permutation(n)]
    factored = []  # rows in each LU of candidate rows
    lu_rows = rank_module._lu_rows
    monkeypatch.setattr(rank_module, "_lu_rows", lambda sub, *a: factored.append(sub.shape[0]) or lu_rows(sub, *a))
    rows = to_numpy(gs.independent_rows(xp.asarray(A), seed=7))
    assert len(rows) == k and np.linalg.matrix_rank(A[rows]) == k
    assert factored == ([2 * k, n] if n == 600 else [2 * k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pivot_rows_checks_the_picked_rows_by_their_own_rank_rule(xp, dtype):
    """The k rows ``_pivot_rows`` picks are checked by the rule of the k × d matrix they form
    (NumPy's ``matrix_rank(A[rows])``), not at A's n rows: with n = 10⁶ a float32 cut of
    ``2 n ε₃₂ σ₁`` refused any pick of condition above 4, and the call fell back to a
    pivoted QR of all of A.  Here every row of a 120 × 40 matrix of condition 300 is a
    candidate."""
    from gpusketch.linalg.rank import _pivot_rows

    rng = np.random.default_rng(44)
    U, _ = np.linalg.qr(rng.standard_normal((120, 40)))
    V, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    sub = ((U * np.geomspace(1, 1 / 300, 40)) @ V.T).astype(dtype)
    rows = _pivot_rows(xp.asarray(sub), 40, (10**6, 40), 3, xp)
    assert rows is not None and len(set(rows.tolist())) == 40
    assert np.linalg.matrix_rank(sub[np.asarray(rows)]) == 40


def test_independent_rows_proves_a_float32_first_try_through_the_gram(monkeypatch):
    # float32 with k · n >= 4.2e6: the QR proof needs 2 k n ε32 < 1, which fails, and the first
    # 2k rows were then not tried.  Their float64 Gram decides instead (``_gram_rank``):
    # one LU of 2k rows answers, and no SVD is taken.
    import sys

    rank_module = sys.modules["gpusketch.linalg.rank"]
    A = np.random.default_rng(8).standard_normal((120000, 40)).astype(np.float32)
    factored = []
    lu_rows = rank_module._lu_rows
    monkeypatch.setattr(rank_module, "_lu_rows", lambda sub, *a: factored.append(sub.shape[0]) or lu_rows(sub, *a))
    svds = []
    svd = np.linalg.svd
    monkeypatch.setattr(np.linalg, "svd", lambda *a, **k: svds.append(1) or svd(*a, **k))
    rows = gs.independent_rows(A, seed=9)
    assert factored == [80] and svds == []
    assert len(rows) == 40 and np.linalg.matrix_rank(A[rows].astype(np.float64)) == 40


@pytest.mark.parametrize("s", [20, 400])  # at most 2k + 10 rows (no sketch), and more (sketched)
def test_independent_columns_of_the_candidate_rows(xp, rng, s):
    """``_pivot_rows`` cuts the s × k' candidate rows of rank k to k independent columns
    before its LU (it had brought them to k columns by an s × k' × k Gaussian product).
    The first k columns here are dependent, so any choice by position fails."""
    import sys

    rank_module = sys.modules["gpusketch.linalg.rank"]
    k = 5
    C = rng.standard_normal((s, k)) @ rng.standard_normal((k, 12))
    C[:, 1] = 2 * C[:, 0]
    C[:, 2:4] = C[:, 0:2] - C[:, 4:6]
    for sub in (xp.asarray(C), sparse_module(xp).csr_matrix(xp.asarray(C))):
        J = rank_module._independent_columns(sub, k, 3, xp)
        assert len(set(J.tolist())) == k and np.linalg.matrix_rank(C[:, J]) == k
        rows = rank_module._pivot_rows(sub, k, C.shape, 4, xp)
        assert np.linalg.matrix_rank(C[rows]) == k


def test_independent_rows_falls_back_to_a_pivoted_qr_of_all_rows(xp, monkeypatch):
    # Four samples that miss the row space (here: every sample is row 0 alone) end in a pivoted
    # QR of all rows, which must still give rank(A) independent rows.
    import sys

    rank_module = sys.modules["gpusketch.linalg.rank"]  # the package's `rank` is the function
    draws = []

    def row_zero_only(B, s, seed=None):
        draws.append(s)
        return gs.Sampling([0], B.shape[0])

    monkeypatch.setattr(rank_module, "leverage_sample", row_zero_only)
    rng = np.random.default_rng(26)
    A = rng.standard_normal((1000, 5)) @ rng.standard_normal((5, 40))  # n > 8 × the first s = 52
    A[1:10] = A[0]  # the first rows are no answer
    rows = to_numpy(gs.independent_rows(xp.asarray(A), seed=27))
    assert len(draws) == 4 and draws[1:] == [2 * d for d in draws[:-1]]  # s doubled each try
    assert len(rows) == 5 and np.linalg.matrix_rank(A[rows]) == 5


def decaying(n, d, decay, seed):
    r = np.random.default_rng(seed)
    p = min(n, d)
    U, _ = np.linalg.qr(r.standard_normal((n, p)))
    V, _ = np.linalg.qr(r.standard_normal((d, p)))
    sv = decay ** np.arange(p)
    return (U * sv) @ V.T, sv


@pytest.mark.parametrize("right", ["sketch", "exact"])
@pytest.mark.parametrize("eps", [0.5, 0.1])
def test_low_rank_within_one_plus_eps(xp, right, eps):
    # Measured on CPU: ratio 1.0015-1.027 over these cases; the bound is the theorem's 1 + eps.
    A, sv = decaying(2000, 500, 0.9, 30)
    k = 10
    res = gs.low_rank(xp.asarray(A), k, eps=eps, right=right, seed=31)
    V, X = to_numpy(res.V), to_numpy(res.X)
    assert V.shape == (2000, k) and X.shape == (k, 500)
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-10)
    opt = np.sqrt((sv[k:] ** 2).sum())
    err = np.linalg.norm(A - V @ X)
    assert err <= (1 + eps) * opt
    if right == "exact":  # the optimal X for V, and no row sample
        np.testing.assert_allclose(X, V.T @ A, rtol=1e-10, atol=1e-12)
        assert "right_rows" not in res.info
    else:
        assert 0 < res.info["right_rows"] < 2000
    # A random k-dimensional subspace is far worse: the check can fail.
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((2000, k)))
    assert np.linalg.norm(A - Q @ (Q.T @ A)) > 2 * opt


@pytest.mark.parametrize("k", [3, 10])
def test_low_rank_steps_1_2_give_a_constant_factor_subspace(k):
    # Lemma 7.16's O(k)-column subspace before residual sampling: measured at most
    # 0.95 (k = 3) and 0.76 (k = 10) of opt_k on the decaying matrix, 1.17 and 1.09
    # on low rank + noise (10 seeds).  Choosing the 2k columns of *smallest* leverage
    # gave 1.1-2.9 and 3.6-6.0, and passed every end-to-end test: the residual sample
    # and the affine solve made up for it.
    from gpusketch.linalg.low_rank import _constant_factor_subspace

    rng = np.random.default_rng(5)
    noisy = rng.standard_normal((2000, 3)) @ rng.standard_normal((3, 500)) + 0.3 * rng.standard_normal((2000, 500))
    for A in (decaying(2000, 500, 0.9, 30)[0], noisy):
        opt = np.sqrt((np.linalg.svd(A, compute_uv=False)[k:] ** 2).sum())
        for seed in range(5):
            U = _constant_factor_subspace(A, k, seed, np)[0]
            assert U.shape == (2000, 2 * k)
            assert np.linalg.norm(A - U @ (U.T @ A)) <= 1.5 * opt


def test_low_rank_residual_sampling_draws_about_4k_over_eps_columns(xp):
    # Lemma 7.15: columns drawn with q_j = min(1, s·r_j / Σr) for the residual column norms
    # r_j = ||a_j||² − ||Uᵀa_j||², s = ⌈4k/ε⌉ = 24 here; E[count] = Σ q_j <= s (measured
    # 24-28 over seeds 0-5).  The squared column norms are checked directly, dense and
    # sparse: computed from ones instead (A / A), the draw became uniform and every
    # (1 + ε) test still passed on its well-behaved matrices.
    from gpusketch.linalg.low_rank import _col_sq_norms

    A, _ = decaying(600, 400, 0.8, 1)
    counts = [gs.low_rank(xp.asarray(A), 3, eps=0.5, seed=seed).info["residual_columns"] for seed in range(6)]
    assert all(12 <= c <= 40 for c in counts), counts
    B = np.where(np.abs(A) > 0.01, A, 0.0)
    for M in (xp.asarray(B), sparse_module(xp).csr_matrix(xp.asarray(B))):
        np.testing.assert_allclose(to_numpy(_col_sq_norms(M, xp)), (B * B).sum(axis=0), rtol=1e-12)


def test_low_rank_draws_no_column_on_round_off(xp):
    # With d <= 2k the subset Ω takes every column, so U spans A's columns and every residual
    # ||a_j||² − ||Uᵀa_j||² is round-off.  Sampling by it drew 1-3 redundant columns, which ones
    # depending on the layout (C, F, float32, CSR): the same seed gave costs 385 and 380.
    A = np.round(np.random.default_rng(0).standard_normal((3000, 6)) * 4)
    results = [gs.low_rank(M, 3, seed=1) for M in
               (xp.asarray(A), xp.asarray(np.asfortranarray(A)), sparse_module(xp).csr_matrix(xp.asarray(A)))]
    assert [r.info["residual_columns"] for r in results] == [0, 0, 0]
    costs = [np.linalg.norm(A - to_numpy(r.V) @ to_numpy(r.X)) for r in results]
    np.testing.assert_allclose(costs, costs[0], rtol=1e-10)


@pytest.mark.parametrize("k", [10, 19])
def test_low_rank_in_span_of_u_is_solved_exactly(xp, k):
    """A of 20 columns with one nonzero per column (singular values in [1, 2)): with k >= 10 the
    2k columns of U span A, no residual column is drawn, and V comes from the exact UᵀA.
    The affine sketch (90 rows) had chosen among A's close directions with a squared error
    up to 1.15 (k = 10) and 1.60 (k = 19) times the optimum over these 20 seeds."""
    worst = 0.0
    for seed in range(20):
        A, _, _ = one_entry_per_column(seed=seed)
        res = gs.low_rank(xp.asarray(A), k, seed=seed)
        assert res.info["residual_columns"] == 0 and res.info["affine_rows"] == 0
        V, X = to_numpy(res.V), to_numpy(res.X)
        np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-12)
        s = np.linalg.svd(A, compute_uv=False)
        worst = max(worst, np.linalg.norm(A - V @ X) ** 2 / (s[k:] ** 2).sum())
    assert worst <= 1 + 1e-9, worst


def test_low_rank_affine_solve_without_the_svd_where_full_rank_is_proved(xp, monkeypatch):
    """Step 4's T1 M = QC RC: where RC⁻¹'s norm proves full rank, X = RC⁻¹ Uk without an SVD
    of RC.  The approximation VX must be the SVD route's (forced by withholding the proof);
    A with two equal columns that are both drawn gives RC of rank c − 1: no proof, the SVD
    route cuts the direction, as before."""
    import sys

    lr = sys.modules["gpusketch.linalg.low_rank"]
    A = decaying(800, 300, 0.8, 3)[0] + 1e-3 * np.random.default_rng(1).standard_normal((800, 300))  # κ(RC) ≈ 190
    dup = A.copy()
    dup[:, 1:] = dup[:, :-1]  # column 1 equals column 0: drawn together, RC is singular
    for M, proved in ((A, True), (dup, False)):
        seen, fast, slow = _with_and_without(monkeypatch, lr, "full_rank_inverse",
                                             lambda: gs.low_rank(xp.asarray(M), 6, eps=0.1, seed=2))
        assert seen == [proved]
        approx = [to_numpy(r.V) @ to_numpy(r.X) for r in (fast, slow)]
        np.testing.assert_allclose(approx[0], approx[1], atol=1e-9 * np.abs(M).max())


def _with_and_without(monkeypatch, module, name, call):
    """``(seen, with_route, without)``: ``call()`` with ``module.name`` recording whether it
    answered (not None) in ``seen``, then again with ``module.name`` answering None."""
    seen = []
    real = getattr(module, name)

    def recording(*args):
        out = real(*args)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(module, name, recording)
    with_route = call()
    monkeypatch.setattr(module, name, lambda *args: None)
    return seen, with_route, call()


def test_gram_svd_is_the_float32_svd_on_the_kept_directions(xp):
    """``gram_svd``: a float32 M's SVD from its float64 Gram, on the directions the float32
    rank rule keeps (the others get zero columns of W).  Against the float64 SVD of the
    same matrix: σ to 1e-6, W orthonormal, ``W Σ Zᵀ`` the projection of M on the kept
    right singular space.  None for float64 or wide M, and for a σ on the cut."""
    from gpusketch.linalg._numerics import gram_svd, rank_cut, svd_rank

    rng = np.random.default_rng(44)
    shape = (50000, 60)
    cut = rank_cut(1.0, shape, np.float32)
    U, _ = np.linalg.qr(rng.standard_normal((90, 60)))
    V, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    sv = np.r_[np.logspace(0, -2, 50), cut * np.logspace(-1, -3, 7), np.zeros(3)]  # 50 kept, 10 cut
    M = ((U * sv) @ V.T).astype(np.float32)
    W, s, Zt = (to_numpy(a) for a in gram_svd(xp.asarray(M), shape, xp))
    M64 = M.astype(np.float64)
    Wr, sr, Ztr = np.linalg.svd(M64, full_matrices=False)
    r = svd_rank(sr, shape, np.float32)
    assert r == 50 and svd_rank(s, shape) == r
    np.testing.assert_allclose(s[:r], sr[:r], rtol=1e-6)
    np.testing.assert_allclose(W[:, :r].T @ W[:, :r], np.eye(r), atol=1e-5)
    assert not W[:, r:].any()
    P = Ztr[:r].T @ Ztr[:r]
    np.testing.assert_allclose((W * s) @ Zt, M64 @ P, atol=1e-5)
    assert gram_svd(xp.asarray(M64), shape, xp) is None
    assert gram_svd(xp.asarray(M.T.copy()), shape, xp) is None
    on_cut = ((U * np.r_[np.ones(59), cut]) @ V.T).astype(np.float32)
    assert gram_svd(xp.asarray(on_cut), shape, xp) is None


def test_low_rank_float32_affine_solve_through_the_gram(xp, monkeypatch):
    """float32 A past the QR proof's reach: RC's SVD comes from the float64 Gram
    (``gram_svd``); VX must equal the float32 SVD route's to float32 round-off."""
    import sys

    lr = sys.modules["gpusketch.linalg.low_rank"]
    rng = np.random.default_rng(45)
    A = (rng.standard_normal((3000, 20)) @ rng.standard_normal((20, 400))
         + 0.1 * rng.standard_normal((3000, 400))).astype(np.float32)
    seen, gram, plain = _with_and_without(monkeypatch, lr, "gram_svd",
                                          lambda: gs.low_rank(xp.asarray(A), 10, eps=0.5, seed=3))
    assert seen == [True]
    approx = [to_numpy(r.V) @ to_numpy(r.X) for r in (gram, plain)]
    np.testing.assert_allclose(approx[0], approx[1], atol=2e-4 * np.abs(A).max())


@pytest.mark.parametrize("shape", [(5, 5), (3, 50), (12, 40), (40, 12)])
def test_low_rank_on_matrices_shorter_than_the_affine_sketch(xp, shape):
    """With n < 4c + 10 the affine sketch T1 keeps all n rows, and for n < c its QR factor
    RC is wide (n × c): no inverse can prove it of full rank, and the SVD route solves.
    Asking RC⁻¹ of the wide RC raised LAPACK's shape error on every such call; the answers
    here are optimal to 1e-3 (measured at most 1.001x over 10 seeds, all k < min(n, d))."""
    n, d = shape
    for k in range(1, min(n, d)):
        for seed in range(3):
            A = np.random.default_rng(seed).standard_normal((n, d)) * np.logspace(0, -2, d)
            res = gs.low_rank(xp.asarray(A), k, seed=seed)
            V = to_numpy(res.V)
            np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-12)
            s = np.linalg.svd(A, compute_uv=False)
            assert np.linalg.norm(A - V @ to_numpy(res.X)) <= 1.01 * np.sqrt((s[k:] ** 2).sum())


def test_low_rank_keeps_a_sparse_column_sketch_sparse(xp):
    # Step 1's A Tᵀ of a sparse A: the operator's right product is a dense n × t array (5 GB at
    # 400000 × 2000, t = 1600); the hashed column merge keeps at most nnz(A) entries.
    import scipy.sparse

    from gpusketch._backend import is_sparse
    from gpusketch.linalg.low_rank import _hashed_columns

    A = scipy.sparse.random(300, 50, density=0.1, format="csr", random_state=1)
    T = gs.CountSketch(7, 50, seed=3)
    AT = _hashed_columns(sparse_module(xp).csr_matrix(xp.asarray(A.toarray())), T, xp)
    assert is_sparse(AT) and AT.nnz <= A.nnz
    np.testing.assert_allclose(to_numpy(AT.toarray()), A.toarray() @ T.todense().T, rtol=1e-14)


def test_low_rank_is_scale_invariant(xp):
    # M = [U  A_cols] is solved through its sketch T1 M only; A's columns enter it at unit
    # norm.  Taken raw, at |A| ~ 1e20 the rank rule on T1 M cut every direction of U (norm 1)
    # and the cost rose 1.2-2000-fold on the sweep's cases; the same seed must give the same
    # subspace at any scale.
    A, sv = decaying(400, 60, 0.8, 7)
    k = 12
    costs = []
    for c in (1.0, 1e20, 1e-20):
        res = gs.low_rank(xp.asarray(A * c), k, eps=0.3, right="exact", seed=8)
        costs.append(np.linalg.norm(A * c - to_numpy(res.V) @ to_numpy(res.X)) / c)
    np.testing.assert_allclose(costs, costs[0], rtol=1e-6)
    assert costs[0] <= 1.3 * np.sqrt((sv[k:] ** 2).sum())


def test_low_rank_rank_one_every_seed():
    # k = 1 used to sample 6 rows for X at eps = 0.5: some seeds kept none
    # (ValueError), others returned X with a cost ratio up to 1.6.
    A, sv = decaying(2000, 500, 0.9, 30)
    opt = np.sqrt((sv[1:] ** 2).sum())
    ratios = []
    for seed in range(30):
        res = gs.low_rank(A, 1, eps=0.5, seed=seed)
        ratios.append(np.linalg.norm(A - res.V @ res.X) / opt)
    assert max(ratios) <= 1.5


def test_low_rank_right_factor_with_planted_heavy_rows():
    """Two heavy rows hold the rank-2 part, 0.01-noise elsewhere.  Sampled by V's leverage
    alone, X came from the two heavy rows plus one light row at a weight of 8·10⁴ to
    6·10⁵: over these 40 seeds the cost ratio exceeded 1.2 three times, up to 4.6.
    Half leverage, half uniform: at most 1.077."""
    ratios = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        A = 0.01 * rng.standard_normal((2000, 150))
        A[rng.choice(2000, 2, replace=False)] += 3 * rng.standard_normal((2, 150))
        opt = np.sqrt((np.linalg.svd(A, compute_uv=False)[2:] ** 2).sum())
        res = gs.low_rank(A, 2, eps=0.5, seed=seed)
        ratios.append(np.linalg.norm(A - res.V @ res.X) / opt)
    assert max(ratios) <= 1.15, max(ratios)


def test_low_rank_sparse_and_wide(xp):
    A, sv = decaying(600, 900, 0.85, 32)
    A[np.abs(A) < 1e-4] = 0.0
    As = sparse_module(xp).csr_matrix(xp.asarray(A))
    res = gs.low_rank(As, 8, eps=0.2, seed=33)
    s = np.linalg.svd(A, compute_uv=False)
    assert np.linalg.norm(A - to_numpy(res.V) @ to_numpy(res.X)) <= 1.2 * np.sqrt((s[8:] ** 2).sum())


@pytest.mark.parametrize(
    "kwargs,word",
    [({"k": 0}, "k"), ({"k": 300}, "k"), ({"k": 3, "eps": 0}, "eps"), ({"k": 3, "eps": 1.5}, "eps"),
     ({"k": 3, "right": "svd"}, "right")],
)
def test_low_rank_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        gs.low_rank(np.ones((300, 40)) + np.eye(300, 40), **kwargs)


@pytest.mark.parametrize("cond", [1e2, 1e6, 1e12])
def test_orthonormalize_is_a_qr_at_every_conditioning(xp, rng, cond):
    """Cholesky QR twice where it is safe, Householder beyond: Q orthonormal and QR = Y either way."""
    from gpusketch.linalg._numerics import orthonormalize

    n, l = 3000, 40
    U, _ = np.linalg.qr(rng.standard_normal((n, l)))
    V, _ = np.linalg.qr(rng.standard_normal((l, l)))
    Y = (U * np.logspace(0, -np.log10(cond), l)) @ V.T
    Q, R = orthonormalize(xp.asarray(Y), xp)
    Q, R = to_numpy(Q), to_numpy(R)
    assert Q.shape == (n, l) and R.shape == (l, l)
    assert (np.diagonal(R) > 0).all()  # the unique QR, whichever route produced it
    assert np.abs(Q.T @ Q - np.eye(l)).max() <= 1e-13
    assert np.linalg.norm(Q @ R - Y) <= 1e-13 * np.linalg.norm(Y)


def test_orthonormalize_rank_deficient(xp, rng):
    from gpusketch.linalg._numerics import orthonormalize

    Y = rng.standard_normal((500, 5)) @ rng.standard_normal((5, 12))  # rank 5 of 12
    Q, R = orthonormalize(xp.asarray(Y), xp)
    Q, R = to_numpy(Q), to_numpy(R)
    assert np.abs(Q.T @ Q - np.eye(12)).max() <= 1e-12
    assert np.linalg.norm(Q @ R - Y) <= 1e-12 * np.linalg.norm(Y)


def test_orthonormalize_float32_keeps_its_dtype(xp, rng):
    from gpusketch.linalg._numerics import orthonormalize

    n, l = 3000, 40
    U, _ = np.linalg.qr(rng.standard_normal((n, l)))
    V, _ = np.linalg.qr(rng.standard_normal((l, l)))
    # κ = 1e5 in a rotated basis: beyond float32 Cholesky QR (column scales alone would leave
    # the Gram diagonal, which a float32 Cholesky factors accurately)
    Y = ((U * np.logspace(0, -5, l)) @ V.T).astype(np.float32)
    Q, R = orthonormalize(xp.asarray(Y), xp)
    assert Q.dtype == R.dtype == np.float32
    Q, R = to_numpy(Q).astype(np.float64), to_numpy(R).astype(np.float64)
    assert np.abs(Q.T @ Q - np.eye(l)).max() <= 1e-6
    assert np.linalg.norm(Q @ R - Y) <= 1e-6 * np.linalg.norm(Y)


@pytest.mark.parametrize("shape,dtype", [((300, 40), np.float64), ((70, 40), np.float64), ((70, 40), np.float32)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_householder_q_applied_by_its_reflectors_is_the_formed_q(rng, shape, dtype, order):
    """``cholesky_qr_factors(want_q="apply")`` on the host's Householder route keeps Q as
    LAPACK's reflectors (``HouseholderQ``) and ``apply_qt`` takes ``Qᵀv`` with them: equal
    to the formed Q's (diag(R) >= 0 both ways), for one and several columns; the caller's
    Y is left as it was.  ``_householder_r_qtb`` (the direct solve) gives the same R, the
    same ``||Qᵀb||`` and the same least-squares residual."""
    import scipy.linalg

    from gpusketch.linalg._numerics import (
        HouseholderQ,
        _householder_r_qtb,
        _householder_reflectors,
        apply_qt,
        cholesky_qr_factors,
    )

    n, l = shape  # κ = 1e10: CholeskyQR2's test fails; n < 2l: Householder at once
    U, _ = np.linalg.qr(rng.standard_normal((n, l)))
    V, _ = np.linalg.qr(rng.standard_normal((l, l)))
    kappa = 1e10 if dtype == np.float64 else 1e3
    Y = np.array(((U * np.logspace(0, -np.log10(kappa), l)) @ V.T).astype(dtype), order=order)
    before = Y.copy()
    Q1, R, Rinv2 = cholesky_qr_factors(Y, np, want_q="apply")
    Qf, Rf, _ = cholesky_qr_factors(Y, np, want_q=True)
    assert Rinv2 is None and not isinstance(Qf, HouseholderQ)
    # (float32 reflectors applied by ormqr lose digits against the formed Q: float32 keeps Q)
    assert isinstance(Q1, HouseholderQ) == (dtype == np.float64)
    if dtype == np.float32:
        Q1 = _householder_reflectors(Y)[0]
    assert np.array_equal(Y, before) and Y.flags.f_contiguous == (order == "F")
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(R, Rf, atol=tol * np.abs(Rf).max())
    np.testing.assert_allclose(Q1.q(np.eye(l, dtype=dtype)), Qf, atol=tol)  # Q itself, as ormqr forms it
    w = rng.standard_normal(l).astype(dtype)
    np.testing.assert_allclose(Q1.q(w), Qf @ w, atol=tol * 10)
    for v in (rng.standard_normal(n).astype(dtype), rng.standard_normal((n, 3)).astype(dtype)):
        got = apply_qt(Q1, v)
        assert got.shape == (l,) + v.shape[1:] and got.dtype == dtype
        np.testing.assert_allclose(got, Qf.T @ v, atol=tol * np.abs(v).max() * 10)
        R2, z = _householder_r_qtb(Y, v, np)  # (in float64; a TSQR of [Y v] on the host)
        assert R2.dtype == z.dtype == np.float64
        np.testing.assert_allclose(np.abs(R2), np.abs(Rf), atol=tol * np.abs(Rf).max())
        # Two backward-stable QRs (this TSQR of [Y v], LAPACK's of Y) agree on Qᵀv, ||Qᵀv||
        # and the residual of x = R⁻¹z to about u κ(Y) (measured: 2e-7, 3e-10 and 1.4e-9
        # relative at κ = 1e10), not to u.
        bound = 10 * np.finfo(dtype).eps * kappa
        Y64 = Y.astype(np.float64)
        residual = np.linalg.norm(v - Y64 @ scipy.linalg.solve_triangular(R2, z), axis=0)
        np.testing.assert_allclose(residual, np.linalg.norm(v - Qf @ (Qf.T @ v), axis=0), rtol=bound)
        np.testing.assert_allclose(np.linalg.norm(z, axis=0), np.linalg.norm(Qf.T @ v, axis=0), rtol=bound)
        signs = np.sign(np.diagonal(R2))[:, None] if v.ndim == 2 else np.sign(np.diagonal(R2))
        np.testing.assert_allclose(z * signs, Qf.T @ v, atol=bound * np.abs(v).max())
    assert np.array_equal(Y, before)


@pytest.mark.parametrize("n,kappa", [(50, 1e9), (51, 1e13), (400, 1e9)])
def test_direct_float32_past_its_precision_is_the_minimum_norm_solution_at_float32_rank(rng, n, kappa):
    """A float32 A and b past κ ≈ 1e6: R (float64 on the host) is of full rank at float64's
    rule, but x is float32, so it is the minimum-norm solution at float32's rank (the rule
    with R's d × d, ``factored_rank_shape``: cut ``d ε₃₂ σ₁``).  At
    float64's rank x had entries ~1e4-1e9 that fitted A's rounding, and their own rounding
    to float32 left residuals above ||b|| (NumPy's float32 lstsq: 28.6 against ||b|| = 6.1
    at 50 × 50, κ = 1e9)."""
    d = 50
    U, _ = np.linalg.qr(rng.standard_normal((n, d)))
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = ((U * np.logspace(0, -np.log10(kappa), d)) @ V.T).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    with pytest.warns(gs.RankDeficientWarning):
        res = gs.lstsq(A, b, method="direct")
    assert res.x.dtype == np.float32 and res.info["factorization"].endswith("+svd")
    A64, b64 = A.astype(np.float64), b.astype(np.float64)
    x_ref = np.linalg.lstsq(A64, b64, rcond=d * np.finfo(np.float32).eps)[0]
    cost = np.linalg.norm(A64 @ res.x.astype(np.float64) - b64)
    assert cost <= 1.001 * np.linalg.norm(A64 @ x_ref - b64) and cost < np.linalg.norm(b64)


def test_tall_float32_a_keeps_the_directions_its_own_rounding_does_not_reach():
    """A float32 A factored in float64 carries only its entries' rounding: the solvers'
    rank rule takes R's d × d (cut ``d ε₃₂ σ₁``), not A's n × d, whose ``n ε₃₂ σ₁`` (1.2 %
    here) dropped healthy directions of a κ = 100 A: the direct solve, Huber IRLS and the
    exact leverage scores then match float64's (measured before: 1 of 20 directions lost,
    costs 1.17x and 1.34x float64's, scores summing to 19, a RankDeficientWarning).
    ``rank`` keeps NumPy's ``matrix_rank``."""
    import warnings

    from gpusketch import robust

    rng = np.random.default_rng(19)
    A64 = rng.standard_normal((100000, 20)) * np.logspace(0, -2, 20)
    b64 = A64 @ rng.standard_normal(20) + 0.01 * rng.standard_normal(100000)
    A, b = A64.astype(np.float32), b64.astype(np.float32)
    A64, b64 = A.astype(np.float64), b.astype(np.float64)  # the float32 data, exactly
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RankDeficientWarning
        direct = gs.lstsq(A, b, method="direct")
        huber = robust.irls(A, b, robust.HuberLoss(0.02), seed=1)
        scores = gs.leverage_scores(A, exact=True)
    assert direct.x.dtype == np.float32 and not direct.info["rank_deficient"]
    assert direct.cost == pytest.approx(gs.lstsq(A64, b64, method="direct").cost, rel=1e-5)
    assert huber.cost == pytest.approx(robust.irls(A64, b64, robust.HuberLoss(0.02), seed=1).cost, rel=1e-4)
    np.testing.assert_allclose(scores, gs.leverage_scores(A64, exact=True), rtol=1e-4)
    assert gs.rank(A, seed=1) == np.linalg.matrix_rank(A) < 20


def test_direct_householder_tsqr_over_many_blocks_matches_lapack(rng):
    """The host's Householder route is a TSQR of ``[A b]``: 40000 × 60 takes 19 row blocks on
    threads and one QR of their stacked Rs.  R equals LAPACK's up to row signs, and x the
    least-squares solution, at κ = 1e9 (CholeskyQR2's test fails: the Householder route)."""
    from gpusketch.linalg._numerics import _householder_r_qtb

    A = ill_conditioned(40000, 60, 1e9, 3)
    B = rng.standard_normal((40000, 2))
    R_ref = np.linalg.qr(A, mode="r")
    for b in (B[:, 0], B):
        R, z = _householder_r_qtb(A, b, np)
        assert R.shape == (60, 60) and z.shape == (60,) + b.shape[1:]
        np.testing.assert_allclose(np.abs(R), np.abs(R_ref), rtol=1e-9, atol=1e-13 * np.abs(R_ref).max())
        res = gs.lstsq(A, b, method="direct")
        assert res.info["factorization"] == "householder"
        x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
        np.testing.assert_allclose(res.cost, np.linalg.norm(A @ x_ref - b, axis=0), rtol=1e-12)
        assert np.linalg.norm(A @ (res.x - x_ref)) <= 1e-9 * np.linalg.norm(b)


def test_direct_householder_reads_weighted_and_sparse_a_by_blocks(rng):
    """The host's TSQR reads ``diag(s) A`` a row block at a time: a weighted step (IRLS's,
    zero weights included) and a sparse A past the semi-normal equations' reach (κ = 1e9,
    CSC) give LAPACK's least-squares solution of the scaled problem, without a dense or
    scaled copy of all of A: peak 0.23x and 0.32x A's dense bytes (the CholeskyQR2 and
    semi-normal attempts' blocks), 1.16x before (scipy's ``qr(mode="r")`` returns R
    block-sized, and a view of its first rows had kept every block alive)."""
    import tracemalloc

    import scipy.sparse as sp

    from gpusketch.linalg._numerics import qr_lstsq

    A = _sparse_collinear(40000, 30, 1e-9, 5)  # (a dense array) κ ~ 1e9
    b = rng.standard_normal(40000)
    s = rng.uniform(0.5, 2.0, 40000)
    s[rng.choice(40000, 4000, replace=False)] = 0.0
    x_ref = np.linalg.lstsq(A * s[:, None], b * s, rcond=None)[0]
    for M in (A, sp.csc_matrix(A)):
        tracemalloc.start()
        x, deficient, route = qr_lstsq(M, b, np, scale=s)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert route == "householder" and not deficient
        assert peak < 0.5 * A.nbytes, peak / A.nbytes
        r, r_ref = s * (A @ x - b), s * (A @ x_ref - b)
        # (at κ ~ 1e9 the SVD's cost sits ~1e-11 above a Householder solve's: measured 8e-12)
        assert abs(np.linalg.norm(r) - np.linalg.norm(r_ref)) <= 1e-10 * np.linalg.norm(r_ref)


def test_direct_householder_in_float64_keeps_the_callers_dtype():
    """The host's Householder solve factors a float32 A in float64 (as mixed-precision
    CholeskyQR does) and returns x in the dtype of A and b together: float32 A and b give
    float32 x, a float64 b float64 x.  Measured on 20 draws of 60 x 40, κ = 1e3: relative
    errors at most 4.4e-8 (float32 b; NumPy's formed float32 Q gave 1.9e-7, ormqr in float32
    9.6e-7) and 1.2e-14 (float64 b; 7.7e-8 before)."""
    worst = {np.float32: 0.0, np.float64: 0.0}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        A = (rng.standard_normal((60, 40)) * np.logspace(0, -3, 40)).astype(np.float32)
        b = rng.standard_normal(60)
        for bb, dtype in ((b.astype(np.float32), np.float32), (b, np.float64)):
            res = gs.lstsq(A, bb, method="direct")
            assert res.info["factorization"] == "householder" and res.x.dtype == dtype
            ref = np.linalg.lstsq(A.astype(np.float64), bb.astype(np.float64), rcond=None)[0]
            worst[dtype] = max(worst[dtype], np.abs(res.x - ref).max() / np.abs(ref).max())
    assert worst[np.float32] <= 3e-7 and worst[np.float64] <= 1e-12, worst


def test_householder_solves_never_form_q(monkeypatch, rng):
    """lstsq's Householder routes (direct; sketch and precondition through the sketch's QR)
    on the host apply the reflectors: NumPy's ``qr`` with Q (``orgqr``, as costly again as
    the factorization: 100000 x 800 took 12.4 s against 3.5 s) is never called."""
    def no_q(M, mode="reduced"):
        assert mode in ("r", "raw"), mode
        return real(M, mode=mode)

    real = np.linalg.qr
    monkeypatch.setattr(np.linalg, "qr", no_q)
    A = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 40))  # rank 6: CholeskyQR2 fails
    b = rng.standard_normal(400)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    for method in ("direct", "precondition", "sketch"):
        with pytest.warns(gs.RankDeficientWarning):
            res = gs.lstsq(A, b, method=method, seed=1)  # (sketch: the default m >= n, the identity)
        np.testing.assert_allclose(res.x, ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("cond,one_pass", [(1.0, True), (1e4, True), (1e9, False)])
def test_normalized_basis_spans_y_and_is_well_conditioned(xp, rng, cond, one_pass, monkeypatch):
    """Subspace iteration's intermediate bases: one Cholesky QR pass while R is well
    conditioned (σ(Q) within 1e-6 of 1 at κ(Y) = 1e4: κ² ε ≈ 2e-8), ``orthonormalize``
    past that (κ = 1e9: the one pass would leave ||QᵀQ − I|| near 1e2); the same span
    either way.  A rank-deficient Y falls back too."""
    import sys

    numerics = sys.modules["gpusketch.linalg._numerics"]
    from gpusketch.linalg._numerics import normalized_basis

    calls = []
    real = numerics.orthonormalize
    monkeypatch.setattr(numerics, "orthonormalize", lambda *a: calls.append(1) or real(*a))
    n, l = 2000, 30
    U, _ = np.linalg.qr(rng.standard_normal((n, l)))
    V, _ = np.linalg.qr(rng.standard_normal((l, l)))
    Y = (U * np.logspace(0, -np.log10(cond), l)) @ V.T
    Q = to_numpy(normalized_basis(xp.asarray(Y), xp))
    assert (calls == []) == one_pass
    sv = np.linalg.svd(Q, compute_uv=False)
    assert np.abs(sv - 1).max() <= 1e-6
    # range(Q) = range(Y), to Y's own accuracy: its σ = 1/κ direction is off by about ε κ
    np.testing.assert_allclose(Q @ np.linalg.pinv(Q) @ U, U, atol=max(1e-8, 1e-14 * cond))
    calls.clear()
    deficient = rng.standard_normal((n, 5)) @ rng.standard_normal((5, l))
    normalized_basis(xp.asarray(deficient), xp)
    assert calls == [1]


def test_randomized_svd_keeps_a_steep_spectrum(xp, rng):
    """Singular values from 1 down to 1e-12 (a factor 16 between neighbours): the power
    iterations' products multiply the basis's condition by up to ~1e12, which the
    normalization after each product must undo.  The top 10 singular values must come out
    to 1e-8 and the subspace to the SVD's."""
    n, d, p = 3000, 400, 11
    U, _ = np.linalg.qr(rng.standard_normal((n, p)))
    V, _ = np.linalg.qr(rng.standard_normal((d, p)))
    sv = np.logspace(0, -12, p)
    A = (U * sv) @ V.T
    for q in (0, 1, 2, 4):
        Ug, s, Vt = (to_numpy(a) for a in gs.randomized_svd(xp.asarray(A), 10, power_iters=q, seed=4))
        np.testing.assert_allclose(s, sv[:10], rtol=1e-8, atol=1e-15)  # (1e-15: ε σ₁)
        np.testing.assert_allclose(np.abs(Ug.T @ U[:, :10]), np.eye(10), atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, 0.0])
def test_orthonormalize_survives_a_silent_cholesky_failure(monkeypatch, rng, bad):
    """CuPy's cholesky returns garbage instead of raising on a non-PD Gram: the checks must catch it."""
    from gpusketch.linalg._numerics import orthonormalize

    monkeypatch.setattr(np.linalg, "cholesky", lambda G: np.full_like(G, bad))
    Y = rng.standard_normal((400, 10))
    Q, R = orthonormalize(Y, np)
    assert np.abs(Q.T @ Q - np.eye(10)).max() <= 1e-13
    assert np.linalg.norm(Q @ R - Y) <= 1e-13 * np.linalg.norm(Y)


@pytest.mark.parametrize("shape,dtype", [((60, 400), np.float64), ((60, 400), np.float32), ((300, 80), np.float64)])
def test_top_left_singular_spans_the_svd_subspace(xp, rng, shape, dtype):
    """The Gram route (c <= d) and the SVD route (c > d) give the SVD's top-k left subspace."""
    from gpusketch.linalg._numerics import top_left_singular

    c, d = shape
    k, p = 10, min(shape)
    U, _ = np.linalg.qr(rng.standard_normal((c, p)))
    V, _ = np.linalg.qr(rng.standard_normal((d, p)))
    Z = ((U * 0.8 ** np.arange(p)) @ V.T).astype(dtype)  # σ_k/σ_1 = 0.13, gap 20 %
    Q = top_left_singular(xp.asarray(Z), k, xp)
    assert Q.dtype == dtype and Q.shape == (c, k)
    Q = to_numpy(Q).astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(Q.T @ Q, np.eye(k), atol=tol)
    Uk = U[:, :k]
    assert np.linalg.norm(Q @ Q.T - Uk @ Uk.T, 2) <= tol


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
def test_product_row_norms_in_blocks_equal_the_whole_product(rng, monkeypatch, kind, threads):
    """The CPU computes ||(A M)_i||² in cache-sized row blocks (a sparse A's on threads, a
    CSR A's as views of its arrays); with blocks of 256 rows (uneven last block) it equals
    the whole product's row norms, for all rows and for a subset, and so do the
    approximate leverage scores built on it."""
    import scipy.sparse as sp

    from gpusketch import _kernels
    from gpusketch.linalg import leverage

    monkeypatch.setattr(_kernels, "_cpu_threads", lambda work: threads)
    A = rng.standard_normal((2000, 7))
    if kind != "dense":
        A = (sp.random(2000, 7, density=0.4, format="csr", random_state=3) + sp.eye(2000, 7)).asformat(kind)
    M = rng.standard_normal((7, 33))
    whole = np.ravel(((A @ M) ** 2).sum(axis=1))
    at = np.sort(rng.choice(2000, 700, replace=False))
    ref = gs.leverage_scores(A, seed=5)
    monkeypatch.setattr(leverage, "_PRODUCT_BLOCK_BYTES", 1)  # 256-row blocks
    np.testing.assert_allclose(leverage._product_row_norms2(A, M, np), whole, rtol=1e-12)
    np.testing.assert_allclose(leverage._product_row_norms2(A, M, np, at=at), whole[at], rtol=1e-12)
    np.testing.assert_allclose(gs.leverage_scores(A, seed=5), ref, rtol=1e-12)


def _scaled_rank_deficient(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 120))
    d = int(rng.integers(3, min(n, 24) + 1))
    r = int(rng.integers(1, d))
    A = rng.standard_normal((n, r)) @ rng.standard_normal((r, d))
    A *= np.logspace(0, rng.uniform(2, 6), d)  # columns over 2-6 decades
    A[rng.integers(0, n, 3)] *= 1e3  # and a few heavy rows
    return A, rng.standard_normal(n)


def test_rank_deficient_with_scaled_columns_is_detected():
    """Unpivoted QR need not show a rank deficiency in its diagonal, least of all with
    columns over several decades: the largest |R_kk| sat 100x below σ_max, the null
    directions' R_kk above the cut, and the solves came out up to 53x the optimal
    residual (exact leverage scores off by up to 1).  With the cut on R's largest
    column norm and the triangular condition estimate, 60 such matrices (rank
    1 .. d-1, up to 120 × 24) all reach NumPy's residual and SVD leverage scores."""
    bad = []
    for seed in range(60):
        A, b = _scaled_rank_deficient(seed)
        x0 = np.linalg.lstsq(A, b, rcond=None)[0]
        r0 = np.linalg.norm(A @ x0 - b)
        U = np.linalg.svd(A, full_matrices=False)[0][:, : np.linalg.matrix_rank(A)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gs.RankDeficientWarning)
            for method in ("direct", "precondition"):
                x = gs.lstsq(A, b, method=method, seed=seed).x
                if np.linalg.norm(A @ x - b) > r0 * (1 + 1e-8):
                    bad.append((seed, method, np.linalg.norm(A @ x - b) / r0))
            lev = gs.leverage_scores(A, exact=True)
        if np.abs(lev - (U**2).sum(axis=1)).max() > 1e-8:
            bad.append((seed, "leverage"))
    assert not bad, bad
