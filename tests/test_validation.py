"""Bad input raises ValueError/TypeError naming the argument, before any work; inputs stay unmodified."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg  # noqa: F401  (sp.linalg)

import gpusketch as gs
from conftest import sparse_module, to_numpy

CS = gs.CountSketch(4, 10, seed=1)

CONSTRUCTOR_CASES = [
    (lambda: gs.CountSketch(0, 10), ValueError, "m"),
    # sketch rows are 32-bit ints in the kernels (and hash buckets are 31-bit)
    (lambda: gs.CountSketch(2**31, 10), ValueError, "m must be <= 2147483647 .*32-bit"),
    (lambda: gs.SparseSign(2**31, 10), ValueError, "m must be <= 2147483647"),
    (lambda: gs.Gaussian(2**31, 10), ValueError, "m must be <= 2147483647"),
    (lambda: gs.operators.MultiLevelCountSketch(2**30, 10, 2), ValueError, "r \\* levels must be <= 2147483647"),
    (lambda: gs.CountSketch(-3, 10), ValueError, "m"),
    (lambda: gs.CountSketch(4.0, 10), TypeError, "m"),
    (lambda: gs.CountSketch(4, 0), ValueError, "n"),
    (lambda: gs.CountSketch(4, "10"), TypeError, "n"),
    (lambda: gs.CountSketch(True, 10), TypeError, "m"),
    (lambda: gs.CountSketch(4, 10, seed=-1), ValueError, "seed"),
    (lambda: gs.CountSketch(4, 10, seed=2**64), ValueError, "seed"),
    (lambda: gs.CountSketch(4, 10, seed=1.5), TypeError, "seed"),
    (lambda: gs.CountSketch(4, 10, seed=np.random.default_rng(0)), TypeError, "seed"),
    (lambda: gs.CountSketch(4, 10, seed="7"), TypeError, "seed"),
    (lambda: gs.SparseSign(4, 10, nnz=5), ValueError, "nnz"),
    (lambda: gs.SparseSign(4, 10, nnz=0), ValueError, "nnz"),
    (lambda: gs.SparseSign(4, 10, nnz=2.5), TypeError, "nnz"),
    (lambda: gs.Gaussian(0, 10), ValueError, "m"),
    (lambda: gs.SRHT(17, 16), ValueError, "m"),
    (lambda: gs.SRHT(4, -1), ValueError, "n"),
    (lambda: gs.Sampling([0, 10], 10), ValueError, "indices"),
    (lambda: gs.Sampling([-1, 2], 10), ValueError, "indices"),
    (lambda: gs.Sampling([0.5, 2.0], 10), TypeError, "indices"),
    (lambda: gs.Sampling([], 10), ValueError, "indices"),
    (lambda: gs.Sampling([[0, 1]], 10), ValueError, "indices"),
    (lambda: gs.Sampling([0, 1], 10, scale=[1.0]), ValueError, "scale"),
    (lambda: gs.Sampling([0, 1], 10, scale=[1.0, np.nan]), ValueError, "scale"),
    (lambda: gs.Sampling([0, 1], 10, scale=2.0), TypeError, "scale"),
    (lambda: gs.Sampling([0, 1], 0), ValueError, "n"),
    # past 2^62 columns: an OverflowError from NumPy (SRHT's padding, the hash inputs)
    (lambda: gs.SRHT(4, 10**30), ValueError, "n must be <= 4611686018427387904"),
    (lambda: gs.CountSketch(4, 2**62 + 1), ValueError, "n must be <="),
    (lambda: gs.Gaussian(4, 10**30), ValueError, "n must be <="),
    (lambda: gs.FastEmbedding(4, 2**64), ValueError, "n must be <="),
    (lambda: gs.MultiLevelCountSketch(4, 10, 2, branching=float("inf")), ValueError, "branching"),
    (lambda: gs.FastEmbedding(4, 10, gamma="0.5"), ValueError, "gamma"),
    (lambda: gs.Kronecker([]), ValueError, "factors"),
    (lambda: gs.Kronecker(CS), TypeError, "factors"),
    (lambda: gs.Kronecker([CS, np.eye(3)]), TypeError, r"factors\[1\]"),
    (lambda: gs.Composed([CS, CS]), ValueError, "chain"),
    (lambda: gs.Composed([]), TypeError, "operators"),
    (lambda: gs.Composed([CS], scale="2"), TypeError, "scale"),
]

APPLY_CASES = [
    (lambda: CS @ np.ones((9, 2)), ValueError, "rows"),
    (lambda: CS @ np.ones((10, 2, 2)), ValueError, "A"),
    (lambda: CS @ np.float64(3.0), TypeError, "scalar"),
    (lambda: CS @ 3.0, TypeError, "scalar"),
    (lambda: CS @ np.ones((10, 2), dtype=complex), TypeError, "complex"),
    (lambda: CS @ np.ones((10, 2), dtype=np.float16), TypeError, "float16"),
    (lambda: CS @ np.array([["a"]] * 10), TypeError, "dtype"),
    (lambda: CS @ np.array([object()] * 10), TypeError, "dtype"),
    (lambda: CS @ sp.csr_matrix(np.ones((9, 2))), ValueError, "rows"),
    (lambda: CS @ sp.csr_matrix(np.ones((10, 2), dtype=complex)), TypeError, "complex"),
    (lambda: CS @ {"a": 1}, TypeError, "A"),
    # scipy.sparse.linalg's operators are no sparse matrices (they were taken for one: no .tocsr)
    (lambda: CS @ sp.linalg.aslinearoperator(np.ones((10, 2))), TypeError, "A must be .* got MatrixLinearOperator"),
    (lambda: gs.lstsq(sp.linalg.aslinearoperator(np.ones((10, 2))), np.ones(10)), TypeError, "MatrixLinearOperator"),
    (lambda: CS @ CS, TypeError, "compose"),
    (lambda: CS @ CS.T, TypeError, r"CountSketch @ CountSketch\.T"),
    (lambda: np.ones((3, 9)) @ CS.T, ValueError, "columns"),
    (lambda: CS[:, 5:5], ValueError, "empty"),
    (lambda: CS[:, ::2], ValueError, "step"),
    (lambda: CS[1:2, :], TypeError, "column slices"),
    (lambda: CS[3], TypeError, "column slices"),
]


@pytest.mark.parametrize("fn,exc,word", CONSTRUCTOR_CASES + APPLY_CASES)
def test_bad_input_raises_named_error(fn, exc, word):
    with pytest.raises(exc, match=word):
        fn()


def test_enough_cases():
    assert len(CONSTRUCTOR_CASES) + len(APPLY_CASES) >= 30


def test_memory_check_names_size():
    # A todense() of 10^6 x 10^7 float64 (~72 TiB) is refused before allocating.
    with pytest.raises(MemoryError, match="todense"):
        gs.CountSketch(10**6, 10**7, seed=1).todense()


def test_inputs_not_modified():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((64, 3))
    A_int = rng.integers(0, 5, (64, 3))
    idx = np.array([3, 7, 7])
    sc = np.array([1.0, 2.0, 3.0])
    copies = [x.copy() for x in (A, A_int, idx, sc)]
    for S in (gs.CountSketch(8, 64, seed=1), gs.SRHT(8, 64, seed=1), gs.Gaussian(8, 64, seed=1),
              gs.Sampling(idx, 64, scale=sc)):
        S @ A
        S @ A_int
        A.T @ S.T
    for x, c in zip((A, A_int, idx, sc), copies):
        np.testing.assert_array_equal(x, c)


@pytest.mark.gpu
def test_mixed_numpy_cupy_raises_type_error(cupy_or_fake):
    cupy = cupy_or_fake
    with pytest.raises(TypeError, match="mixed host and device"):
        gs.Sampling(np.array([0, 1]), 4, scale=cupy.ones(2))
    from gpusketch._backend import array_namespace

    with pytest.raises(TypeError, match="numpy.*cupy|cupy.*numpy"):
        array_namespace(np.ones(2), cupy.ones(2))


def test_sketch_too_large_for_memory_names_the_size(xp):
    # m * d * 8 bytes = 1.7e12 bytes (m at its 32-bit limit): more than any host or device has free.
    S = gs.CountSketch(2**31 - 1, 10, seed=1)
    with pytest.raises(MemoryError, match=r"sketch output \(2147483647, 100\) needs 1600\.00 GiB but only"):
        S @ xp.ones((10, 100))
    # and the adjoint's output: n x d = 1e11 x 100 as well
    with pytest.raises(MemoryError, match=r"adjoint output \(100000000000 rows\) needs 74505\.81 GiB"):
        gs.SparseSign(10, 10**11, nnz=2, seed=1).T @ xp.ones((10, 100))


_A = np.random.default_rng(1).standard_normal((60, 4))
_b = np.random.default_rng(2).standard_normal(60)

SOLVER_CASES = [
    # A without rows or columns: a solver has no answer to give (rank has: 0).
    (lambda: gs.lstsq(np.zeros((60, 0)), _b), ValueError, "A is empty"),
    (lambda: gs.lstsq(np.zeros((60, 0)), _b, method="direct"), ValueError, "A is empty"),
    (lambda: gs.leverage_scores(np.zeros((60, 0))), ValueError, "A is empty"),
    (lambda: gs.lewis_weights(np.zeros((0, 4)), 1), ValueError, "A is empty"),
    (lambda: gs.robust.heavy_coordinates(np.zeros((0, 4)), 3), ValueError, "A is empty"),
    (lambda: gs.robust.tukey_regression(np.zeros((60, 0)), _b, 1.0), ValueError, "A is empty"),
    # A = 0 has no leverage distribution to sample from
    (lambda: gs.leverage_sample(np.zeros((60, 4)), 10, seed=1), ValueError, "is zero"),
    # scalar parameters: finite, positive, numbers
    (lambda: gs.lstsq(_A, _b, tol=float("inf")), ValueError, "tol"),
    (lambda: gs.lstsq(_A, _b, tol="1e-8"), ValueError, "tol"),
    (lambda: gs.lstsq(_A, _b, maxiter=2.5), TypeError, "maxiter"),
    (lambda: gs.lstsq(_A, _b, maxiter=0), ValueError, "maxiter"),
    (lambda: gs.robust.TukeyLoss(float("inf")), ValueError, "tau"),
    (lambda: gs.robust.HuberLoss(float("inf")), ValueError, "tau"),
    (lambda: gs.robust.TukeyLoss(3e200), ValueError, "tau"),  # τ² overflows (was an OverflowError in IRLS)
    (lambda: gs.robust.ClippedLpLoss(1e-200), ValueError, "tau"),  # τ² underflows
    (lambda: gs.robust.irls(_A, _b, gs.robust.TukeyLoss(1.0), tol=True), ValueError, "tol"),
    (lambda: gs.fair.regression([_A, _A], [_b, _b], tol=float("nan")), ValueError, "tol"),
    # were raw comparisons: "'<' not supported between instances of 'int' and 'str'"
    (lambda: gs.leverage_sample(_A, 10, gamma="x"), ValueError, "gamma"),
    (lambda: gs.leverage_sample(_A, 10, gamma=None), ValueError, "gamma"),
    (lambda: gs.low_rank(_A, 2, eps=None), ValueError, "eps"),
    (lambda: gs.low_rank(_A, 2, eps=[0.1]), ValueError, "eps"),
    # named as the argument the caller gave, not as the OSNAP's m
    (lambda: gs.leverage_sample(_A, 10, osnap=2**63), ValueError, "osnap"),
    # SciPy's SLSQP raised SystemError past a C int
    (lambda: gs.fair.regression([_A, _A], [_b, _b], maxiter=2**63), ValueError, "maxiter"),
    (lambda: gs.robust.tukey_regression(_A, _b, 1.0, method="oblivious", branching=float("inf")), ValueError,
     "branching"),
    (lambda: gs.lewis_weights(_A, float("nan")), ValueError, "p must lie in"),
]


@pytest.mark.parametrize("fn,exc,word", SOLVER_CASES)
def test_solver_bad_input_raises_named_error(fn, exc, word):
    with pytest.raises(exc, match=word):
        fn()


def test_square_lstsq_with_an_explicit_sketch_size():
    A = np.random.default_rng(3).standard_normal((6, 6))
    x = gs.lstsq(A, _b[:6], m=40, seed=1).x
    np.testing.assert_allclose(A @ x, _b[:6], atol=1e-10)


def test_zero_matrix_has_zero_leverage_and_lewis_weights(xp):
    Z = xp.zeros((60, 4))
    for w in (gs.leverage_scores(Z, seed=1), gs.lewis_weights(Z, 1, seed=1), gs.lewis_weights(Z, 1.5, seed=1)):
        assert w.shape == (60,) and float(abs(w).max()) == 0.0


def test_rank_of_an_empty_matrix_is_zero():
    assert gs.rank(np.zeros((60, 0))) == 0 and gs.rank(np.zeros((0, 4))) == 0
    assert len(gs.independent_rows(np.zeros((0, 4)))) == 0


def test_sampled_kronecker_regression_too_large_names_the_size():
    # 10^12 draws need ~64 TB of indices and weights: refused before drawing.
    F = [np.random.default_rng(3).standard_normal((6, 2)), np.random.default_rng(4).standard_normal((10, 3))]
    with pytest.raises(MemoryError, match="sampling m="):
        gs.kron.lstsq(F, np.ones(60), m=10**12, seed=1)
    with pytest.raises(MemoryError, match="sampling m="):
        gs.kron.lp_regression(F, np.ones(60), m=10**12, seed=1)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_array_likes_become_plain_arrays():
    """np.matrix (whose rows stay 2-D) and pandas objects work as SciPy takes them;
    a Dask array is pointed to gpusketch.dask rather than computed whole."""
    A = np.random.default_rng(4).standard_normal((300, 4))
    b = np.random.default_rng(5).standard_normal(300)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    likes = [(np.asmatrix(A), b)]
    pd = pytest.importorskip("pandas")
    likes.append((pd.DataFrame(A), pd.Series(b)))
    for A2, b2 in likes:
        np.testing.assert_allclose(gs.lstsq(A2, b2, seed=1).x, x, rtol=1e-9)
        np.testing.assert_allclose(gs.robust.tukey_regression(A2, b2, 10.0, method="full", seed=2).x,
                                   gs.robust.tukey_regression(A, b, 10.0, method="full", seed=2).x)
        assert type(gs.CountSketch(20, 300, seed=1) @ A2) is np.ndarray
        assert gs.leverage_scores(A2, exact=True).shape == (300,)
    da = pytest.importorskip("dask.array")
    with pytest.raises(TypeError, match="gpusketch.dask"):
        gs.lstsq(da.from_array(A), b)
    with pytest.raises(TypeError, match=r"b is a Dask array.*or pass b.compute\(\)"):  # no Dask kron call
        gs.kron.lstsq([A[:20], A[:15]], da.from_array(np.ones(300)))


@pytest.mark.parametrize("dtype", [">f8", ">f4", ">i4"])
def test_big_endian_inputs_compute_in_native_order(dtype):
    """Arrays read from big-endian files are computed (and returned) in native byte
    order, with the results of native inputs: kept as given, outputs came back
    big-endian and the multi-level sketch's adjoint (SciPy sparse) refused them."""
    rng = np.random.default_rng(6)
    A = (rng.standard_normal((2000, 5)) * 10).astype(dtype)
    b = (A.astype(np.float64) @ np.ones(5) + rng.standard_normal(2000)).astype(dtype)
    An, bn = A.astype(A.dtype.newbyteorder("=")), b.astype(b.dtype.newbyteorder("="))
    for S in (gs.CountSketch(40, 2000, seed=1), gs.SRHT(40, 2000, seed=1), gs.Gaussian(40, 2000, seed=1),
              gs.MultiLevelCountSketch(20, 2000, 3, seed=1)):
        SA = S @ A
        assert SA.dtype.isnative
        np.testing.assert_array_equal(SA, S @ An)
        np.testing.assert_array_equal(S.T @ SA, S.T @ (S @ An))
    for solve in (lambda A, b: gs.lstsq(A, b, seed=1).x,
                  lambda A, b: gs.robust.irls(A, b, gs.robust.TukeyLoss(10.0), seed=2).x,
                  lambda A, b: gs.leverage_scores(A, seed=3)):
        out = solve(A, b)
        assert out.dtype.isnative
        np.testing.assert_array_equal(out, solve(An, bn))


