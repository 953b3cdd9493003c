"""Exactness of every operator: against todense(), chunked, adjoint, right sketch, CPU vs GPU."""

import numpy as np
import pytest
import scipy.sparse.linalg as spla

import _fake_cupy
import gpusketch as gs
from conftest import HAS_GPU, gpu, sparse_module, to_numpy

N = 300

FACTORIES = {
    "countsketch": lambda n: gs.CountSketch(17, n, seed=11),
    "sparsesign": lambda n: gs.SparseSign(24, n, nnz=5, seed=12),
    "sparsesign_deterministic": lambda n: gs.SparseSign(24, n, nnz=5, seed=12, deterministic=True),
    "gaussian": lambda n: gs.Gaussian(9, n, seed=13),
    "srht": lambda n: gs.SRHT(20, n, seed=14),
    "fast_embedding": lambda n: gs.FastEmbedding(24, n, k=4, seed=15),
    "composed": lambda n: gs.Composed([gs.Gaussian(7, 30, seed=16), gs.SRHT(30, n, seed=17)], scale=0.5),
    "sampling": lambda n: gs.Sampling(np.array([0, 5, 5, n - 1, 77, 150]), n, scale=np.arange(1.0, 7.0)),
    "multilevel": lambda n: gs.MultiLevelCountSketch(6, n, 4, branching=3.0, seed=18),
    "kron_countsketch": lambda n: gs.Kronecker([gs.CountSketch(5, 12, seed=1), gs.CountSketch(4, 25, seed=2)]),
    "kron_mixed": lambda n: gs.Kronecker([gs.SparseSign(6, 12, nnz=2, seed=3), gs.Gaussian(4, 25, seed=4)]),
    "kron_three": lambda n: gs.Kronecker(
        [gs.CountSketch(3, 5, seed=5), gs.SRHT(4, 6, seed=6), gs.CountSketch(2, 10, seed=7)]
    ),
}
OPS = list(FACTORIES)


def make(kind):
    return FACTORIES[kind](N)


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


def dense_inputs(xp, rng, dtype):
    A = rng.standard_normal((N, 7)).astype(dtype)
    big = rng.standard_normal((N, 16)).astype(dtype)
    yield "C", xp.asarray(A)
    yield "F", xp.asfortranarray(xp.asarray(A))
    yield "view", xp.asarray(big)[:, 3:14:2]  # non-contiguous columns
    yield "rowstep", xp.asarray(rng.standard_normal((2 * N, 5)).astype(dtype))[::2]
    yield "vector", xp.asarray(A[:, 0].copy())
    yield "wide", xp.asarray(rng.standard_normal((N, 40)).astype(dtype))


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_apply_dense_matches_todense(xp, rng, kind, dtype):
    S = make(kind)
    D = S.todense()
    for name, A in dense_inputs(xp, rng, dtype):
        before = to_numpy(A).copy()
        Y = S @ A
        assert type(Y) is type(A), name
        assert Y.dtype == dtype and Y.shape == (S.shape[0],) + A.shape[1:], name
        ref = D @ to_numpy(A).astype(np.float64)
        np.testing.assert_allclose(to_numpy(Y), ref, **tol(dtype), err_msg=name)
        np.testing.assert_array_equal(to_numpy(A), before)  # input untouched


@pytest.mark.parametrize("kind", OPS)
def test_matmul_each_equals_one_product_at_a_time(xp, rng, kind):
    # Every layout and dtype at once (shared blocks for those on the row-block route, their own
    # routes for the rest), a sparse operand among them; each result as S @ X gives it.
    S = make(kind)
    ops = [A for dtype in (np.float64, np.float32) for _, A in dense_inputs(xp, rng, dtype)]
    ops.insert(3, sparse_module(xp).csr_matrix(xp.asarray((rng.random((N, 4)) < 0.3) * 1.0)))
    before = [to_numpy(X.toarray() if hasattr(X, "toarray") else X).copy() for X in ops]
    got = S.matmul_each(*ops)
    assert isinstance(got, tuple) and len(got) == len(ops)
    for i, (X, Y) in enumerate(zip(ops, got)):
        ref = S @ X
        assert type(Y) is type(ref) and Y.dtype == ref.dtype and Y.shape == ref.shape, i
        np.testing.assert_allclose(to_numpy(Y), to_numpy(ref), **tol(ref.dtype), err_msg=str(i))
        np.testing.assert_array_equal(to_numpy(X.toarray() if hasattr(X, "toarray") else X), before[i])


@pytest.mark.parametrize("make_op", [lambda n: gs.SparseSign(50, n, seed=3), lambda n: gs.CountSketch(50, n, seed=4),
                                     lambda n: gs.Gaussian(8, n, seed=5),
                                     lambda n: gs.MultiLevelCountSketch(20, n, 3, branching=4.0, seed=6)],
                         ids=["sparsesign", "countsketch", "gaussian", "multilevel"])
def test_matmul_each_shares_blocks_across_threads(rng, make_op):
    # Large enough for the CPU twins' two threads and many row blocks: the shared blocks'
    # partial sums add up to S @ X for every operand (the split now follows their total size).
    n = 1 << 18
    S = make_op(n)
    A, b = rng.standard_normal((n, 9)), rng.standard_normal(n)
    A32 = rng.standard_normal((n, 2)).astype(np.float32)
    for X, Y in zip((A, b, A32), S.matmul_each(A, b, A32)):
        np.testing.assert_allclose(Y, S @ X, **tol(X.dtype))


