"""Kronecker regression, all-pairs regression and Kronecker low rank against brute force on small cases."""

import importlib
import math
import warnings

import numpy as np
import pytest

import gpusketch as gs
from gpusketch import kron
from gpusketch.robust.lp import solve_lp_small
from conftest import flip_svd_signs, gpu, sparse_module, to_numpy


def _factors(rng, shapes, xp=np):
    return [xp.asarray(rng.standard_normal(s)) for s in shapes]


def _full(factors):
    A = to_numpy(factors[0])
    for F in factors[1:]:
        A = np.kron(A, to_numpy(F))
    return A


SHAPES = {"q2": [(40, 3), (30, 4)], "q3": [(12, 2), (10, 3), (9, 2)]}


# -- KroneckerMatrix -----------------------------------------------------------


@pytest.mark.parametrize("q", list(SHAPES))
def test_kronecker_matrix_products_and_rows_exact(xp, rng, q):
    fs = _factors(rng, SHAPES[q], xp)
    K = kron.KroneckerMatrix(fs)
    A = _full(fs)
    assert K.shape == A.shape
    x = rng.standard_normal(A.shape[1])
    X = rng.standard_normal((A.shape[1], 3))
    y = rng.standard_normal(A.shape[0])
    np.testing.assert_allclose(to_numpy(K @ xp.asarray(x)), A @ x, atol=1e-11)
    np.testing.assert_allclose(to_numpy(K @ xp.asarray(X)), A @ X, atol=1e-11)
    np.testing.assert_allclose(to_numpy(K.T @ xp.asarray(y)), A.T @ y, atol=1e-11)
    np.testing.assert_allclose(to_numpy(xp.asarray(y) @ K), y @ A, atol=1e-11)
    idx = np.array([0, A.shape[0] - 1, 17, 17, 5])
    np.testing.assert_array_equal(to_numpy(K.rows(xp.asarray(idx))), A[idx])
    np.testing.assert_array_equal(to_numpy(K.todense()), A)
    assert K.fro_norm2() == pytest.approx(np.sum(A**2), rel=1e-12)
    import pickle

    K2 = pickle.loads(pickle.dumps(K))  # to Dask or multiprocessing workers: it held its array module
    assert K2.xp is K.xp and K2.dtype == K.dtype
    np.testing.assert_array_equal(to_numpy(K2.todense()), A)


def _sparse_factor(rng, shape, density, xp=np):
    """A random CSR factor on xp's device (a unit diagonal keeps its columns apart)."""
    import scipy.sparse as sp

    F = sp.random(*shape, density=density, random_state=rng, data_rvs=rng.standard_normal) + sp.eye(*shape)
    return sparse_module(xp).csr_matrix(F.tocsr())


@pytest.mark.parametrize("q", list(SHAPES))
def test_kronecker_matrix_with_sparse_factors(xp, rng, q):
    """Sparse factors act as their dense forms in every product, in rows, todense and the norm.
    A CSR factor with a repeated entry sums it (and is left as passed), an integer CSC one is
    upcast, and dense and sparse factors mix."""
    import scipy.sparse as sp

    shapes = SHAPES[q]
    indptr = np.r_[0, 2, 2, 2, np.full(shapes[0][0] - 3, 3)]  # row 0: column 1 twice; row 3: column 0
    dup = sp.csr_matrix((np.array([1.0, 2.0, -4.0]), np.array([1, 1, 0]), indptr), shape=shapes[0])
    assert not dup.has_canonical_format
    ints = sp.csc_matrix(rng.integers(-2, 3, shapes[1]) * (rng.random(shapes[1]) < 0.4))
    host = [dup, ints] + [_sparse_factor(rng, s, 0.3) for s in shapes[2:]]
    dense = [F.toarray() for F in host]
    fs = [sparse_module(xp).csr_matrix(F.tocsr()) if xp is not np else F for F in host]
    fs[-1] = xp.asarray(dense[-1]) if q == "q3" else fs[-1]  # a dense factor among sparse ones
    K = kron.KroneckerMatrix(fs)
    A = _full(dense)
    assert K.shape == A.shape and K.dtype == np.float64 and dup.nnz == 3 and not dup.has_canonical_format
    X = rng.standard_normal((A.shape[1], 3))
    y = rng.standard_normal(A.shape[0])
    np.testing.assert_allclose(to_numpy(K @ xp.asarray(X)), A @ X, atol=1e-12)
    np.testing.assert_allclose(to_numpy(K.T @ xp.asarray(y)), A.T @ y, atol=1e-12)
    idx = np.array([0, A.shape[0] - 1, 17, 17, 5, 300])
    np.testing.assert_array_equal(to_numpy(K.rows(xp.asarray(idx))), A[idx])
    np.testing.assert_array_equal(to_numpy(K.todense()), A)
    assert K.fro_norm2() == pytest.approx(np.sum(A**2), rel=1e-12)


SPARSE_KRON_CALLS = {
    "lstsq sampling": lambda F, b: kron.lstsq(F, b, seed=2).x,
    "lstsq sketch": lambda F, b: kron.lstsq(F, b, method="sketch", seed=2).x,
    "lstsq exact": lambda F, b: kron.lstsq(F, b, method="exact").x,
    "lp_regression p=1": lambda F, b: kron.lp_regression(F, b, 1, m=400, seed=2).x,
    "lp_regression p=1.5 bound": lambda F, b: kron.lp_regression(F, b, 1.5, m=400, residuals="bound", seed=2).x,
    "low_rank sketch": lambda F, b: kron.low_rank(F, 3, seed=2).V,
    "low_rank exact": lambda F, b: kron.low_rank(F, 3, method="exact").V,
}