_RNG = np.random.default_rng(12)
_AR = _RNG.standard_normal((600, 5))
_BR = _AR @ np.ones(5) + _RNG.standard_normal(600)
_BR[:30] = 40.0
_FR = [_RNG.standard_normal((30, 3)), _RNG.standard_normal((20, 2))]
_BK = _RNG.standard_normal(600)
REPLAY = {
    "lstsq": (lambda s: gs.lstsq(_AR, _BR, method="sketch", seed=s), "x"),
    "lp_regression": (lambda s: gs.lp_regression(_AR, _BR, 1, seed=s), "x"),
    "low_rank": (lambda s: gs.low_rank(_AR, 2, seed=s), "V"),
    "tukey sampling": (lambda s: gs.robust.tukey_regression(_AR, _BR, 3.0, seed=s), "x"),
    "tukey oblivious": (lambda s: gs.robust.tukey_regression(_AR, _BR, 3.0, method="oblivious", seed=s), "x"),
    "irls": (lambda s: gs.robust.irls(_AR, _BR, gs.robust.TukeyLoss(3.0), seed=s), "x"),
    "fair low_rank": (lambda s: gs.fair.low_rank([_AR, _AR[:100]], 2, seed=s), "V"),
    "fair column_subset": (lambda s: gs.fair.column_subset([_AR, _AR[:100]], 2, seed=s), "columns"),
    "kron lstsq": (lambda s: gs.kron.lstsq(_FR, _BK, seed=s), "x"),
    "kron lp_regression": (lambda s: gs.kron.lp_regression(_FR, _BK, 1, seed=s), "x"),
    "kron low_rank": (lambda s: gs.kron.low_rank(_FR, 2, seed=s), "V"),
    "kron rank_regression": (lambda s: gs.kron.rank_regression(_AR[:100], _BR[:100], seed=s), "x"),
}