def test_matmul_each_hashes_once(rng, monkeypatch):
    # The point of matmul_each: S's hash words are computed once for (A, b), in lstsq too.
    from gpusketch import _kernels

    hashed = []
    real = _kernels._hash_values_np

    def counting(col0, n, *args):
        hashed.append(n)
        return real(col0, n, *args)

    monkeypatch.setattr(_kernels, "_hash_values_np", counting)
    n = 40000
    A, b = rng.standard_normal((n, 5)), rng.standard_normal(n)
    gs.SparseSign(60, n, seed=1).matmul_each(A, b)
    assert sum(hashed) == n
    hashed.clear()
    gs.lstsq(A, b, method="sketch", sketch="sparse_sign", seed=1)
    assert sum(hashed) == n


def test_matmul_each_refuses_bad_operands_before_any_work(rng):
    S = gs.SparseSign(20, 100, seed=1)
    A = rng.standard_normal((100, 3))
    with pytest.raises(TypeError, match="at least one operand"):
        S.matmul_each()
    with pytest.raises(ValueError, match=r"operands\[1\] has 99 rows"):
        S.matmul_each(A, A[:99])
    with pytest.raises(TypeError, match=r"operands\[1\]"):
        S.matmul_each(A, "b")
    with pytest.raises(TypeError, match="cannot compose"):
        S.matmul_each(A, gs.CountSketch(100, 5, seed=1))
    with _fake_cupy.installed() as cp:
        with pytest.raises(TypeError, match="mixed host and device inputs"):
            S.matmul_each(A, cp.asarray(A))


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_apply_sparse_matches_todense(xp, rng, kind, fmt):
    S = make(kind)
    spm = sparse_module(xp)
    A_host = (rng.random((N, 9)) < 0.2) * rng.standard_normal((N, 9))
    A = spm.csr_matrix(xp.asarray(A_host)).asformat(fmt)
    Y = S @ A
    np.testing.assert_allclose(to_numpy(Y), S.todense() @ A_host, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", OPS)
def test_right_sketch_and_rmatmul(xp, rng, kind):
    S = make(kind)
    D = S.todense()
    B = rng.standard_normal((6, N))
    np.testing.assert_allclose(to_numpy(xp.asarray(B) @ S.T), B @ D.T, rtol=1e-10, atol=1e-10)
    C = rng.standard_normal((4, S.shape[0]))
    np.testing.assert_allclose(to_numpy(xp.asarray(C) @ S), C @ D, rtol=1e-10, atol=1e-10)
    # Vectors on the left, as NumPy's matmul takes them: x @ S.T = S x, y @ S = Sᵀ y.
    np.testing.assert_allclose(to_numpy(xp.asarray(B[0]) @ S.T), D @ B[0], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(to_numpy(xp.asarray(C[0]) @ S), C[0] @ D, rtol=1e-10, atol=1e-10)
    Bs = sparse_module(xp).csr_matrix(xp.asarray(B * (rng.random(B.shape) < 0.3)))
    np.testing.assert_allclose(to_numpy(Bs @ S.T), to_numpy(Bs.toarray()) @ D.T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("nnz", [1, 3])
def test_right_sketch_of_a_tall_matrix_in_column_tiles(rng, monkeypatch, nnz):
    # X @ S.T = (S @ X.T).T, and X.T of a row-major tall X is column-major with few rows:
    # the CPU twin takes it a tile of whole columns at a time (each tile copied to row-major
    # in cache, threads owning tiles).  Many tiles here (tile bytes shrunk), a last short one.
    from gpusketch import _kernels

    monkeypatch.setattr(_kernels, "_COLUMN_TILE_BYTES", 300 * 8 * 7)  # 7 columns of X.T per tile
    X = rng.standard_normal((1003, 300))
    for S in (gs.SparseSign(40, 300, nnz=nnz, seed=2), gs.SparseSign(40, 300, nnz=nnz, seed=2, deterministic=True)):
        Y = X @ S.T
        np.testing.assert_allclose(Y, X @ S.todense().T, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(Y, X @ S.T)  # the same bits again
    F = np.asfortranarray(X.T[:, :50])  # a short column-major A sketched from the left
    np.testing.assert_allclose(S @ F, S.todense() @ F, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", OPS)
def test_dottest_adjoint(xp, rng, kind):
    # (S u) . v == u . (S^T v) for random u, v (PyLops' dottest).
    S = make(kind)
    u = rng.standard_normal((N, 3))
    v = rng.standard_normal((S.shape[0], 3))
    Su = to_numpy(S @ xp.asarray(u))
    Stv = to_numpy(S.T @ xp.asarray(v))
    assert abs(np.sum(Su * v) - np.sum(u * Stv)) <= 1e-10 * np.abs(Su).sum() * np.abs(v).sum()
    np.testing.assert_allclose(Stv, S.todense().T @ v, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(S.T.todense(), S.todense().T)
    assert S.T.T is S


@pytest.mark.parametrize("kind", OPS)
def test_chunked_sum_equals_whole(xp, rng, kind):
    S = make(kind)
    A = xp.asarray(rng.standard_normal((N, 4)))
    whole = to_numpy(S @ A)
    bounds = [0, 1, 38, 39, 128, 211, N]  # uneven, including a 1-row chunk
    total = sum(to_numpy(S[:, a:b] @ A[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
    np.testing.assert_allclose(total, whole, rtol=1e-10, atol=1e-10)
    D = S.todense()
    np.testing.assert_allclose(S[:, 38:211].todense(), D[:, 38:211], atol=1e-12)
    np.testing.assert_allclose(S[:, 38:211][:, 5:100].todense(), D[:, 43:138], atol=1e-12)
    # Adjoint of a slice: rows a..b of S^T.
    Y = rng.standard_normal((S.shape[0], 2))
    np.testing.assert_allclose(to_numpy(S[:, 38:211].T @ xp.asarray(Y)), D[:, 38:211].T @ Y, atol=1e-10)
    # 38:39 holds none of Sampling's indices: its adjoint is zero, not a reshape error.
    np.testing.assert_allclose(to_numpy(S[:, 38:39].T @ xp.asarray(Y)), D[:, 38:39].T @ Y, atol=1e-10)


@pytest.mark.parametrize("kind", OPS)
def test_adjoint_column_slices(xp, rng, kind):
    S = make(kind)
    St = S.T
    m = S.shape[0]
    Y = xp.asarray(rng.standard_normal((m, 3)))
    cut = m // 2
    total = to_numpy(St[:, :cut] @ Y[:cut]) + to_numpy(St[:, cut:] @ Y[cut:])
    np.testing.assert_allclose(total, to_numpy(St @ Y), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(St[:, :cut].todense(), S.todense()[:cut].T)
    np.testing.assert_allclose(St[:, :cut].T.todense(), S.todense()[:cut])


@pytest.mark.parametrize("kind", OPS)
def test_aslinearoperator(kind, rng):
    S = make(kind)
    L = spla.aslinearoperator(S)
    x = rng.standard_normal(N)
    y = rng.standard_normal(S.shape[0])
    np.testing.assert_allclose(L @ x, S.todense() @ x, atol=1e-10)
    np.testing.assert_allclose(L.rmatvec(y), S.todense().T @ y, atol=1e-10)
    np.testing.assert_allclose(L.matmat(np.eye(N)[:, :3]), S.todense()[:, :3], atol=1e-10)


@pytest.mark.parametrize("kind", OPS)
def test_immutable_and_deterministic(kind):
    S = make(kind)
    with pytest.raises(AttributeError):
        S.seed = 3
    with pytest.raises(AttributeError):
        S._m = 3
    np.testing.assert_array_equal(S.todense(), make(kind).todense())


@pytest.mark.parametrize("kind", OPS)
def test_repr_rebuilds_the_operator_and_its_slices(kind):
    # A slice used to print as a fresh operator of its own width, which is a
    # different operator (its hashes start at column 0; an SRHT's transform
    # length is the parent's); it now prints as the slice of its parent.
    S = make(kind)
    part = S[:, 38:211][:, 5:100]
    assert repr(part) == f"{S!r}[:, 38:211][:, 5:100]"
    assert repr(S[:, 0:N]) == repr(S)
    assert repr(S.T[:, 1:3]) == f"{S!r}.T[:, 1:3]"
    if kind != "sampling":  # Sampling's repr leaves out its index and scale arrays
        np.testing.assert_array_equal(eval(repr(S), vars(gs)).todense(), S.todense())
        np.testing.assert_array_equal(eval(repr(part), vars(gs)).todense(), part.todense())


def test_different_seeds_differ():
    for cls in (gs.CountSketch, gs.SparseSign, gs.Gaussian, gs.SRHT):
        assert not np.array_equal(cls(16, 64, seed=1).todense(), cls(16, 64, seed=2).todense())


def test_seed_none_is_recorded_and_replays():
    S = gs.CountSketch(8, 50)
    assert isinstance(S.seed, int)
    np.testing.assert_array_equal(gs.CountSketch(8, 50, seed=S.seed).todense(), S.todense())


def test_todense_xp(xp):
    S = gs.CountSketch(5, 9, seed=1)
    D = S.todense(xp=xp)
    np.testing.assert_array_equal(to_numpy(D), S.todense())


def test_integer_and_bool_inputs_upcast(xp):
    S = gs.CountSketch(5, 9, seed=1)
    A = xp.arange(18).reshape(9, 2)
    Y = S @ A
    assert Y.dtype == np.float64
    np.testing.assert_allclose(to_numpy(Y), S.todense() @ np.arange(18.0).reshape(9, 2))
    assert (S @ xp.ones(9, dtype=bool)).dtype == np.float64


def test_kronecker_matches_numpy_kron_order(rng):
    A1, A2 = rng.standard_normal((6, 2)), rng.standard_normal((5, 3))
    K = gs.Kronecker([gs.CountSketch(4, 6, seed=1), gs.CountSketch(3, 5, seed=2)])
    S1, S2 = K.factors[0].todense(), K.factors[1].todense()
    np.testing.assert_allclose(K @ np.kron(A1, A2), np.kron(S1 @ A1, S2 @ A2), atol=1e-12)


def test_kronecker_eight_factors_one_pass(xp, rng):
    # The one-pass kernel takes up to 8 hashing factors (its per-factor arrays have
    # GS_KRON_MAX = 8 entries, kernels/kronecker.cu): at exactly 8 it must still be the route, and exact.
    fs = [gs.CountSketch(2, 3, seed=s) for s in range(7)] + [gs.SparseSign(3, 2, nnz=2, seed=7)]
    K = gs.Kronecker(fs)
    assert K._one_pass and not gs.Kronecker(fs + [gs.CountSketch(2, 2, seed=8)])._one_pass
    dense = fs[0].todense()
    for F in fs[1:]:
        dense = np.kron(dense, F.todense())
    b = rng.standard_normal((K.shape[1], 2))
    np.testing.assert_allclose(to_numpy(K @ xp.asarray(b)), dense @ b, atol=1e-10)


@pytest.mark.parametrize("nnz", [(1, 1, 1), (3, 1, 2), (4, 2, 1)])
def test_kronecker_one_pass_equals_mode_products(xp, rng, nnz):
    def factor(m, n, z, seed):
        return gs.CountSketch(m, n, seed=seed) if z == 1 else gs.SparseSign(m, n, nnz=z, seed=seed)

    fs = [factor(7, 9, nnz[0], 1), factor(5, 11, nnz[1], 2), factor(3, 4, nnz[2], 3)]
    K = gs.Kronecker(fs)
    assert K._one_pass
    b = xp.asarray(rng.standard_normal((9 * 11 * 4, 3)))
    from gpusketch.operators.kronecker import _mode_products

    ref = _mode_products(fs, b.reshape(9, 11, 4, 3), xp).reshape(K.shape[0], 3)
    np.testing.assert_allclose(to_numpy(K @ b), to_numpy(ref), atol=1e-10)
    dense = np.kron(np.kron(fs[0].todense(), fs[1].todense()), fs[2].todense())
    np.testing.assert_allclose(to_numpy(K @ b[:, 0]), dense @ to_numpy(b[:, 0]), atol=1e-10)
    # Chunk exactness of the one-pass path: column slices add up to the whole.
    parts = K[:, :100] @ b[:100] + K[:, 100:] @ b[100:]
    np.testing.assert_allclose(to_numpy(parts), to_numpy(K @ b), atol=1e-10)
    # The CPU twin has two routes: factor by factor for dense B, every row hashed into
    # its prod(nnz) buckets for sparse B; they (and the GPU's single pass) agree.
    Bs = sparse_module(xp).csr_matrix(b * (xp.asarray(rng.random(b.shape)) < 0.5))
    np.testing.assert_allclose(to_numpy(K @ Bs), to_numpy(K @ Bs.toarray()), atol=1e-10)
    np.testing.assert_allclose(to_numpy(K[:, 37:301] @ Bs[37:301]), to_numpy(K[:, 37:301] @ Bs[37:301].toarray()),
                               atol=1e-10)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cpu_gpu_agree(rng, kind, dtype):
    import cupy

    S = make(kind)
    A = rng.standard_normal((N, 33)).astype(dtype)
    np.testing.assert_allclose((S @ cupy.asarray(A)).get(), S @ A, **tol(dtype))
    Y = rng.standard_normal((S.shape[0], 5)).astype(dtype)
    np.testing.assert_allclose((S.T @ cupy.asarray(Y)).get(), S.T @ Y, **tol(dtype))


@gpu
@pytest.mark.gpu
def test_gpu_large_countsketch_against_cpu(rng):
    import cupy

    n, d, m = 200_003, 64, 1024
    A = rng.standard_normal((n, d))
    S = gs.CountSketch(m, n, seed=5)
    np.testing.assert_allclose((S @ cupy.asarray(A)).get(), S @ A, rtol=1e-9, atol=1e-9)
    B = rng.standard_normal((n, 3)).astype(np.float32)
    np.testing.assert_allclose((gs.SparseSign(256, n, seed=6) @ cupy.asarray(B)).get(), gs.SparseSign(256, n, seed=6) @ B, rtol=1e-4, atol=1e-3)


@gpu
@pytest.mark.gpu
def test_gpu_srht_large_block(rng):
    import cupy

    n = (1 << 14) + 37  # dyadic blocks 2^14, 32, 4, 1; FWHT shared-memory + global stages
    S = gs.SRHT(64, n, seed=9)
    A = rng.standard_normal((n, 5))
    np.testing.assert_allclose((S @ cupy.asarray(A)).get(), S @ A, rtol=1e-9, atol=1e-9)


def test_cpu_srht_cache_blocks_match_dense(rng, monkeypatch):
    # The CPU cuts the dyadic blocks to _CPU_BLOCK_BYTES of A (but >= 4m rows): with
    # 256 bytes, 8 rows of 4 doubles -> blocks of 4m = 32 rows, so the transform, the
    # high-bit signs and the gathers are exercised on many blocks, a column slice and
    # the adjoint, against the explicit matrix.
    import gpusketch.operators.srht as srht

    monkeypatch.setattr(srht, "_CPU_BLOCK_BYTES", 256)
    n = 1000 + 7
    S = gs.SRHT(8, n, seed=21)
    assert len(S._blocks(32, np)) > 30 and max(k for _, k in S._blocks(32, np)) == 5
    A = rng.standard_normal((n, 4))
    D = S.todense()
    np.testing.assert_allclose(S @ A, D @ A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(S[:, 100:900] @ A[100:900], D[:, 100:900] @ A[100:900], rtol=1e-12, atol=1e-12)
    Y = rng.standard_normal((8, 3))
    np.testing.assert_allclose(S.T @ Y, D.T @ Y, rtol=1e-12, atol=1e-12)


def _hadamard_dense(L):
    i = np.arange(L)
    bits = np.bitwise_and(i[:, None], i[None, :])
    parity = np.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits >>= 1
    return 1.0 - 2.0 * parity


@pytest.mark.parametrize("L,m", [(1, 1), (2, 2), (64, 3), (1024, 2), (1024, 40), (4096, 64), (4096, 1500), (8192, 4096)])
def test_cpu_fwht_rows_pruned_transform_matches_dense(rng, L, m):
    """The CPU's pruned ``(H_L X)[rows]`` and its adjoint ``H_L[rows, :]ᵀ V`` against the
    explicit Hadamard matrix, for each split of L the plan picks (the direct GEMM, the
    blocked one, the full transform), rows repeated and at both ends, float32, 1-D."""
    from gpusketch import _kernels

    H = _hadamard_dense(L)
    rows = rng.integers(0, L, m)
    rows[0], rows[-1] = 0, L - 1
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 2e-3)):
        for shape in ((L, 5), (L,), (L, 2, 3)):
            X = rng.standard_normal(shape).astype(dtype)
            want = np.tensordot(H[rows], X.astype(np.float64), axes=1)
            got = _kernels.call("fwht_rows", np, X.copy(), rows)
            assert got.dtype == dtype and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(L))
            V = rng.standard_normal((m,) + shape[1:]).astype(dtype)
            got = _kernels.call("fwht_rows_adjoint", np, V, rows, L)
            assert got.dtype == dtype and got.shape == shape
            np.testing.assert_allclose(got, np.tensordot(H[rows].T, V.astype(np.float64), axes=1),
                                       rtol=tol, atol=tol * np.sqrt(m))


def test_cpu_fwht_rows_plans_cover_every_route(rng):
    """The cost model takes the direct GEMM for a few rows, a blocked split for more, and
    the full transform when rows fill the block (or the padded matrix would be too big)."""
    from gpusketch import _kernels

    def plan(rows, L):
        return _kernels._fwht_rows_plan(np.asarray(rows, dtype=np.int64).tobytes(), L, "<f8")

    assert plan([3, 77], 8192)[1] == 1  # one block: H_L's two rows times X
    p = plan(rng.choice(8192, 256, replace=False), 8192)
    assert p is not None and 1 < p[1] < 8192
    assert plan(np.arange(8192), 8192) is None
    assert plan(np.arange(1), 1) is None


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_cpu_srht_column_tiles_match_dense(rng, monkeypatch, layout):
    # Wide or non-C-order A goes through column tiles on threads (SRHT._by_column_tiles):
    # 48-byte tiles of 32-row blocks leave 1-column tiles of A, odd widths of the right
    # sketch, and the adjoint's, each against the explicit matrix.
    import gpusketch.operators.srht as srht

    monkeypatch.setattr(srht, "_CPU_BLOCK_BYTES", 256)
    monkeypatch.setattr(srht, "_CPU_TILE_BYTES", 3 * 32 * 8 // 2)
    widths = []
    add = srht.SRHT._add_blocks
    monkeypatch.setattr(srht.SRHT, "_add_blocks", lambda self, A, *a: widths.append(A.shape[1]) or add(self, A, *a))
    n = 1000 + 7
    S = gs.SRHT(8, n, seed=21)
    D = S.todense()
    A = rng.standard_normal((n, 2 * 11))
    A = {"C": A, "F": np.asfortranarray(A), "strided": A[:, ::2]}[layout]
    before = A.copy()
    np.testing.assert_allclose(S @ A, D @ A, rtol=1e-12, atol=1e-12)
    assert len(widths) > 1 and max(widths) < A.shape[1]
    np.testing.assert_allclose(S[:, 100:900] @ A[100:900], D[:, 100:900] @ A[100:900], rtol=1e-12, atol=1e-12)
    B = np.ascontiguousarray(A.T) if layout == "C" else A.T
    np.testing.assert_allclose(B @ S.T, B @ D.T, rtol=1e-12, atol=1e-12)
    Y = rng.standard_normal((8, 13))
    Y = {"C": Y, "F": np.asfortranarray(Y), "strided": rng.standard_normal((8, 26))[:, ::2]}[layout]
    np.testing.assert_allclose(S.T @ Y, D.T @ Y, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(A, before)
    np.testing.assert_array_equal(S @ A, S @ A)  # threads own tiles: the same bits every run


@pytest.mark.parametrize("kind", OPS)
def test_operators_pickle_and_copy(kind):
    # Dask (distributed) ships operators to its workers by pickle: the same seed, the same S.
    import copy
    import pickle

    S = make(kind)
    for T in (S, S[:, 10:200], S.T):
        for U in (pickle.loads(pickle.dumps(T)), copy.deepcopy(T)):
            assert type(U) is type(T) and repr(U) == repr(T)
            np.testing.assert_array_equal(U.todense(), T.todense())


@pytest.mark.parametrize("kind", OPS)
def test_cpu_twins_in_many_row_blocks_match_dense(kind, rng, monkeypatch):
    # The CPU twins cut A into row blocks of _CPU_BLOCK rows (a single block at the tests'
    # sizes) and the Gaussian into column blocks of a few MiB; with blocks of 32 rows
    # and 7 columns every offset (col0 + a) is exercised, against the explicit matrix.
    import scipy.sparse as sp

    from gpusketch import _kernels

    monkeypatch.setattr(_kernels, "_CPU_BLOCK", 32)
    monkeypatch.setattr(_kernels, "_gaussian_cols", lambda m, itemsize, block_bytes: 7)
    S = make(kind)
    D = S.todense()
    A = rng.standard_normal((N, 5))
    np.testing.assert_allclose(S @ A, D @ A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(S @ np.asfortranarray(A), D @ A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(S @ sp.csr_matrix(A), D @ A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(A.T @ S.T, A.T @ D.T, rtol=1e-12, atol=1e-12)
    Y = rng.standard_normal((S.shape[0], 3))
    np.testing.assert_allclose(S.T @ Y, D.T @ Y, rtol=1e-12, atol=1e-12)


def test_cpu_gaussian_with_a_large_result_takes_wide_blocks(rng, monkeypatch):
    """A result past _GAUSSIAN_WIDE_OUT_BYTES makes S's column blocks at least
    _GAUSSIAN_WIDE_MIN_COLS wide (fewer fresh m × d products); thresholds lowered here so
    that small shapes take the route, with blocks of 9 columns over 50 rows (a short last
    block), against the explicit matrix, for C- and F-order A, float64 and float32."""
    from gpusketch import _kernels

    widths = []
    cols = _kernels._gaussian_cols
    monkeypatch.setattr(_kernels, "_GAUSSIAN_WIDE_OUT_BYTES", 16 * 30 * 4)
    monkeypatch.setattr(_kernels, "_GAUSSIAN_WIDE_MIN_COLS", 9)
    monkeypatch.setattr(_kernels, "_row_blocks", lambda n, block: (widths.append(block), [
        (a, min(n, a + block)) for a in range(0, n, block)])[1])
    monkeypatch.setattr(_kernels, "_gaussian_cols", lambda m, itemsize, block: min(3, cols(m, itemsize, block)))
    S = gs.Gaussian(16, 50, seed=3)
    D = S.todense()
    for A in (rng.standard_normal((50, 30)), np.asfortranarray(rng.standard_normal((50, 30)))):
        np.testing.assert_allclose(S @ A, D @ A, rtol=1e-12, atol=1e-12)
        A32 = A.astype(np.float32)
        np.testing.assert_allclose(S @ A32, (D @ A32.astype(np.float64)), rtol=1e-5, atol=1e-5)
    assert widths[:4] == [9] * 4  # the wide route's blocks, both dtypes
    narrow = S @ rng.standard_normal((50, 2))  # a small result keeps 3-column blocks
    assert widths[-1] == 3 and narrow.shape == (16, 2)


def test_outputs_stay_on_input_device(xp, rng):
    S = gs.SparseSign(8, 20, nnz=2, seed=1)
    Y = S @ xp.asarray(rng.standard_normal((20, 2)))
    assert type(Y).__module__.split(".")[0] == xp.__name__


@pytest.mark.skipif(HAS_GPU, reason="checks the CPU-only message")
def test_no_gpu_needed_for_numpy_inputs():
    import sys

    S = gs.CountSketch(4, 10, seed=1)
    S @ np.ones((10, 2))
    assert "cupy" not in sys.modules


# (n, d, m, order): shapes that route the GPU scatter to each strategy in
# _kernels._hash_sketch_dense_gpu: bucket-sorted (rows >= 4 KiB), global atomics on
# rows, and column-major.
GPU_PATHS = [
    pytest.param(20_011, 600, 300, "C", id="sorted"),
    pytest.param(30_007, 64, 1024, "C", id="rowmajor-atomic"),
    pytest.param(30_007, 5, 64, "C", id="rowmajor-narrow"),  # 4 rows per warp step, partial tile
    pytest.param(30_007, 8, 100, "F", id="colmajor"),
]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("n,d,m,order", GPU_PATHS)
@pytest.mark.parametrize("nnz", [1, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gpu_scatter_strategies_match_cpu(rng, n, d, m, order, nnz, dtype):
    import cupy

    A = np.asarray(rng.standard_normal((n, d)), dtype=dtype, order=order)
    S = gs.SparseSign(m, n, nnz=nnz, seed=3) if nnz > 1 else gs.CountSketch(m, n, seed=3)
    ref = S @ A.astype(np.float64)
    A_dev = cupy.asarray(A, order=order)
    np.testing.assert_allclose((S @ A_dev).get(), ref, **tol(dtype))
    # Chunks land in the same buckets whatever path each chunk takes.
    half = n // 3
    parts = (S[:, :half] @ A_dev[:half]).get() + (S[:, half:] @ A_dev[half:]).get()
    np.testing.assert_allclose(parts, ref, **tol(dtype))


@gpu
@pytest.mark.gpu
def test_gpu_sorted_path_is_bit_reproducible(rng):
    import cupy

    A = cupy.asarray(rng.standard_normal((40_000, 520)))  # 4160-byte rows: sorted path
    S = gs.CountSketch(512, 40_000, seed=8)
    first = (S @ A).get()
    for _ in range(3):
        assert np.array_equal((S @ A).get(), first)


def test_multilevel_levels_are_nested_uniform_subsamples():
    """Column j survives level t with probability β^-t, nested; one ±1 per surviving level in its block."""
    n, r, levels, beta = 200_000, 16, 5, 4.0
    S = gs.MultiLevelCountSketch(r, n, levels, branching=beta, seed=3)
    buckets, signs = S.hashes()
    alive = signs != 0
    assert alive[:, 0].all()
    assert not (alive[:, 1:] & ~alive[:, :-1]).any()  # nested
    for t in range(levels):
        p = beta ** -t
        kept = int(alive[:, t].sum())
        assert abs(kept - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1  # binomial, 5 sigma
        b = buckets[alive[:, t], t]
        assert b.min() >= t * r and b.max() < (t + 1) * r
    np.testing.assert_array_equal(S.weights(), np.repeat(beta ** np.arange(levels), r))
    # The dense form has one entry per surviving (column, level), all ±1.
    small = gs.MultiLevelCountSketch(r, 3000, levels, branching=beta, seed=3)
    D = small.todense()
    assert set(np.unique(D)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal((D != 0).sum(axis=0), (small.hashes()[1] != 0).sum(axis=1))


@pytest.mark.parametrize(
    "kwargs,word",
    [({"r": 0}, "r"), ({"levels": 0}, "levels"), ({"branching": 1.0}, "branching"), ({"branching": True}, "branching")],
)
def test_multilevel_bad_input(kwargs, word):
    args = {"r": 4, "n": 10, "levels": 3} | kwargs
    r, n, levels = args.pop("r"), args.pop("n"), args.pop("levels")
    with pytest.raises(ValueError, match=word):
        gs.MultiLevelCountSketch(r, n, levels, **args)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("d,order", [(1, "C"), (5, "C"), (64, "C"), (7, "F")])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gpu_multilevel_kernel_matches_cpu(rng, d, order, dtype):
    """The one-pass kernel against its CPU twin: partial tiles, warps leaving early, both layouts."""
    import cupy

    n = 100_003
    A = np.asarray(rng.standard_normal((n, d)), dtype=dtype, order=order)
    S = gs.MultiLevelCountSketch(40, n, 7, branching=4.0, seed=21)
    ref = S @ A.astype(np.float64)
    np.testing.assert_allclose((S @ cupy.asarray(A, order=order)).get(), ref, **tol(dtype))
    third = n // 3
    A_dev = cupy.asarray(A, order=order)
    parts = (S[:, :third] @ A_dev[:third]).get() + (S[:, third:] @ A_dev[third:]).get()
    np.testing.assert_allclose(parts, ref, **tol(dtype))


def test_deterministic_flag_same_operator(xp, rng):
    """deterministic=True changes how the GPU sums, never what: same hashes, same S @ A, kept by slicing."""
    A = xp.asarray(rng.standard_normal((N, 6)))
    for cls, kw in ((gs.CountSketch, {}), (gs.SparseSign, {"nnz": 3})):
        S, D = cls(16, N, seed=4, **kw), cls(16, N, seed=4, deterministic=True, **kw)
        assert D.deterministic and not S.deterministic and D[:, 10:50].deterministic
        np.testing.assert_array_equal(D.todense(), S.todense())
        np.testing.assert_allclose(to_numpy(D @ A), to_numpy(S @ A), rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="deterministic"):
        gs.CountSketch(4, 10, seed=1, deterministic=1)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["narrow", "F", "vector", "csr"])
def test_gpu_deterministic_mode_is_bit_reproducible(rng, layout):
    import cupy
    import cupyx.scipy.sparse as csp

    n = 50_000
    A = rng.standard_normal((n, 8))
    if layout == "F":
        A_dev = cupy.asfortranarray(cupy.asarray(A))
    elif layout == "vector":
        A, A_dev = A[:, 0].copy(), cupy.asarray(A[:, 0])
    elif layout == "csr":
        A[np.abs(A) < 1.0] = 0.0
        A_dev = csp.csr_matrix(cupy.asarray(A))
    else:
        A_dev = cupy.asarray(A)
    S = gs.SparseSign(64, n, nnz=4, seed=9, deterministic=True)  # 64 buckets: heavy contention
    first = S @ A_dev
    first = first.get() if hasattr(first, "get") else first.toarray().get()
    for _ in range(3):
        again = S @ A_dev
        again = again.get() if hasattr(again, "get") else again.toarray().get()
        assert np.array_equal(again, first)
    np.testing.assert_allclose(first, S @ A, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("empty", ["third", "most", "long"])
@pytest.mark.parametrize("route", ["bincount", "scatter", "bucket_ranges"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_csr_routes_match_todense(rng, monkeypatch, route, dtype, empty):
    """The CPU twin's CSR routes (bincount over flat keys in row blocks; a scatter into
    out for large m·d; bucket ranges of sparse products for long rows) equal the dense
    product, with duplicate and unsorted entries, empty rows, many row blocks (cut by
    entries and by rows), three threads, and a sliced operator (col0 > 0).
    With most rows empty only the others are hashed (``_hash_values_at``); rows of 4
    entries or more are expanded by ``numpy.repeat``, shorter ones by ``_entry_rows``."""
    import scipy.sparse as sp

    from gpusketch import _kernels

    monkeypatch.setattr(_kernels, "_CSR_BLOCK_ENTRIES", 40)  # a few rows per block
    monkeypatch.setattr(_kernels, "_CSR_BLOCK_ROWS", 7)  # and no more than 7
    monkeypatch.setattr(_kernels, "_BUCKET_RANGES_ROWS", 70)  # uneven row blocks, added in
    monkeypatch.setattr(_kernels, "_cpu_threads", lambda work: 3)
    ranges = []
    monkeypatch.setattr(_kernels, "_sketch_bucket_ranges",
                        lambda *a, _f=_kernels._sketch_bucket_ranges: ranges.append(1) or _f(*a))
    if route != "bucket_ranges":
        monkeypatch.setattr(_kernels, "_CSR_SPGEMM_MIN_ROW_ENTRIES", 10**9)
    else:
        monkeypatch.setattr(_kernels, "_CSR_SPGEMM_MIN_ROW_ENTRIES", 0)
    expanded, repeated = [], []
    monkeypatch.setattr(_kernels, "_entry_rows", lambda *a, _f=_kernels._entry_rows: expanded.append(1) or _f(*a))
    monkeypatch.setattr(_kernels.np, "repeat", lambda *a, _f=np.repeat, **k: repeated.append(1) or _f(*a, **k))
    calls = []
    monkeypatch.setattr(_kernels.np, "bincount",  # the weighted bincount of the sketch (not _entry_rows')
                        lambda *a, _b=np.bincount, **k: (len(a) == 2 and calls.append(1)) or _b(*a, **k))
    if route == "bincount":
        monkeypatch.setattr(_kernels, "_SCATTER_RATIO", 10**9)
    else:
        monkeypatch.setattr(_kernels, "_BINCOUNT_MAX_OUT", 0)
    hashed_at = []
    monkeypatch.setattr(_kernels, "_hash_values_at",
                        lambda *a, _f=_kernels._hash_values_at: hashed_at.append(1) or _f(*a))
    n, d = 300, 7
    if empty == "third":
        counts = rng.integers(0, 5, n) * (np.arange(n) % 3 != 0)  # every third row empty
    elif empty == "most":
        counts = rng.integers(1, 5, n) * (np.arange(n) % 7 == 3)  # six rows in seven empty
    else:
        counts = rng.integers(4, 12, n) * (np.arange(n) % 5 != 0)  # long rows, every fifth empty
    indptr = np.r_[0, np.cumsum(counts)]
    indices = rng.integers(0, d, indptr[-1])  # unsorted, with repeated columns in a row
    A = sp.csr_matrix((rng.standard_normal(indptr[-1]).astype(dtype), indices, indptr), shape=(n, d))
    assert not A.has_canonical_format
    dense = A.toarray().astype(np.float64)  # sums the duplicates
    before = A.data.copy()
    for S in (gs.CountSketch(19, 2 * n, seed=3)[:, n:], gs.SparseSign(19, n, nnz=4, seed=4)):
        Y = S @ A
        assert Y.dtype == dtype
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Y, S.todense() @ dense, **tol)
        np.testing.assert_array_equal(Y, S @ A)  # deterministic
    np.testing.assert_array_equal(A.data, before)
    assert bool(calls) == (route == "bincount")
    assert bool(ranges) == (route == "bucket_ranges")
    if route != "bucket_ranges":
        assert bool(hashed_at) or empty != "most"  # (short blocks of the others may take it too)
        assert bool(expanded if empty != "long" else repeated)


@pytest.mark.parametrize("route", ["columns", "bucket_ranges"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_dense_routes_match_todense(rng, monkeypatch, route, dtype):
    """The CPU twin's dense routes besides per-thread partial sums: column by column for
    F-order A (and so for right sketches), and bucket ranges for a large CountSketch.
    Three threads, several uneven row blocks, a sliced operator (col0 > 0)."""
    from gpusketch import _kernels

    monkeypatch.setattr(_kernels, "_cpu_threads", lambda work: 3)
    monkeypatch.setattr(_kernels, "_COLUMN_ROUTE_MIN_ROWS", 1)
    monkeypatch.setattr(_kernels, "_COLUMN_ROUTE_MIN_ROW_BYTES", 0)
    monkeypatch.setattr(_kernels, "_COLUMN_ROUTE_ROWS", 70)
    monkeypatch.setattr(_kernels, "_BUCKET_RANGES_ROWS", 70)
    if route == "bucket_ranges":
        monkeypatch.setattr(_kernels, "_BUCKET_RANGES_MIN_OUT_BYTES", 0)
    taken = []
    for name in ("_sketch_by_columns", "_sketch_bucket_ranges", "_parallel_sum"):
        monkeypatch.setattr(_kernels, name, lambda *a, _f=getattr(_kernels, name), _n=name: taken.append(_n) or _f(*a))
    n = 301
    A = rng.standard_normal((n, 5)).astype(dtype)
    A = np.asfortranarray(A) if route == "columns" else A
    before = A.copy()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    kinds = [gs.CountSketch(23, 2 * n, seed=3)[:, n:]]
    kinds += [gs.SparseSign(23, n, nnz=4, seed=4)] if route == "columns" else []  # CountSketch only
    for S in kinds:
        Y = S @ A
        assert Y.dtype == dtype and Y.shape == (23, 5)
        np.testing.assert_allclose(Y, S.todense() @ A.astype(np.float64), **tol)
        np.testing.assert_array_equal(Y, S @ A)  # deterministic
        R = A.T @ S.T  # right sketch: (S @ (A.T).T).T, the same layout of A
        np.testing.assert_allclose(R, A.T.astype(np.float64) @ S.todense().T, **tol)
    np.testing.assert_array_equal(A, before)
    assert set(taken) == {"_sketch_by_columns" if route == "columns" else "_sketch_bucket_ranges"}


def test_row_reduction_is_the_identity_once_m_reaches_n(rng):
    from gpusketch.operators import row_reduction

    A = rng.standard_normal((12, 3))
    for m in (12, 40):
        S = row_reduction("sparse_sign", m, 12, seed=1)
        assert isinstance(S, gs.Sampling) and S.shape == (12, 12)
        np.testing.assert_array_equal(S @ A, A)
    S = row_reduction("countsketch", 11, 12, seed=1)
    assert isinstance(S, gs.CountSketch) and S.shape == (11, 12) and S.seed == 1
    with pytest.raises(ValueError, match="sketch must be one of"):
        row_reduction("fft", 40, 12)  # refused at any size


def test_sparse_sign_with_nnz_equal_to_m_fills_every_row():
    D = gs.SparseSign(4, 10, nnz=4, seed=3).todense()  # the largest nnz allowed
    np.testing.assert_allclose(np.abs(D), 0.5)