@pytest.mark.parametrize("name", list(SPARSE_KRON_CALLS))
@pytest.mark.parametrize("deficient", [False, True])
def test_solvers_take_sparse_factors_as_their_dense_forms(xp, rng, name, deficient):
    """Every Kronecker solver gives with sparse factors what it gives with their dense forms, for
    the same seed: a long factor (400 rows > 8(4d + 10), sketched for its basis) and a short one
    (factored whole), and with ``deficient`` a zero column in the long one (rank warning alike)."""
    import scipy.sparse as sp

    long, short = _sparse_factor(rng, (400, 3), 0.05), _sparse_factor(rng, (25, 2), 0.4)
    if deficient:
        long = sp.csr_matrix(long.toarray() * [1.0, 0.0, 1.0])
    b = _full([long.toarray(), short.toarray()]) @ rng.standard_normal(6) + rng.laplace(size=10000)
    call = SPARSE_KRON_CALLS[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        want = to_numpy(call([xp.asarray(long.toarray()), xp.asarray(short.toarray())], xp.asarray(b)))
        got = to_numpy(call([sparse_module(xp).csr_matrix(F) for F in (long, short)], xp.asarray(b)))
    messages = [str(w.message) for w in caught]
    assert messages[: len(messages) // 2] == messages[len(messages) // 2 :]
    assert any("factor ranks [2, 2]" in m for m in messages) == (deficient and name.startswith("lstsq"))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("stored_zeros", [False, True])
def test_a_zero_sparse_factor_gives_x_zero(xp, rng, stored_zeros):
    """An all-zero sparse factor, with no entries or with explicit zeros stored, makes A = 0."""
    import scipy.sparse as sp

    Z = sp.csr_matrix((np.zeros(4), (np.arange(4), np.zeros(4, int))), shape=(30, 2)) if stored_zeros \
        else sp.csr_matrix((30, 2))
    fs = [sparse_module(xp).csr_matrix(Z), xp.asarray(rng.standard_normal((20, 3)))]
    b = xp.asarray(rng.standard_normal(600))
    with pytest.warns(gs.RankDeficientWarning, match=r"rank\(A\) = 0"):
        assert not np.any(to_numpy(kron.lstsq(fs, b, seed=1).x))
    assert not np.any(to_numpy(kron.lp_regression(fs, b, seed=1).x))


def test_kronecker_matrix_is_a_scipy_linear_operator(rng):
    # aslinearoperator(K) raised "type not understood" (no matvec): lsqr and svds take K itself.
    import scipy.sparse.linalg as spl

    fs = _factors(rng, SHAPES["q3"], np)
    K, A = kron.KroneckerMatrix(fs), _full(fs)
    L = spl.aslinearoperator(K)
    assert L.shape == A.shape and L.dtype == A.dtype
    Y = rng.standard_normal((A.shape[0], 2))
    np.testing.assert_allclose(L.rmatmat(Y), A.T @ Y, atol=1e-11)
    np.testing.assert_allclose(L.matvec(Y[: A.shape[1], 0]), A @ Y[: A.shape[1], 0], atol=1e-11)
    b = rng.standard_normal(A.shape[0])
    x = spl.lsqr(K, b, atol=1e-14, btol=1e-14, iter_lim=1000)[0]
    np.testing.assert_allclose(x, np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-8, atol=1e-10)


def test_kronecker_matrix_products_with_no_columns(rng):
    # reshape(n, -1) of an empty array raised "cannot reshape array of size 0"; NumPy gives (n, 0)
    fs = _factors(rng, SHAPES["q3"], np)
    K, A = kron.KroneckerMatrix(fs), _full(fs)
    assert (K @ np.ones((A.shape[1], 0))).shape == (A.shape[0], 0)
    assert (K.T @ np.ones((A.shape[0], 0))).shape == (A.shape[1], 0)
    assert (np.ones((0, A.shape[0])) @ K).shape == (0, A.shape[1])


def test_kronecker_sketch_of_kronecker_matrix(xp, rng):
    fs = _factors(rng, SHAPES["q2"], xp)
    K = kron.KroneckerMatrix(fs)
    S = gs.Kronecker([gs.CountSketch(9, 40, seed=1), gs.SparseSign(8, 30, nnz=2, seed=2)])
    SK = S @ K
    assert isinstance(SK, kron.KroneckerMatrix) and SK.shape == (72, 12)
    np.testing.assert_allclose(to_numpy(SK.todense()), to_numpy(S @ xp.asarray(_full(fs))), atol=1e-11)
    with pytest.raises(TypeError, match="would form A"):
        gs.CountSketch(10, K.shape[0], seed=1) @ K


def test_kronecker_matrix_bad_input(rng):
    with pytest.raises(ValueError, match="between 1 and 8"):
        kron.KroneckerMatrix([])
    with pytest.raises(ValueError, match=r"factors\[1\] must be 2-D"):
        kron.KroneckerMatrix([np.ones((3, 2)), np.ones(4)])
    with pytest.raises(TypeError, match="list or tuple"):
        kron.KroneckerMatrix(np.ones((3, 2)))
    F = np.ones((100_000, 10))
    with pytest.raises(MemoryError, match=r"todense\(\) of a 10000000000 x 100 KroneckerMatrix needs 7450\.58 GiB"):
        kron.KroneckerMatrix([F, F]).todense()  # refused before np.kron tries 8e12 bytes
    with pytest.raises(ValueError, match=r"factors\[1\] contains NaN"):
        kron.lstsq([np.ones((3, 2)), sparse_module(np).csr_matrix(np.full((3, 2), np.nan))], np.ones(9))
    with pytest.raises(TypeError, match=r"factors\[1\] has complex dtype"):
        kron.KroneckerMatrix([np.ones((3, 2)), sparse_module(np).csr_matrix(np.ones((3, 2), complex))])
    with pytest.raises(ValueError, match=r"factors\[0\] is empty \(shape \(0, 2\)\)"):
        kron.KroneckerMatrix([np.ones((0, 2)), np.ones((3, 2))])
    K = kron.KroneckerMatrix([np.ones((3, 2)), np.ones((4, 2))])
    with pytest.raises(ValueError, match="idx must lie in"):
        K.rows([12])
    with pytest.raises(ValueError, match="idx must be 1-D"):
        K.rows([[1]])
    with pytest.raises(TypeError, match="idx must hold integers"):
        K.rows([1.0])
    with pytest.raises(TypeError, match="KroneckerMatrix @ scalar"):
        K @ 2.0
    with pytest.raises(TypeError, match="scalar @ KroneckerMatrix"):
        2.0 @ K
    with pytest.raises(TypeError, match="list of 2-D arrays or a KroneckerMatrix"):
        kron.lstsq(np.ones((12, 4)), np.ones(12))
    assert repr(K) == "KroneckerMatrix(3x2 ⊗ 4x2, dtype=float64)"
    with pytest.raises(ValueError, match="x has 5 rows"):
        K @ np.ones(5)
    with pytest.raises(ValueError, match="at least 2"):
        kron.lstsq([np.ones((3, 2))], np.ones(3))
    with pytest.raises(ValueError, match="b has 11 rows"):
        kron.lstsq([np.ones((3, 2)), np.ones((4, 2))], np.ones(11))
    with pytest.raises(ValueError, match="m must be a positive integer"):
        kron.lstsq([np.ones((3, 2)), np.ones((4, 2))], np.ones(12), m=0)
    with pytest.raises(ValueError, match="m must exceed"):
        kron.lstsq([np.ones((3, 2)), np.ones((4, 2))], np.ones(12), m=4)
    with pytest.raises(ValueError, match="method"):
        kron.lstsq([np.ones((3, 2)), np.ones((4, 2))], np.ones(12), method="qr")
    with pytest.raises(ValueError, match="NaN"):
        kron.lstsq([np.full((3, 2), np.nan), np.ones((4, 2))], np.ones(12))
    with pytest.raises(ValueError, match="p must lie"):
        kron.lp_regression([np.ones((3, 2)), np.ones((4, 2))], np.ones(12), p=2)
    with pytest.raises(ValueError, match="k must be at most"):
        kron.low_rank([np.ones((3, 2)), np.ones((4, 2))], 5)
    full = kron.low_rank([np.eye(3, 2) + 1, np.eye(4, 2) + 1], 4)  # k = ∏ min(n_t, d_t): the whole row space
    assert full.V.shape == (4, 4) and full.cost == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="needs n >= 2 rows"):
        kron.rank_regression(np.ones((1, 2)), np.ones(1))
    two = kron.rank_regression(np.array([[1.0], [2.0]]), np.array([0.0, 3.0]))  # n = 2: one pair
    assert two.x[0] == pytest.approx(3.0) and two.cost == pytest.approx(0.0, abs=1e-12)
    A5 = rng.standard_normal((5, 4))
    with pytest.raises(ValueError, match=r"needs n >= d \+ 2 rows .* use method='exact'"):
        kron.rank_regression(A5, np.ones(5), m=6)  # fewer than the 10 pairs: it would sample
    assert kron.rank_regression(A5, np.ones(5), method="exact").x.shape == (4,)
    for empty in ([], np.array([], dtype=np.int64)):  # no rows asked, none given
        assert K.rows(empty).shape == (0, 4) and K.rows(empty).dtype == K.dtype
    import scipy.sparse as sp

    two = [np.ones((3, 2)) + np.eye(3, 2), np.ones((4, 2)) + np.eye(4, 2)]
    with pytest.raises(ValueError, match=r"sparse b must have shape \(12,\), \(12, 1\) or \(1, 12\), got \(12, 2\)"):
        kron.lstsq(two, sp.csc_matrix(np.ones((12, 2))))
    column = kron.lstsq(two, sp.csc_matrix(np.arange(12.0)[:, None]), method="exact")
    row = kron.lstsq(two, sp.csr_matrix(np.arange(12.0)[None, :]), method="exact")
    np.testing.assert_allclose(row.x, column.x, rtol=1e-12)
    flat = kron.lstsq(two, sp.csr_array(np.arange(12.0)), method="exact")  # SciPy's 1-D sparse array
    np.testing.assert_allclose(flat.x, column.x, rtol=1e-12)
    ints = sp.coo_matrix((np.array([1, 2, 3]), (np.array([4, 4, 9]), np.zeros(3, int))), shape=(12, 1))
    summed = kron.lstsq(two, ints, method="exact")  # int values upcast; the repeated index 4 adds up
    want = np.zeros(12)
    want[4], want[9] = 3.0, 3.0
    np.testing.assert_allclose(summed.x, kron.lstsq(two, want, method="exact").x, rtol=1e-12)
    assert summed.x.dtype == np.float64 and ints.nnz == 3  # the caller's COO keeps its duplicates
    with pytest.raises(TypeError, match="b has complex dtype"):  # (SciPy has no float16 sparse matrices)
        kron.lstsq(two, sp.csr_matrix(np.ones((12, 1), complex)))


def test_inputs_not_modified(rng):
    fs = _factors(rng, SHAPES["q2"])
    b = rng.standard_normal(1200)
    copies = [F.copy() for F in fs], b.copy()
    kron.lstsq(fs, b, seed=1)
    kron.lp_regression(fs, b, m=300, seed=1)
    kron.low_rank(fs, 2, seed=1)
    for F, F0 in zip(fs, copies[0]):
        np.testing.assert_array_equal(F, F0)
    np.testing.assert_array_equal(b, copies[1])


# -- ℓ2 regression -------------------------------------------------------------


def _problem(rng, shapes, xp, noise="normal"):
    fs = _factors(rng, shapes)
    A = _full(fs)
    e = rng.standard_normal(A.shape[0]) if noise == "normal" else rng.laplace(size=A.shape[0])
    b = A @ rng.standard_normal(A.shape[1]) + e
    return [xp.asarray(F) for F in fs], xp.asarray(b), A, b


@pytest.mark.parametrize("q", list(SHAPES))
def test_lstsq_exact_matches_numpy(xp, rng, q):
    fs, b, A, bh = _problem(rng, SHAPES[q], xp)
    res = kron.lstsq(fs, b, method="exact")
    x_ref = np.linalg.lstsq(A, bh, rcond=None)[0]
    np.testing.assert_allclose(to_numpy(res.x), x_ref, rtol=1e-9, atol=1e-11)
    assert res.cost == pytest.approx(np.linalg.norm(A @ x_ref - bh), rel=1e-10)


@pytest.mark.parametrize("q", list(SHAPES))
@pytest.mark.parametrize("method", ["sampling", "sketch"])
def test_lstsq_cost_ratio(xp, rng, q, method):
    """Sampling at m = 40 D: E[cost²]/opt² ≈ 1 + D/m, so the cost is within 1 + 2.5 % (stated bound 1.05).

    The Kronecker CountSketch needs m = O(D²): at m ≈ N/2 it stays within 1.25.
    """
    fs, b, A, bh = _problem(rng, SHAPES[q], xp)
    N, D = A.shape
    opt = np.linalg.norm(A @ np.linalg.lstsq(A, bh, rcond=None)[0] - bh)
    m = 40 * D if method == "sampling" else N // 2
    res = kron.lstsq(fs, b, m=m, method=method, seed=3)
    bound = 1.05 if method == "sampling" else 1.25
    assert opt <= res.cost <= bound * opt
    assert res.info["method"] == method


def test_lstsq_sampling_is_deterministic_and_reads_sparse_b(rng):
    fs, b, A, bh = _problem(rng, SHAPES["q2"], np)
    r1 = kron.lstsq(fs, b, m=400, seed=11)
    r2 = kron.lstsq(fs, b, m=400, seed=11)
    np.testing.assert_array_equal(r1.x, r2.x)
    import scipy.sparse as sp

    bs = bh.copy()
    bs[np.abs(bs) < 1.0] = 0.0
    dense = kron.lstsq(fs, bs, m=400, seed=11)
    sparse = kron.lstsq(fs, sp.csr_matrix(bs[:, None]), m=400, seed=11)
    np.testing.assert_allclose(sparse.x, dense.x, rtol=1e-12, atol=1e-12)
    assert sparse.cost == pytest.approx(dense.cost, rel=1e-12)


@pytest.mark.parametrize("shapes", [[(300, 3), (200, 2)], [(30, 2), (20, 2), (6, 2)]])
def test_lstsq_sketch_reads_a_sparse_b_without_densifying_it(xp, rng, monkeypatch, shapes):
    """method="sketch" with a sparse b spreads its nonzeros over the factor sketches' columns
    (``_sketch_sparse_target``) instead of sketching b densified: the same Sb and x, and
    ``_Target.full`` (the ∏ n_t dense b) is never called (with cost=False).  The q = 3 case
    keeps its 6-row factor whole (the identity), among SparseSigns."""
    from gpusketch.kron import regression
    from gpusketch.kron.regression import _Target, _factor_sketches, _sketch_sparse_target

    fs = [xp.asarray(rng.standard_normal(s)) for s in shapes]
    N = math.prod(s[0] for s in shapes)
    b = np.zeros(N)
    count = N // 200  # 4 x 4 spread entries a nonzero: under an eighth of N, so b is spread
    b[rng.choice(N, count, replace=False)] = rng.standard_normal(count)
    dense = kron.lstsq(fs, xp.asarray(b), method="sketch", m=400, seed=5, cost=False)
    sparse_b = sparse_module(xp).csr_matrix(xp.asarray(b[:, None]))
    S = _factor_sketches(fs, 400, True, 5)
    assert any(type(F).__name__ == "Sampling" for F in S.factors) == (len(shapes) == 3)
    spread = _sketch_sparse_target(S, _Target(sparse_b, N, xp))
    np.testing.assert_allclose(to_numpy(spread), to_numpy(S @ xp.asarray(b)), rtol=1e-12, atol=1e-14)
    full = regression._Target.full
    monkeypatch.setattr(regression._Target, "full", lambda self: pytest.fail("b was densified"))
    sparse = kron.lstsq(fs, sparse_b, method="sketch", m=400, seed=5, cost=False)
    np.testing.assert_allclose(to_numpy(sparse.x), to_numpy(dense.x), rtol=1e-10, atol=1e-12)
    # Past an eighth of N in spread entries the dense one-pass sketch is the cheaper route.
    b[rng.choice(N, N // 20, replace=False)] = 1.0
    monkeypatch.setattr(regression._Target, "full", lambda self: calls.append(1) or full(self))
    calls = []
    dense = kron.lstsq(fs, xp.asarray(b), method="sketch", m=400, seed=5, cost=False)
    sparse = kron.lstsq(fs, sparse_module(xp).csr_matrix(xp.asarray(b[:, None])), method="sketch", m=400, seed=5,
                        cost=False)
    assert calls == [1]
    np.testing.assert_allclose(to_numpy(sparse.x), to_numpy(dense.x), rtol=1e-10, atol=1e-12)


def test_kronecker_sketch_columns_of_every_factor_kind(rng):
    """``_sketch_sparse_target`` takes the columns of CountSketch and SparseSign factors from their
    hashes and any other factor from its dense form: Sb equals S @ b for a mix of them."""
    import scipy.sparse as sp

    from gpusketch.kron.regression import _Target, _sketch_sparse_target

    S = gs.Kronecker([gs.CountSketch(7, 30, seed=1), gs.SparseSign(9, 20, nnz=3, seed=2), gs.Gaussian(4, 5, seed=3)])
    b = np.zeros(3000)
    b[rng.choice(3000, 40, replace=False)] = rng.standard_normal(40)
    got = _sketch_sparse_target(S, _Target(sp.csr_array(b), 3000, np))
    np.testing.assert_allclose(got, S @ b, rtol=1e-12, atol=1e-14)


def test_lstsq_several_right_hand_sides(rng):
    fs, _, A, _ = _problem(rng, SHAPES["q2"], np)
    B = rng.standard_normal((A.shape[0], 3))
    res = kron.lstsq(fs, B, method="exact")
    np.testing.assert_allclose(res.x, np.linalg.lstsq(A, B, rcond=None)[0], atol=1e-10)
    assert res.cost.shape == (3,)
    sampled = kron.lstsq(fs, B, m=480, seed=2)
    assert sampled.x.shape == (12, 3)


@pytest.mark.parametrize("deficient", [False, True])
def test_lstsq_sketch_solves_the_sketched_problem_exactly(rng, deficient):
    # method="sketch" solves min ||(S_1A_1 ⊗ S_2A_2) x - Sb|| through factor pseudo-inverses:
    # the same minimum-norm x as a dense least squares on the explicit sketched matrix.
    from gpusketch._random import derive_seed

    F = [rng.standard_normal((60, 3)), rng.standard_normal((50, 4))]
    if deficient:
        F[1][:, 3] = F[1][:, 0]  # rank 3 of 4: the minimum-norm answer is unique
    b = rng.standard_normal((3000, 2))
    if deficient:
        with pytest.warns(gs.RankDeficientWarning, match=r"factor ranks \[3, 3\] of \[3, 4\]"):
            res = kron.lstsq(F, b, method="sketch", m=900, seed=2, cost=False)
    else:
        res = kron.lstsq(F, b, method="sketch", m=900, seed=2, cost=False)
    assert res.info["rank_deficient"] is deficient and res.info["factor_ranks"] == [3, 3 if deficient else 4]
    S = gs.Kronecker([gs.SparseSign(30, 60, nnz=4, seed=derive_seed(2, 0)),
                      gs.SparseSign(30, 50, nnz=4, seed=derive_seed(2, 1))])
    ref = np.linalg.lstsq(S.todense() @ np.kron(*F), S @ b, rcond=None)[0]
    assert res.info["m"] == 900
    np.testing.assert_allclose(res.x, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["exact", "sampling", "sketch"])
def test_lstsq_warns_on_a_rank_deficient_factor_and_returns_the_minimum_norm_x(xp, rng, method):
    """A factor of rank 3 of 4 makes A rank deficient (rank(A) = ∏ rank(A_t)): every method
    warns, as gpusketch.lstsq does, and x has no component in A's null space.  The factor
    pseudo-inverses had been taken silently."""
    F = [rng.standard_normal((60, 3)), rng.standard_normal((500, 4))]  # the second is sketched when sampled
    F[1][:, 3] = F[1][:, 0]
    A = _full(F)
    b = A @ rng.standard_normal(12) + 0.01 * rng.standard_normal(A.shape[0])
    with pytest.warns(gs.RankDeficientWarning, match=r"rank deficient: factor ranks \[3, 3\] of \[3, 4\]"):
        res = kron.lstsq([xp.asarray(G) for G in F], xp.asarray(b), method=method, seed=1)
    assert res.info["rank_deficient"] is True and res.info["factor_ranks"] == [3, 3]
    x = to_numpy(res.x)
    null = np.linalg.svd(A, full_matrices=False)[2][9:]  # rank(A) = 9
    assert np.linalg.norm(null @ x) <= 1e-12 * np.linalg.norm(x)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    assert np.linalg.norm(x - ref) <= (1e-12 if method == "exact" else 2e-3) * np.linalg.norm(ref)
    with pytest.warns(gs.RankDeficientWarning, match=r"factor ranks \[0, 3\].*rank\(A\) = 0"):
        zero = kron.lstsq([xp.zeros((30, 2)), xp.asarray(F[0])], xp.asarray(b[:1800]), method=method, seed=1)
    assert zero.info["factor_ranks"] == [0, 3]


def test_lstsq_sampling_factors_a_factor_whole_when_its_sketch_loses_rank(rng, monkeypatch):
    """A long factor is preconditioned from an OSNAP sketch of it; a sketch that merges two of
    its directions gave a basis B missing part of range(A_t), so x was confined to the
    sketch's row space, with no warning.  Such a factor is now factored whole.  (Forced
    here with a one-row sketch.)"""
    module = importlib.import_module("gpusketch.kron.regression")
    F = [rng.standard_normal((40, 2)), rng.standard_normal((400, 3))]  # 400 > 8 (4·3 + 10): sketched
    A = _full(F)
    b = A @ rng.standard_normal(6) + 0.1 * rng.standard_normal(A.shape[0])
    opt = np.linalg.norm(A @ np.linalg.lstsq(A, b, rcond=None)[0] - b)
    monkeypatch.setattr(module, "SparseSign", lambda m, n, nnz, seed: gs.CountSketch(1, n, seed=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # A is full rank: no warning
        res = kron.lstsq(F, b, m=600, seed=1)
    assert res.info["factor_ranks"] == [2, 3] and res.info["rank_deficient"] is False
    assert res.cost <= 1.02 * opt


def test_lstsq_sketch_warns_when_a_sketch_merges_directions_of_a_factor(rng, monkeypatch):
    """method="sketch" with a sketched factor of rank below its factor's: x is confined to
    the sketch's row space, and the warning says so (not that A is deficient)."""
    module = importlib.import_module("gpusketch.kron.regression")
    F = [rng.standard_normal((40, 2)), rng.standard_normal((50, 3))]
    monkeypatch.setattr(module, "SparseSign", lambda m, n, nnz, seed: gs.CountSketch(1, n, seed=seed))
    with pytest.warns(gs.RankDeficientWarning, match=r"sketches of the factors have ranks \[1, 1\] where "
                      r"the factors have \[2, 3\]") as caught:
        res = kron.lstsq(F, rng.standard_normal(2000), method="sketch", m=100, seed=1)
    assert not any("A = A_1" in str(w.message) for w in caught)
    assert res.info["sketch_ranks"] == [1, 1] and res.info["factor_ranks"] == [2, 3]
    assert res.info["rank_deficient"] is False


def test_square_products_are_solved_exactly_at_the_default_m(rng):
    """Square factors (N = D): the default m is N = D, which ``_check_m`` refused as
    "m must exceed the number of unknowns" for sampling, sketch and lp_regression.  With
    m >= N every method solves on all rows; a given m <= D < N is still refused."""
    fs = [rng.standard_normal((3, 3)), rng.standard_normal((2, 2)) + 2 * np.eye(2)]
    x_true = rng.standard_normal(6)
    b = np.kron(*fs) @ x_true
    for method in ("sampling", "sketch"):
        res = kron.lstsq(fs, b, method=method, seed=1)
        np.testing.assert_allclose(res.x, x_true, rtol=1e-8)
        assert res.info["rows"] == 6
    for p in (1.0, 1.5):
        np.testing.assert_allclose(kron.lp_regression(fs, b, p=p, seed=1).x, x_true, rtol=1e-6, atol=1e-8)
    tall = [rng.standard_normal((3, 3)), rng.standard_normal((4, 2))]  # N = 12, D = 6
    assert kron.lstsq(tall, rng.standard_normal(12), m=12, method="sketch").info["rows"] == 12
    with pytest.raises(ValueError, match="m must exceed the number of unknowns ∏ d_t = 6, got m=6"):
        kron.lstsq(tall, rng.standard_normal(12), m=6)


def test_default_sample_size_holds_at_small_d():
    """D = 2 unknowns, 1 % of b scaled by 100: with ``⌈10 D ln D⌉`` = 14 draws the ℓ2 cost
    ratio over these 30 seeds reached 2.17 and the ℓ1 one 1.068 (10 seeds); the default's
    floor of 10 D + 200 draws keeps them at 1.018 and 1.003."""
    r2, r1 = [], []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        F = [rng.standard_normal((150, 1)), rng.standard_t(1.5, size=(120, 2))]
        K = np.kron(*F)
        b = K @ rng.standard_normal(2) + rng.standard_normal(K.shape[0])
        b[rng.random(b.size) < 0.01] *= 100
        res = kron.lstsq(F, b, seed=seed)
        assert res.info["m"] == 220
        r2.append(res.cost / np.linalg.norm(K @ np.linalg.lstsq(K, b, rcond=None)[0] - b))
        if seed < 10:
            r1.append(kron.lp_regression(F, b, 1, seed=seed).cost / kron.lp_regression(F, b, 1, m=K.shape[0]).cost)
    assert max(r2) < 1.1 and max(r1) < 1.03, (max(r2), max(r1))


def test_lstsq_sketch_keeps_planted_rows_apart():
    """Factors whose columns each live on one row (leverage ≈ 1) plus small noise.  With
    CountSketch factors, two such rows of a factor sharing a bucket merged their directions:
    over these 40 seeds the cost ratio exceeded 1.2 in 17, up to 6.4 (median 1.09), at the
    default m.  The sparse sign factors, at least 4 d_t + 10 rows each by default: max 1.033."""
    ratios, rows = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        F = []
        for n, d in ((120, 4), (90, 3)):
            A = 0.01 * rng.standard_normal((n, d))
            A[rng.choice(n, d, replace=False), np.arange(d)] = 1.0
            F.append(A)
        K = np.kron(*F)
        b = K @ rng.standard_normal(12) + rng.standard_normal(K.shape[0])
        best = np.linalg.norm(K @ np.linalg.lstsq(K, b, rcond=None)[0] - b)
        res = kron.lstsq(F, b, method="sketch", seed=seed)
        ratios.append(res.cost / best)
        rows.append(res.info["m"])
    assert max(ratios) < 1.2, max(ratios)
    assert min(rows) >= (4 * 4 + 10) * (4 * 3 + 10)  # the default floor, factor by factor



@pytest.mark.parametrize("q,density", [("q2", "dense"), ("q3", "dense"), ("q2", "sparse")])
@pytest.mark.parametrize("k", [None, 2])
def test_sampled_gram_equals_the_explicit_weighted_gram(xp, rng, q, density, k):
    """The grouped Gram (CSR Ω times the packed row outer products) equals UᵀWU and UᵀWb of
    the explicit sampled rows: about half of all rows sampled ("dense"), or 2 of the 30
    last-factor rows per prefix ("sparse")."""
    from gpusketch.kron.regression import _sampled_gram

    fs = _factors(rng, SHAPES[q], xp)
    A = _full(fs)
    N = A.shape[0]
    if density == "dense":
        idx = np.unique(rng.integers(0, N, 3 * N // 4))  # sorted and distinct, as merge() returns them
    else:
        n_last = SHAPES[q][-1][0]
        idx = np.sort(np.concatenate([g * n_last + rng.choice(n_last, 2, replace=False) for g in range(N // n_last)]))
    w = rng.random(idx.size) + 0.5
    bv = rng.standard_normal(idx.size if k is None else (idx.size, k))
    out = _sampled_gram(fs, xp.asarray(idx), xp.asarray(w), xp.asarray(bv), xp)
    assert out is not None  # dense sample: many rows per prefix, so grouping pays
    G, r = (to_numpy(v) for v in out)
    U = A[idx]
    np.testing.assert_allclose(G, U.T @ (w[:, None] * U), rtol=1e-12, atol=1e-11)
    wb = w * bv if k is None else w[:, None] * bv
    np.testing.assert_allclose(r, U.T @ wb, rtol=1e-12, atol=1e-11)


# -- ℓp regression ---------------------------------------------------------------


def _l1_opt(A, b):
    return np.abs(A @ solve_lp_small(A, b, 1.0) - b).sum()


@pytest.mark.parametrize("q", list(SHAPES))
def test_lp_regression_l1_within_bound(xp, rng, q):
    """m = 60 D sampled rows per stage on Laplace noise: within 4 % of the HiGHS optimum on the full LP."""
    fs, b, A, bh = _problem(rng, SHAPES[q], xp, noise="laplace")
    opt = _l1_opt(A, bh)
    res = kron.lp_regression(fs, b, p=1, m=60 * A.shape[1], seed=5)
    assert opt * (1 - 1e-9) <= res.cost <= 1.04 * opt
    assert res.info["rows_stage2"] <= 60 * A.shape[1]


def test_lp_regression_bound_mode_with_sparse_b(rng):
    fs, _, A, _ = _problem(rng, SHAPES["q2"], np)
    x0 = rng.standard_normal(A.shape[1])
    b = A @ x0
    b[np.abs(b) < 1.5] = 0.0  # sparse b with gross corruptions of a structured signal
    import scipy.sparse as sp

    opt = _l1_opt(A, b)
    res = kron.lp_regression(fs, sp.csc_matrix(b[:, None]), p=1, m=800, residuals="bound", seed=2)
    dense = kron.lp_regression(fs, b, p=1, m=800, residuals="bound", seed=2)
    np.testing.assert_allclose(res.x, dense.x, atol=1e-9)
    assert opt * (1 - 1e-9) <= res.cost <= 1.10 * opt
    # p = 1.5: the sparse b's |b_i|^p mass must be the dense one's (at p = 1, |b_i|·p passed).
    res = kron.lp_regression(fs, sp.csc_matrix(b[:, None]), p=1.5, m=800, residuals="bound", seed=2)
    dense = kron.lp_regression(fs, b, p=1.5, m=800, residuals="bound", seed=2)
    np.testing.assert_allclose(res.x, dense.x, atol=1e-9)


def test_lp_regression_p15_against_irls(rng):
    fs, b, A, _ = _problem(rng, SHAPES["q2"], np, noise="laplace")
    x_ref = solve_lp_small(A, b, 1.5)
    opt = np.sum(np.abs(A @ x_ref - b) ** 1.5) ** (1 / 1.5)
    res = kron.lp_regression(fs, b, p=1.5, m=600, seed=4)
    assert opt * (1 - 1e-9) <= res.cost <= 1.04 * opt


# -- all-pairs regression --------------------------------------------------------


def test_all_pairs_cost_matches_brute_force(rng):
    r = rng.standard_normal(57)
    assert kron.all_pairs_cost(r) == pytest.approx(np.abs(r[:, None] - r[None, :]).sum(), rel=1e-12)
    assert kron.all_pairs_cost(list(r[:3])) == pytest.approx(np.abs(r[:3, None] - r[None, :3]).sum(), rel=1e-12)
    with pytest.raises(ValueError, match="r must be 1-D"):  # it broadcast a 2-D r against its ranks
        kron.all_pairs_cost(np.ones((4, 2)))


def test_rank_regression_against_exact_lp(xp, rng):
    n, d = 80, 3
    A = rng.standard_normal((n, d))
    b = A @ np.array([1.0, -2.0, 0.5]) + rng.standard_t(2, n)
    exact = kron.rank_regression(xp.asarray(A), xp.asarray(b), method="exact")
    # The LP over unordered pairs is the n²-row problem: compare with HiGHS on the explicit Ā (all ordered pairs).
    Abar = np.kron(A, np.ones((n, 1))) - np.kron(np.ones((n, 1)), A)
    bbar = np.kron(b, np.ones(n)) - np.kron(np.ones(n), b)
    assert exact.cost == pytest.approx(_l1_opt(Abar, bbar), rel=1e-7)
    fast = kron.rank_regression(xp.asarray(A), xp.asarray(b), m=1500, seed=3)
    assert exact.cost * (1 - 1e-9) <= fast.cost <= 1.03 * exact.cost
    assert fast.info["pairs"] <= 1500
    # The all-pairs objective is flat (noise dominates every difference), so the bound must be
    # tight to see a wrong solver: on Cauchy noise the sampled LP stayed within 1.0021 of the
    # optimum over 10 seeds, a least-squares fit of the same pairs up to 1.17.
    for s in range(3):
        r = np.random.default_rng(s)
        Ac = r.standard_normal((n, d))
        bc = Ac @ np.array([1.0, -2.0, 0.5]) + r.standard_cauchy(n)
        exact_c = kron.rank_regression(xp.asarray(Ac), xp.asarray(bc), method="exact")
        fast_c = kron.rank_regression(xp.asarray(Ac), xp.asarray(bc), m=1500, seed=3)
        assert exact_c.cost * (1 - 1e-9) <= fast_c.cost <= 1.01 * exact_c.cost
    # A sparse A gives the same answer as its dense copy (it is densified: n x d).
    As = sparse_module(xp).csr_matrix(xp.asarray(A))
    same = kron.rank_regression(As, xp.asarray(b), m=1500, seed=3)
    np.testing.assert_allclose(to_numpy(same.x), to_numpy(fast.x), rtol=1e-12)


def test_rank_regression_small_samples_keep_pairs():
    # The partner row was drawn over all n rows and equal pairs dropped after: with n = 3
    # and m = 2, 16 of 200 seeds kept no pair and merge raised IndexError.
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((3, 1)), rng.standard_normal(3)
    best = kron.rank_regression(A, b, method="exact").cost
    for seed in range(40):
        res = kron.rank_regression(A, b, m=2, seed=seed)
        assert 1 <= res.info["pairs"] <= 2 and res.cost >= best * (1 - 1e-12)
    # Fewer rows than columns: the default m = n² <= d was refused ("m must be an integer > d"),
    # though from m >= n(n−1)/2 the exact LP runs; a given m <= d below the pairs still is.
    for n, d in ((2, 5), (3, 5)):
        A, b = rng.standard_normal((n, d)), rng.standard_normal(n)
        res = kron.rank_regression(A, b, seed=1)
        assert res.info["pairs"] == n * (n - 1) // 2
        assert res.cost == pytest.approx(kron.rank_regression(A, b, method="exact").cost, abs=1e-12)
    with pytest.raises(ValueError, match="m must be an integer > d = 5, got 4"):
        kron.rank_regression(rng.standard_normal((10, 5)), rng.standard_normal(10), m=4)


# -- low rank --------------------------------------------------------------------


def test_low_rank_cost_keeps_its_accuracy_down_to_an_exact_fit(rng, monkeypatch):
    # The cost was ∏||A_t||² − Σ captured, which cancels: at k = rank (an exact fit) it
    # reported 1.3e-6 against 2e-14 from the formed product.  It is now a sum of
    # nonnegative terms over the multi-indices not chosen.
    import importlib

    module = importlib.import_module("gpusketch.kron.low_rank")
    fs = [rng.standard_normal((6, 2)), rng.standard_normal((5, 3)), rng.standard_normal((4, 2))]
    A = _full(fs)
    for method in ("exact", "sketch"):
        full = kron.low_rank(fs, 12, method=method, m=3, seed=1)  # m = 3 < d_t + 1: incomplete sketched bases
        assert full.cost <= 1e-13 * np.linalg.norm(A)
        for k in (1, 5):
            res = kron.low_rank(fs, k, method=method, m=3, seed=1)
            V = to_numpy(res.V)
            assert res.cost == pytest.approx(np.linalg.norm(A - A @ V.T @ V), rel=1e-12)
    monkeypatch.setattr(module, "_COST_TERMS", 1)  # the difference, where the terms would not fit
    res = kron.low_rank(fs, 5, method="sketch", m=3, seed=1)
    V = to_numpy(res.V)
    assert res.cost == pytest.approx(np.linalg.norm(A - A @ V.T @ V), rel=1e-9)


def test_low_rank_ranks_products_by_what_they_capture_of_a():
    """Close singular values (1 and 0.95) in a factor: the sketch's σ mis-ranked its vectors,
    and choosing the top-k sketch products cost up to 1.45x the optimum (p90 1.14) over these
    200 seeds at m = 30.  Ranked by ``||A(⊗v)|| = ∏||A_t v_t||`` (reported as the
    singular values): max 1.20, p90 1.07."""
    ratios = []
    for seed in range(200):
        r = np.random.default_rng(seed)
        fs = [r.standard_normal((500, 3)) * [1.0, 0.95, 0.3], r.standard_normal((400, 2)) * [1.0, 0.6]]
        res = kron.low_rank(fs, 2, m=30, seed=seed)
        ratios.append(res.cost / kron.low_rank(fs, 2, method="exact").cost)
    assert max(ratios) <= 1.25 and np.quantile(ratios, 0.9) <= 1.10
    captured = np.linalg.norm(np.kron(*fs) @ res.V.T, axis=0)
    np.testing.assert_allclose(res.info["singular_values"], captured, rtol=1e-12)
    assert np.all(np.diff(res.info["singular_values"]) <= 0)


@pytest.mark.parametrize("q", list(SHAPES))
def test_low_rank_against_svd_of_the_product(xp, rng, q):
    shapes = SHAPES[q]
    fs = [xp.asarray(rng.standard_normal(s) * np.geomspace(1, 0.05, s[1])) for s in shapes]
    A = _full(fs)
    k = 3
    s = np.linalg.svd(A, compute_uv=False)
    opt = math.sqrt(np.sum(s[k:] ** 2))
    exact = kron.low_rank(fs, k, method="exact")
    assert exact.cost == pytest.approx(opt, rel=1e-8)
    np.testing.assert_allclose(exact.info["singular_values"], s[:k], rtol=1e-10)  # the top k, descending
    res = kron.low_rank(fs, k, m=[min(F.shape[0], 25) for F in fs], seed=2)
    V = to_numpy(res.V)
    np.testing.assert_allclose(V @ V.T, np.eye(k), atol=1e-10)
    explicit = np.linalg.norm(A - A @ V.T @ V)
    assert res.cost == pytest.approx(explicit, rel=1e-8)
    assert opt * (1 - 1e-9) <= res.cost <= 1.10 * opt
    # One int m is m rows for every factor (capped at its n_t).
    one = kron.low_rank(fs, k, m=25, seed=2)
    np.testing.assert_array_equal(to_numpy(one.V), V)
    # A factor with no more than m_t rows is used whole: with all of them, the answer is exact.
    whole = kron.low_rank(fs, k, m=max(F.shape[0] for F in fs), seed=2)
    assert whole.cost == pytest.approx(opt, rel=1e-8)
    # Factors taller than the default sketch (10k + 40 = 70 rows): "exact" still reads them whole.
    tall = [xp.asarray(rng.standard_normal((n_t, d_t)) * np.geomspace(1, 0.05, d_t)) for n_t, d_t in ((150, 3), (90, 4))]
    s_tall = np.linalg.svd(_full(tall), compute_uv=False)
    exact = kron.low_rank(tall, k, method="exact")
    assert exact.cost == pytest.approx(math.sqrt(np.sum(s_tall[k:] ** 2)), rel=1e-8)
    sketched = kron.low_rank(tall, k, seed=3)
    assert sketched.info["m"] == [70, 70] and exact.info["m"] is None


# -- CPU/GPU agreement -----------------------------------------------------------


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rows_kernel_matches_cpu_twin(rng, dtype):
    import cupy

    fs = [rng.standard_normal(s).astype(dtype) for s in SHAPES["q3"]]
    idx = rng.integers(0, 12 * 10 * 9, 500)
    cpu = kron.KroneckerMatrix(fs).rows(idx)
    gpu_rows = kron.KroneckerMatrix([cupy.asarray(F) for F in fs]).rows(cupy.asarray(idx))
    np.testing.assert_allclose(gpu_rows.get(), cpu, rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.gpu
def test_sampling_solvers_keep_the_same_rows_on_both_devices(rng, cupy_or_fake):
    cupy = cupy_or_fake
    fs, b, _, _ = _problem(rng, SHAPES["q2"], np, noise="laplace")
    cpu = kron.lstsq(fs, b, m=500, seed=9)
    dev = kron.lstsq([cupy.asarray(F) for F in fs], cupy.asarray(b), m=500, seed=9)
    assert dev.info["rows"] == cpu.info["rows"]
    np.testing.assert_allclose(dev.x.get(), cpu.x, rtol=1e-8, atol=1e-10)
    cpu1 = kron.lp_regression(fs, b, m=500, seed=9)
    dev1 = kron.lp_regression([cupy.asarray(F) for F in fs], cupy.asarray(b), m=500, seed=9)
    assert dev1.info["rows_stage2"] == cpu1.info["rows_stage2"]
    assert dev1.cost == pytest.approx(cpu1.cost, rel=1e-6)


def test_lp_regression_zero_b_reduces_to_structural_sampling(rng):
    fs = _factors(rng, SHAPES["q2"])
    res = kron.lp_regression(fs, np.zeros(1200), p=1, m=300, residuals="bound", seed=1)
    np.testing.assert_allclose(res.x, 0.0, atol=1e-9)
    assert res.cost == pytest.approx(0.0, abs=1e-8)


def test_inverse_cdf_twin_is_searchsorted(xp, rng):
    """The guide-table inverse CDF (CPU twin) returns ``searchsorted(side="right")`` exactly:
    flat stretches (zero probabilities), a dominant entry, draws on the cdf's own values,
    at 0, and at or beyond its last value."""
    from gpusketch import _kernels

    p = rng.random(300)
    p[rng.choice(300, 120, replace=False)] = 0.0  # runs of equal cdf values
    p[17] = 500.0  # one cell holding most of the mass
    cdf = np.cumsum(p / p.sum())
    u = np.concatenate([rng.random(12000), cdf[::7], [0.0, cdf[-1], 1.0 - 2**-53, np.nextafter(cdf[40], 0)]])
    got = _kernels.call("inverse_cdf", xp, xp.asarray(cdf), xp.asarray(u))
    np.testing.assert_array_equal(to_numpy(got), np.searchsorted(cdf, u, side="right"))
    # A long cdf (more entries than draws) takes the binary search; the answer is the same.
    long = np.cumsum(rng.random(5000))
    long /= long[-1]
    np.testing.assert_array_equal(to_numpy(_kernels.call("inverse_cdf", xp, xp.asarray(long), xp.asarray(u[:100]))),
                                  np.searchsorted(long, u[:100], side="right"))


@pytest.mark.parametrize("p", [1, 1.5, 2])
def test_a_wide_factor_is_solved(xp, rng, p):
    """A_1 of shape 3 × 5 makes A (600 × 10) rank deficient though tall: the factor
    bases and Lewis weights come from range(A_1); cost within 5 % of the full solve."""
    fs = [xp.asarray(rng.standard_normal(s)) for s in [(3, 5), (200, 2)]]
    A = _full(fs)
    b = A @ rng.standard_normal(10) + rng.laplace(size=600)
    if p == 2:
        opt = np.linalg.norm(A @ np.linalg.lstsq(A, b, rcond=None)[0] - b)
        with pytest.warns(gs.RankDeficientWarning, match=r"factor ranks \[3, 2\] of \[5, 2\]"):
            res = kron.lstsq(fs, xp.asarray(b), seed=3)
    else:
        opt = np.sum(np.abs(A @ solve_lp_small(A, b, p) - b) ** p) ** (1 / p)
        res = kron.lp_regression(fs, xp.asarray(b), p=p, seed=3)
    assert opt * (1 - 1e-9) <= res.cost <= 1.05 * opt


@pytest.mark.parametrize("call", ["sampling", "sketch", "exact", "lp1", "lp15"])
def test_a_zero_factor_gives_x_zero(xp, rng, call):
    fs = [xp.zeros((30, 2)), xp.asarray(rng.standard_normal((20, 3)))]
    b = rng.standard_normal(600)
    with np.errstate(all="raise"):
        if call.startswith("lp"):
            res = kron.lp_regression(fs, xp.asarray(b), p=1 if call == "lp1" else 1.5, seed=1)
        else:
            with pytest.warns(gs.RankDeficientWarning, match=r"rank\(A\) = 0"):
                res = kron.lstsq(fs, xp.asarray(np.c_[b, 2 * b]), method=call, seed=1)
    assert np.all(to_numpy(res.x) == 0)
    p = {"lp1": 1, "lp15": 1.5}.get(call, 2)
    expect = np.sum(np.abs(b) ** p) ** (1 / p)
    np.testing.assert_allclose(to_numpy(res.cost), expect if p != 2 else [expect, 2 * expect], rtol=1e-12)
    if call.startswith("lp"):  # nothing was sampled, and info says so
        assert res.info["rows_stage1"] == res.info["rows_stage2"] == 0
    elif call == "sampling":
        assert res.info["rows"] == 0


@pytest.mark.parametrize("on_support", [False, True])
def test_stage2_mixture_weights_match_the_draws(on_support):
    """kron.lp_regression's stage 2 draws from ρ = ½π + ½σ and weights by 1/ρ: ρ must be the
    mixture actually sampled.  Over 20 × 1000 draws each row's count is Binomial(20000, ρ_i);
    |z| < 5 fails by chance with p < 1e-4.  (A mutant weighting by π + ½σ, and one drawing
    from π alone, passed every cost test: ℓ1 solutions shrug off such weights.)"""
    from gpusketch.kron.regression import _mixture_sample

    rng = np.random.default_rng(7)
    dims = (3, 4)
    probs = [rng.random(3) + 0.1, rng.random(4) + 0.1]
    probs = [p / p.sum() for p in probs]
    pi = np.kron(probs[0], probs[1])
    support = np.array([1, 5, 7, 11]) if on_support else None
    mass = rng.random(4) + 0.2 if on_support else rng.random(12) ** 3
    sigma = np.zeros(12)
    sigma[support if on_support else slice(None)] = mass / mass.sum()
    rho_true = 0.5 * pi + 0.5 * sigma
    counts = np.zeros(12)
    for seed in range(20):
        idx, rho = _mixture_sample(probs, dims, support, mass, 1000, seed, np)
        np.testing.assert_allclose(rho, rho_true[idx], rtol=1e-12)
        counts += np.bincount(idx, minlength=12)
    z = (counts - 20000 * rho_true) / np.sqrt(20000 * rho_true * (1 - rho_true))
    assert np.abs(z).max() < 5


def test_sampled_lp_solve_minimises_the_weighted_objective(rng):
    """_solve_sample's rows carry weight w_i = c_i/(count·p_i) as w_i^{1/p} scales, so it
    minimises Σ w_i |a_i x − b_i|^p; checked against BFGS on that sum (p = 1.5).  The
    cost tests at m = 600 allow 4 %: scaling by w_i/p instead passed them."""
    import scipy.optimize

    from gpusketch.kron.regression import _setup, _solve_sample

    fs = [rng.standard_normal((6, 2)), rng.standard_normal((5, 2))]
    A = np.kron(fs[0], fs[1])
    b = A @ rng.standard_normal(4) + rng.laplace(size=30)
    K, tgt, _, _ = _setup(fs, b, 1)
    prob = rng.random(30) + 0.05
    prob /= prob.sum()
    w = 1.0 / (30 * prob)  # every row drawn once out of count = 30
    x, rows = _solve_sample(K, tgt, np.arange(30), prob, 30, 1.5)
    assert rows == 30

    def f(z):
        r = A @ z - b
        return np.sum(w * np.abs(r) ** 1.5), A.T @ (w * 1.5 * np.abs(r) ** 0.5 * np.sign(r))

    ref = scipy.optimize.minimize(f, np.linalg.lstsq(A, b, rcond=None)[0], jac=True, method="BFGS",
                                  options={"gtol": 1e-12, "maxiter": 5000})
    assert f(x)[0] <= ref.fun * (1 + 1e-9)


def test_bound_residuals_never_touch_all_rows(rng, monkeypatch):
    """residuals="bound" with a sparse b is sublinear in ∏ n_t: neither A x nor the dense b is
    formed (with cost=False); residuals="exact" forms A x' and b once, a slab at a time (one
    slab at this size).  (Swapping the two modes passed every cost test: both are valid
    importance samplers.)"""
    import scipy.sparse as sp

    from gpusketch.kron.matrix import KroneckerMatrix
    from gpusketch.kron.regression import _Target

    fs = _factors(rng, SHAPES["q2"])
    b = np.zeros(1200)
    b[rng.choice(1200, 40, replace=False)] = rng.standard_normal(40)
    calls = []

    def spy(name, original):
        def wrapped(self, *args):
            calls.append(name)
            return original(self, *args)
        return wrapped

    monkeypatch.setattr(KroneckerMatrix, "__matmul__", spy("A @ x", KroneckerMatrix.__matmul__))
    monkeypatch.setattr(_Target, "full", spy("dense b", _Target.full))
    monkeypatch.setattr(_Target, "rows", spy("dense b", _Target.rows))
    kron.lp_regression(fs, sp.csc_matrix(b[:, None]), p=1, m=300, residuals="bound", cost=False, seed=1)
    assert calls == []
    kron.lp_regression(fs, sp.csc_matrix(b[:, None]), p=1, m=300, residuals="exact", cost=False, seed=1)
    assert calls == ["A @ x", "dense b"]


def test_samples_as_large_as_the_problem_solve_it_exactly(xp, rng):
    """m >= N rows (N = 20 here, the default m caps there) or m >= n(n-1)/2 pairs: the exact
    answer.  m i.i.d. draws of N rows leave about a third out; they had given ℓ2 cost ratios
    up to 99 and ℓ1 up to 516 on this shape, and rank regression 1.77 at n = 7."""
    fs, b, A, bh = _problem(rng, [(4, 3), (5, 3)], xp, noise="laplace")
    exact = kron.lstsq(fs, b, method="exact")
    for m in (None, 20, 500):
        res = kron.lstsq(fs, b, m=m, seed=1)
        assert res.info["rows"] == 20
        np.testing.assert_allclose(to_numpy(res.x), to_numpy(exact.x), rtol=1e-10, atol=1e-12)
        lp = kron.lp_regression(fs, b, 1, m=m, seed=1)
        assert lp.info["rows_stage1"] == 0 and lp.info["rows_stage2"] == 20 and lp.cost == pytest.approx(_l1_opt(A, bh), rel=1e-9)
    A7, b7 = rng.standard_normal((7, 5)), rng.standard_normal(7)
    ref = kron.rank_regression(xp.asarray(A7), xp.asarray(b7), method="exact")
    res = kron.rank_regression(xp.asarray(A7), xp.asarray(b7), seed=1)  # default m = 49 >= 21 pairs
    assert res.info["pairs"] == 21 and res.cost == pytest.approx(ref.cost, rel=1e-9)


def test_lstsq_sampling_follows_the_factor_leverage(rng):
    """Coherent factors (a few rows of leverage near 1): sampling by the product of factor
    leverage scores stays within 1.02 of the exact solve at m = 800 (measured max 1.008 over
    6 seeds); uniform sampling of the same size measured up to 1.23 and passed the older tests."""
    for s in range(3):
        g = np.random.default_rng(s)
        F1 = g.standard_normal((300, 3))
        F1[:3] *= 30.0
        F2 = g.standard_normal((200, 3))
        F2[:2] *= 30.0
        K = kron.KroneckerMatrix([F1, F2])
        b = K @ g.standard_normal(9) + g.standard_normal(K.shape[0])
        exact = kron.lstsq([F1, F2], b, method="exact").cost
        assert kron.lstsq([F1, F2], b, m=800, seed=s).cost <= 1.02 * exact


@pytest.mark.parametrize("q", list(SHAPES))
def test_residual_slabs_cover_every_row_once(xp, rng, monkeypatch, q):
    """The full-data cost and stage 2's residual mass are taken in slabs of the first factor's
    rows (so Ax and the residual are never held whole): with slabs of five rows (CPU; the GPU
    takes one), they equal the explicit residual for dense 1-D and 2-D b, a sparse b, p = 1
    and p = 2."""
    import scipy.sparse as sp

    from gpusketch.kron import regression
    from gpusketch.kron.matrix import KroneckerMatrix

    fs = _factors(rng, SHAPES[q], xp)
    K, A = KroneckerMatrix(fs), _full(fs)
    R = A.shape[0] // fs[0].shape[0]
    monkeypatch.setattr(regression, "_SLAB_BYTES", 8 * R * 5)  # five rows of A_1 per slab (the CPU's)
    slabs = list(regression._residual_slabs(K, xp.zeros(A.shape[1]), regression._Target(xp.zeros(A.shape[0]), A.shape[0], xp)))
    assert len(slabs) == (-(-fs[0].shape[0] // 5) if xp is np else 1)
    x, X = rng.standard_normal(A.shape[1]), rng.standard_normal((A.shape[1], 2))
    b = rng.standard_normal(A.shape[0])
    b[rng.random(A.shape[0]) < 0.7] = 0.0
    B = rng.standard_normal((A.shape[0], 2))
    for bb in (xp.asarray(b), sparse_module(xp).coo_matrix(sp.coo_matrix(b[:, None]))):
        tgt = regression._Target(bb, A.shape[0], xp)
        r = A @ x - b
        assert regression._cost(K, xp.asarray(x), tgt, 2) == pytest.approx(np.linalg.norm(r), rel=1e-13)
        assert regression._cost(K, xp.asarray(x), tgt, 1) == pytest.approx(np.abs(r).sum(), rel=1e-13)
        np.testing.assert_allclose(to_numpy(regression._residual_mass(K, xp.asarray(x), tgt, 1.5)), np.abs(r) ** 1.5,
                                   rtol=1e-12, atol=1e-12 * np.abs(r).max() ** 1.5)  # a residual of 1e-8 cancels
    cost2 = to_numpy(regression._cost(K, xp.asarray(X), regression._Target(xp.asarray(B), A.shape[0], xp), 2))
    np.testing.assert_allclose(cost2, np.linalg.norm(A @ X - B, axis=0), rtol=1e-13)


def test_low_rank_v_does_not_hang_on_the_svd_signs(monkeypatch):
    """The factor singular vectors behind V carry a fixed sign (largest |entry| positive), so
    an SVD routine returning other signs (cuSOLVER against LAPACK) gives the same V."""
    rng = np.random.default_rng(7)
    fs = [rng.standard_normal((80, 5)), rng.standard_normal((60, 4))]
    want = kron.low_rank(fs, 3, seed=2).V
    flip_svd_signs(monkeypatch)
    np.testing.assert_allclose(kron.low_rank(fs, 3, seed=2).V, want, rtol=1e-12, atol=1e-15)


def test_factors_with_columns_in_other_units_as_unscaled(xp):
    # Factor columns scaled 1e-8 .. 1e8: the factor pseudo-inverses take full column rank
    # from the factors with unit columns, so every method's cost is the unscaled problem's
    # (the rule on the factors themselves kept ranks 3 and 2, rank(A) 6 of 12, with a warning;
    # in another draw "exact" and "sketch" cost 1.35x).
    rng = np.random.default_rng(31)
    F1, F2 = rng.standard_normal((60, 4)), rng.standard_normal((50, 3))
    b = np.kron(F1, F2) @ rng.standard_normal(12) + rng.standard_normal(3000)
    scaled = [xp.asarray(F1 * np.logspace(-8, 8, 4)), xp.asarray(F2 * np.logspace(-7, 7, 3))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.RankDeficientWarning)
        for method in ("exact", "sampling", "sketch"):
            ref = kron.lstsq([F1, F2], b, method=method, m=600, seed=1)
            res = kron.lstsq(scaled, xp.asarray(b), method=method, m=600, seed=1)
            np.testing.assert_allclose(float(res.cost), float(ref.cost), rtol=1e-9)