@pytest.mark.parametrize("name", list(REPLAY))
def test_seed_none_is_recorded_in_info_and_replays(name):
    """DESIGN: seed=None draws a seed and records it, so any run can be replayed."""
    call, field = REPLAY[name]
    first = call(None)
    again = call(first.info["seed"])
    np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    import json

    json.dumps(first.info)  # plain data, as a log or a bench record stores it (kron.low_rank's held an array)


def _timed_calls():
    from gpusketch import fair, kron

    rng = np.random.default_rng(12)
    A, b = rng.standard_normal((2000, 8)), rng.standard_normal(2000)
    F = [rng.standard_normal((60, 3)), rng.standard_normal((50, 2))]
    bk = rng.standard_normal(3000)
    groups = [rng.standard_normal((80, 10)), rng.standard_normal((60, 10))]
    return {
        "lstsq-sketch": lambda: gs.lstsq(A, b, method="sketch", seed=1),
        "lstsq-precondition": lambda: gs.lstsq(A, b, seed=1),
        "lstsq-direct": lambda: gs.lstsq(A, b, method="direct"),
        "low_rank": lambda: gs.low_rank(A, 2, eps=0.5, seed=1),
        "kron.lstsq": lambda: kron.lstsq(F, bk, m=200, seed=1),
        "kron.lp_regression": lambda: kron.lp_regression(F, bk, 1, m=200, seed=1),
        "kron.lp_regression-zero": lambda: kron.lp_regression([F[0], 0 * F[1]], bk, 1, m=200, seed=1),
        "kron.lp_regression-whole": lambda: kron.lp_regression(F, bk, 1, m=3000, seed=1),  # m >= N: one LP
        "fair.low_rank": lambda: fair.low_rank(groups, 2, seed=1),
    }


@pytest.mark.parametrize("name", list(_timed_calls()))
def test_reported_timings_are_durations_within_the_call(name):
    """info["timings"] holds phase durations: each >= 0 and together no more than the call took."""
    import time

    call = _timed_calls()[name]
    t0 = time.perf_counter()
    res = call()
    wall = time.perf_counter() - t0
    t = res.info["timings"]
    assert t and all(v >= 0 for v in t.values()) and sum(t.values()) <= wall, t


@pytest.mark.parametrize("order", ["C", "F", "strided", "1-D"])
def test_check_finite_in_blocks_finds_every_entry(monkeypatch, order):
    """Host arrays are checked a block at a time (no boolean copy of A): a NaN or Inf in any
    block, the last one short, of a C, F, strided or 1-D array is found."""
    from gpusketch import _backend

    monkeypatch.setattr(_backend, "_FINITE_BLOCK_BYTES", 8 * 7 * 3)  # three rows of 7 (or 21 entries)
    base = np.arange(100 * 14, dtype=np.float64).reshape(100, 14)
    for bad in (np.nan, np.inf, -np.inf):
        for at in ((0, 0), (50, 3), (99, 6)):
            A = base.copy()
            if order == "1-D":
                A = A[:, :7].ravel().copy()
                A[at[0] * 7 + at[1]] = bad
            else:
                A[at[0], 2 * at[1] if order == "strided" else at[1]] = bad
                A = {"C": A[:, :7], "F": np.asfortranarray(A[:, :7]), "strided": A[:, ::2]}[order]
            assert not _backend._all_finite(A, np)
            with pytest.raises(ValueError, match="A contains NaN or Inf"):
                _backend.check_finite(A, "A")
    clean = base[:, :7] if order != "1-D" else base.ravel()
    assert _backend._all_finite(np.asfortranarray(clean) if order == "F" else clean, np)


def _solver_calls():
    from gpusketch import fair, kron, robust

    M = robust.TukeyLoss(3.0)
    return {
        "lstsq-sketch": lambda d: gs.lstsq(d["A"], d["b"], method="sketch", seed=1),
        "lstsq-precondition": lambda d: gs.lstsq(d["A"], d["b"], seed=1),
        "lstsq-direct": lambda d: gs.lstsq(d["A"], d["b"], method="direct"),
        "lstsq-direct-float32": lambda d: gs.lstsq(d["A32"], d["b32"], method="direct"),
        "lstsq-precondition-sparse": lambda d: gs.lstsq(d["As"], d["b"], seed=1),
        "lstsq-direct-sparse": lambda d: gs.lstsq(d["As"], d["b"], method="direct"),
        "leverage_scores": lambda d: gs.leverage_scores(d["A"], seed=1),
        "leverage_scores-exact": lambda d: gs.leverage_scores(d["A"], exact=True),
        "lewis_weights": lambda d: gs.lewis_weights(d["A"], 1, seed=1),
        "lp_regression-1": lambda d: gs.lp_regression(d["A"], d["b"], 1, seed=1),
        "lp_regression-1.5": lambda d: gs.lp_regression(d["A"], d["b"], 1.5, seed=1),
        "rank": lambda d: gs.rank(d["A"], seed=1),
        "independent_rows": lambda d: gs.independent_rows(d["A"], seed=1),
        "low_rank": lambda d: gs.low_rank(d["A"], 2, seed=1),
        "randomized_svd": lambda d: gs.randomized_svd(d["A"], 2, seed=1),
        "irls-weighted": lambda d: robust.irls(d["A"], d["b"], M, weights=d["w"], seed=1),
        "tukey-sampling": lambda d: robust.tukey_regression(d["A"], d["b"], 3.0, seed=1),
        "tukey-oblivious": lambda d: robust.tukey_regression(d["A"], d["b"], 3.0, method="oblivious", seed=1),
        "tukey-full": lambda d: robust.tukey_regression(d["A"], d["b"], 3.0, method="full", seed=1),
        "heavy_coordinates": lambda d: robust.heavy_coordinates(d["A"], 4, seed=1),
        "kron.lstsq": lambda d: kron.lstsq(d["F"], d["bk"], seed=1),
        "kron.lstsq-sketch": lambda d: kron.lstsq(d["F"], d["bk"], method="sketch", seed=1),
        "kron.lstsq-exact": lambda d: kron.lstsq(d["F"], d["bk"], method="exact"),
        "kron.lp_regression": lambda d: kron.lp_regression(d["F"], d["bk"], 1, seed=1),
        "kron.rank_regression": lambda d: kron.rank_regression(d["A"][:100], d["b"][:100], seed=1),
        "kron.low_rank": lambda d: kron.low_rank(d["F"], 2, seed=1),
        "fair.low_rank": lambda d: fair.low_rank([d["A"], d["A"][:100]], 2, seed=1),
        "fair.column_subset": lambda d: fair.column_subset([d["A"], d["A"][:100]], 2, seed=1),
        "fair.regression": lambda d: fair.regression([d["A"][:300], d["A"][300:]], [d["b"][:300], d["b"][300:]]),
        "fair.cost": lambda d: fair.cost([d["A"], d["A"][:100]], d["A"][:2]),
    }


def _snapshot(data):
    """Host copies of every array in ``data`` (lists of factors, and sparse matrices' parts
    included), each with the name of its input."""
    out = []
    for k, v in data.items():
        for x in v if isinstance(v, list) else [v]:
            sparse = sp.issparse(x) or type(x).__module__.startswith("cupyx")
            out += [(k, to_numpy(a).copy()) for a in ((x.data, x.indices, x.indptr) if sparse else (x,))]
    return out


@pytest.mark.parametrize("name", list(_solver_calls()))
def test_solvers_leave_their_inputs_unmodified(xp, name):
    """DESIGN: nothing the caller passed is modified in place, on either device.

    Row scaling and casts have in-place shortcuts on the solvers' own copies;
    one taken on a view of the caller's array would pass every accuracy test of
    a single call and corrupt the caller's data."""
    rng = np.random.default_rng(21)
    A = rng.standard_normal((600, 5))
    b = A @ np.ones(5) + rng.standard_normal(600)
    b[:30] = 40.0
    As = sp.random(600, 5, density=0.6, format="csr", random_state=3)
    F = [rng.standard_normal((30, 3)), rng.standard_normal((20, 2))]
    host = {"A": A, "b": b, "A32": A.astype(np.float32), "b32": b.astype(np.float32), "As": As,
            "w": rng.uniform(0.5, 2.0, 600), "bk": rng.standard_normal(600)}
    data = {k: (sparse_module(xp).csr_matrix(v) if sp.issparse(v) else xp.asarray(v)) for k, v in host.items()}
    data["F"] = [xp.asarray(f) for f in F]
    before = _snapshot(data)
    _solver_calls()[name](data)
    for (k, x), (_, y) in zip(before, _snapshot(data), strict=True):
        np.testing.assert_array_equal(y, x, err_msg=f"{name} modified its input {k}")
