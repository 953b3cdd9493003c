"""Host memory of the CPU routes: no solver holds copies of A it does not need.

Peak allocations are read with ``tracemalloc`` (NumPy reports its buffers to
it) around one call, as a multiple of ``A.nbytes``; A is made before tracing
starts.  The bounds leave room for the routes' fixed workspaces (row blocks,
sketches, hash arrays: 2-17 MB here, against 32 MB for A), and each one sits
below what the route allocated before it streamed its row blocks (measured at
65536 × 64: Lewis weights 2.1x, ``lp_regression`` 3.1x, exact leverage scores
2.0x, ``leverage_sample`` 1.2x, ``lstsq(method="direct")`` 1.0x, IRLS 2.1x).
The GPU routes keep their whole-array products (one cuBLAS call per pass) while
those fit in half the free device memory, and stream row blocks past that
(``test_device_routes_stream_when_short_of_memory``).
"""

import gc
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import gpusketch as gs
from conftest import sparse_module, to_numpy
from gpusketch import robust


@pytest.fixture(scope="module")
def system():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((65536, 64))  # 32 MB
    b = A @ rng.standard_normal(64) + rng.standard_normal(65536)
    return A, b


def peak_ratio(fn, A):
    """Peak bytes allocated during ``fn()``, over ``A.nbytes`` (A: the largest input)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / A.nbytes


CASES = {
    # one scaled copy of [A b] at a time (the fixed point held two; lp_regression also held [A b])
    "lewis_weights": (lambda A, b: gs.lewis_weights(A, 1, seed=1), 1.7),
    "lp_regression": (lambda A, b: gs.lp_regression(A, b, 1, m=400, seed=1), 1.7),
    # CholeskyQR2 streamed over row blocks: neither Q1 nor Q is held whole
    "leverage_scores_exact": (lambda A, b: gs.leverage_scores(A, exact=True), 0.4),
    # stage 2 reads the kept rows a block at a time (here stage 1 keeps every row)
    "leverage_sample": (lambda A, b: gs.leverage_sample(A, 300, seed=1), 0.6),
    # CholeskyQR2 over row blocks: neither diag(s)A nor Q1 is held whole
    "lstsq_direct": (lambda A, b: gs.lstsq(A, b, method="direct"), 0.4),
    "irls": (lambda A, b: robust.irls(A, b, robust.HuberLoss(1.0), seed=1), 0.4),
}


@pytest.fixture(scope="module")
def kron_system():
    rng = np.random.default_rng(8)
    factors = [rng.standard_normal((3000, 5)), rng.standard_normal((1000, 5))]
    return factors, rng.standard_normal(3_000_000)  # b: 24 MB


KRON_CASES = {
    # the full-data cost ||Ax − b|| in slabs: Ax and the residual are not held whole
    "kron_lstsq": (lambda F, b: gs.kron.lstsq(F, b, m=2000, seed=1), 0.8),
    # stage 2's residual mass |Ax' − b|^p filled a slab at a time, its CDF normalised in place
    "kron_lp_regression": (lambda F, b: gs.kron.lp_regression(F, b, p=1, m=1000, seed=1), 2.7),
}


@pytest.mark.parametrize("name", list(KRON_CASES))
def test_kron_peak_host_memory_is_bounded(kron_system, name):
    """As a multiple of b.nbytes (measured 0.41x and 2.35x; before the slabs 2.1x and 4.4x)."""
    factors, b = kron_system
    fn, bound = KRON_CASES[name]
    ratio = peak_ratio(lambda: fn(factors, b), b)
    assert ratio <= bound, f"{name} peaked at {ratio:.2f} x b.nbytes (bound {bound})"


@pytest.mark.parametrize("name", list(CASES))
def test_peak_host_memory_is_bounded(system, name):
    A, b = system
    fn, bound = CASES[name]
    A0, b0 = A.copy(), b.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratio = peak_ratio(lambda: fn(A, b), A)
    assert ratio <= bound, f"{name} peaked at {ratio:.2f} x A.nbytes (bound {bound})"
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(b, b0)


def test_exact_leverage_scores_householder_route_peak(system):
    """Where CholeskyQR2 fails (κ = 1e10 in a rotated basis) or its R is flagged (a
    rank-deficient A), the host's exact scores take a TSQR: the block reflectors hold
    about A's size in float64, and Q is applied a block at a time (measured 1.16x and
    1.14x; the Fortran-order copy and the formed Q had peaked at 3.0x and 2.8x)."""
    A, _ = system
    rng = np.random.default_rng(9)
    V, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    ill = (A * np.logspace(0, -10, 64)) @ V.T
    deficient = A.copy()
    deficient[:, -8:] = A[:, :8]
    for M, rank in ((ill, 64), (deficient, 56)):
        box = []
        ratio = peak_ratio(lambda: box.append(gs.leverage_scores(M, exact=True)), M)
        assert ratio <= 1.4, f"peaked at {ratio:.2f} x A.nbytes"
        assert float(box[0].sum()) == pytest.approx(rank, rel=1e-9)


def test_streamed_qr_lstsq_matches_whole_array_solution(monkeypatch, rng, xp):
    """The row-blocked CholeskyQR2 (many blocks on the CPU, one on the GPU) agrees with LAPACK on
    a weighted, multi-rhs, float32 and sparse problem, and keeps the input dtype."""
    from gpusketch.linalg import _numerics

    n, d = 5000, 12
    A = rng.standard_normal((n, d)) * np.logspace(0, 4, d)
    B = rng.standard_normal((n, 3))
    s = rng.random(n) + 0.1
    monkeypatch.setattr(_numerics, "_QR_BLOCK_BYTES", 8 * d * 384)  # 384-row blocks, the last one short
    assert len(_numerics._row_ranges(n, d, xp)) == (14 if xp is np else 1)
    x, deficient, route = _numerics.qr_lstsq(xp.asarray(A), xp.asarray(B), xp, scale=xp.asarray(s))
    ref = np.linalg.lstsq(A * s[:, None], B * s[:, None], rcond=None)[0]
    assert (deficient, route) == (False, "cholesky_qr2")
    np.testing.assert_allclose(to_numpy(x), ref, rtol=1e-10, atol=0)
    # κ ≈ 1e6 in a rotated basis (column scaling alone is benign for a Cholesky): the second
    # pass matters; cost excess ||diag(s)A(x − x_ref)||² / ||r||² against refined Householder
    # (measured 1e-24; 1.8e-14 with R₂⁻¹ left out of the solve)
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ill = (rng.standard_normal((n, d)) * np.logspace(0, -6, d)) @ V.T
    xi, _, route = _numerics.qr_lstsq(xp.asarray(ill), xp.asarray(B[:, 0]), xp, scale=xp.asarray(s))
    As, bs = ill * s[:, None], B[:, 0] * s
    Q, R = np.linalg.qr(As)
    xr = np.linalg.solve(R, Q.T @ bs)
    xr = xr + np.linalg.solve(R, Q.T @ (bs - As @ xr))
    assert route == "cholesky_qr2"
    assert (np.linalg.norm(As @ (to_numpy(xi) - xr)) / np.linalg.norm(bs - As @ xr)) ** 2 <= 1e-20
    # float32: columns over two decades, against NumPy's float64 solve
    A2 = A / np.logspace(0, 2, d)
    x32, deficient, _ = _numerics.qr_lstsq(xp.asarray(A2, dtype=np.float32), xp.asarray(B[:, 0], dtype=np.float32), xp)
    assert x32.dtype == np.float32 and not deficient
    np.testing.assert_allclose(to_numpy(x32), np.linalg.lstsq(A2, B[:, 0], rcond=None)[0], rtol=1e-4)
    S = sparse_module(xp).csr_matrix(sp.random(n, d, density=0.3, random_state=1, format="csr"))
    xs, _, _ = _numerics.qr_lstsq(S, xp.asarray(B[:, 0]), xp, scale=xp.asarray(s))
    Sd = to_numpy(S.toarray())
    np.testing.assert_allclose(to_numpy(xs), np.linalg.lstsq(Sd * s[:, None], B[:, 0] * s, rcond=None)[0], rtol=1e-10)


def test_streamed_exact_leverage_scores_match_householder(monkeypatch, rng, xp):
    """Exact leverage scores over many row blocks (one Q block per GEMM with R₁⁻¹R₂⁻¹) equal the
    row norms of a Householder Q, for dense float64/float32 and sparse A; a rank-deficient A
    (the Cholesky fails) goes to the SVD and still sums to its rank."""
    from gpusketch.linalg import _numerics

    monkeypatch.setattr(_numerics, "_QR_BLOCK_BYTES", 8 * 10 * 300)  # 300-row blocks
    # κ ≈ 1e6 in a rotated basis (column scaling alone does not hurt a Cholesky): the first
    # pass's Q₁ is off orthogonality by ~4e-5 and its row norms by ~8e-6, so skipping R₂⁻¹ shows
    V, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    ill = (rng.standard_normal((4000, 10)) * np.logspace(0, -6, 10)) @ V.T
    ill[:5] *= 50  # rows of high leverage
    Q, _ = np.linalg.qr(ill)
    scores = gs.leverage_scores(xp.asarray(ill), exact=True)
    np.testing.assert_allclose(to_numpy(scores), (Q * Q).sum(axis=1), rtol=1e-8)
    A = rng.standard_normal((4000, 10)) * np.logspace(0, 3, 10)
    A[:5] *= 50
    Q, _ = np.linalg.qr(A)
    ref = (Q * Q).sum(axis=1)
    l32 = gs.leverage_scores(xp.asarray(A, dtype=np.float32), exact=True)
    assert l32.dtype == np.float32
    np.testing.assert_allclose(to_numpy(l32), ref, rtol=2e-3, atol=1e-6)
    S = sp.random(4000, 10, density=0.4, random_state=3, format="csr")
    Qs, _ = np.linalg.qr(S.toarray())
    ls = gs.leverage_scores(sparse_module(xp).csr_matrix(S), exact=True)
    np.testing.assert_allclose(to_numpy(ls), (Qs * Qs).sum(axis=1), rtol=1e-11, atol=1e-15)
    D = A.copy()
    D[:, 9] = D[:, 0] - D[:, 1]
    assert float(gs.leverage_scores(xp.asarray(D), exact=True).sum()) == pytest.approx(9.0, rel=1e-10)


@pytest.mark.parametrize("bad", [np.nan, 0.0])
def test_streamed_qr_lstsq_survives_a_silent_cholesky_failure(monkeypatch, rng, bad):
    """A Cholesky that returns garbage (as CuPy's does) sends qr_lstsq to Householder, not to a wrong x."""
    from gpusketch.linalg import _numerics

    monkeypatch.setattr(np.linalg, "cholesky", lambda G: np.full_like(G, bad))
    A, b, s = rng.standard_normal((3000, 8)), rng.standard_normal(3000), rng.random(3000) + 0.5
    x, deficient, route = _numerics.qr_lstsq(A, b, np, scale=s)
    assert (deficient, route) == (False, "householder")
    np.testing.assert_allclose(x, np.linalg.lstsq(A * s[:, None], b * s, rcond=None)[0], rtol=1e-12)


def test_streamed_qr_lstsq_rank_decision_at_float32_precision(rng):
    """A float32 A with dependent columns (to float32 round-off) is rank deficient, though its
    float64 Gram is factored: the rank rule uses A's precision, as before the streaming."""
    from gpusketch.linalg import _numerics

    A = rng.standard_normal((4000, 6)).astype(np.float32)
    A[:, 5] = A[:, 0] + A[:, 1]  # exact in float32 arithmetic up to one rounding
    x, deficient, route = _numerics.qr_lstsq(A, rng.standard_normal(4000).astype(np.float32), np)
    assert deficient and route.endswith("+svd") and x.dtype == np.float32


def test_streamed_lewis_weights_match_the_scaled_copy(monkeypatch, system):
    """From ``_STREAM_MIN_BYTES`` on, each Lewis step reads diag(s)[A b] a row block at a time
    (``RowSlices``): the same weights as from the scaled copy (sketched: the same sketch, summed
    over blocks; exact: the streamed CholeskyQR2), and no copy of A.  Lowered here to A's size."""
    from gpusketch.linalg import leverage
    from gpusketch.robust import lewis

    A, b = system
    A, b = A[:20000], b[:20000]
    ref_sketched = lewis.stacked_lewis_weights(A, b, 1, seed=3)
    ref = {p: gs.lewis_weights(A[:3000, :8], p, exact=True) for p in (1, 3)}
    monkeypatch.setattr(lewis, "_STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(leverage, "_SLICE_BLOCK_BYTES", 8 * 65 * 3000)  # 3000-row sketch blocks
    np.testing.assert_allclose(lewis.stacked_lewis_weights(A, b, 1, seed=3), ref_sketched, rtol=1e-9)
    for p in (1, 3):
        np.testing.assert_allclose(gs.lewis_weights(A[:3000, :8], p, exact=True), ref[p], rtol=1e-9)
    big, bb = system
    ratio = peak_ratio(lambda: gs.lp_regression(big, bb, 1, m=400, seed=1), big)
    assert ratio <= 0.5, f"streamed lp_regression peaked at {ratio:.2f} x A.nbytes"


def test_cli_lstsq_reads_A_memory_mapped(tmp_path, system, capsys):
    """``gpusketch lstsq`` maps A.npy instead of loading it: with the streamed direct solve no
    copy of A is made (np.load alone had been 1x A, the direct solve 2x in all)."""
    from gpusketch import cli

    A, b = system
    np.save(tmp_path / "A.npy", A)
    np.save(tmp_path / "b.npy", b)
    argv = ["lstsq", str(tmp_path / "A.npy"), str(tmp_path / "b.npy"), "--method", "direct", "--device", "cpu",
            "-o", str(tmp_path / "x.npy")]
    ratio = peak_ratio(lambda: cli.main(argv), A)
    assert ratio <= 0.4, f"gpusketch lstsq peaked at {ratio:.2f} x A.nbytes"
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-9)
    assert "lstsq direct" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tukey_light_scores_read_in_place(monkeypatch, rng, dtype):
    """Tukey sampling scores its non-heavy rows as one group of a heavy / non-heavy labelling,
    read from R in place (gathered a block at a time past the chunk budget, lowered here):
    the same scores as the leverage of the gathered rows R[light], and for p < 2 the same route."""
    from gpusketch import _kernels
    from gpusketch.robust.tukey import _light_scores, _scores

    R = rng.standard_normal((6000, 7)).astype(dtype)
    R[:30] *= 40
    is_heavy = np.zeros(6000, dtype=bool)
    is_heavy[rng.choice(6000, 25, replace=False)] = True
    is_heavy[:10] = True
    light = np.flatnonzero(~is_heavy)
    ref = _scores(R[light], 2, 1)
    monkeypatch.setattr(_kernels, "_GROUP_CHUNK_BYTES_CPU", 8 * 7 * 500)  # 500 rows: the light group streams
    np.testing.assert_allclose(_light_scores(R, is_heavy, light, 2, 1, np), ref, rtol=1e-10, atol=1e-14)
    assert float(_light_scores(R, is_heavy, light, 2, 1, np).sum()) == pytest.approx(7.0, rel=1e-10)
    np.testing.assert_allclose(_light_scores(R, is_heavy, light, 1.5, 1, np), _scores(R[light], 1.5, 1), rtol=1e-12)


DEVICE_CASES = {
    # (call, bound on the stand-in's peak over A.nbytes when streaming; one block took 1.0-2.1x)
    "lstsq_direct": (lambda A, b: gs.lstsq(A, b, method="direct").x, 0.6),
    "leverage_scores_exact": (lambda A, b: gs.leverage_scores(A, exact=True), 0.6),
    "leverage_scores": (lambda A, b: gs.leverage_scores(A, seed=1), 0.6),
    "irls": (lambda A, b: robust.irls(A, b, robust.HuberLoss(1.0), seed=1).x, 0.8),
    "lewis_weights": (lambda A, b: gs.lewis_weights(A, 1, seed=1), 0.9),
    "lp_regression": (lambda A, b: gs.lp_regression(A, b, 1, m=400, seed=1).x, 1.2),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(DEVICE_CASES))
def test_device_routes_stream_when_short_of_memory(monkeypatch, system, cupy_or_fake, name):
    """On a GPU the CholeskyQR2 passes take one block and Lewis steps form diag(s)[A b], while
    that fits in half the free memory; with less free they stream row blocks, as the CPU does:
    the same results (to round-off), and on the stand-in a peak well under the one-block one."""
    from gpusketch import _backend
    from gpusketch.linalg import _numerics, leverage

    cupy = cupy_or_fake
    A, b = (cupy.asarray(x) for x in system)
    fn, bound = DEVICE_CASES[name]
    whole = to_numpy(fn(A, b))
    short = 2 * A.nbytes  # one block's workspace is 3 A.nbytes: more than half of this
    for mod in (_backend, leverage):  # device_block_rows' and the streamed blocks' reading
        monkeypatch.setattr(mod, "free_bytes", lambda xp: short)
    assert len(_numerics._row_ranges(*A.shape, cupy)) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streamed = to_numpy(fn(A, b))
    np.testing.assert_allclose(streamed, whole, rtol=1e-9, atol=1e-12)
    if getattr(cupy, "__fake__", False):  # the stand-in's arrays are NumPy's, seen by tracemalloc
        ratio = peak_ratio(lambda: fn(A, b), A)
        assert ratio <= bound, f"{name} peaked at {ratio:.2f} x A.nbytes on the device route (bound {bound})"


@pytest.mark.parametrize("kind", ["sparse_sign", "countsketch", "multilevel"])
def test_adjoint_hashes_a_block_of_columns_at_a_time(kind):
    """``S.T @ Y`` on the host hashes S a block of columns at a time past 2^20 hash values
    (FastEmbedding's last stage is such an adjoint, its n the embedding's m rows): the
    whole Sᵀ had peaked at 5.6x the result (SparseSign, 2^20 columns; the multi-level
    sketch 3.4x at 2^21 columns and 5 levels), and equals the blocked one bit for bit."""
    import sys

    kernels = sys.modules["gpusketch._kernels"]
    n = 1 << 20
    S = {"sparse_sign": lambda: gs.SparseSign(64, n, nnz=8, seed=1), "countsketch": lambda: gs.CountSketch(64, n, seed=1),
         "multilevel": lambda: gs.MultiLevelCountSketch(16, n, 4, seed=1)}[kind]()
    Y = np.random.default_rng(3).standard_normal((64, 4))
    box = []
    ratio = peak_ratio(lambda: box.append(S.T @ Y), np.empty((n, 4)))
    assert ratio <= 2.0, f"peaked at {ratio:.2f} x the result"
    if kind == "multilevel":
        whole = S._transpose_matrix(np, Y.dtype).T
    else:
        whole = kernels._hash_matrix_cpu(0, n, 64, S._nnz, S._scale, S._seed, S._stream, Y.dtype)
    np.testing.assert_array_equal(box[0], whole.T @ Y)


def test_fortran_order_rows_are_gathered_without_a_copy_of_a():
    """Row gathers of a Fortran-order A index it (NumPy's ``take`` copies a non-contiguous
    array whole first): ``Sampling`` of 1 % of the rows had peaked at 1.01x A (and taken
    44 ms against 0.5), the group leverage scores' gathers likewise; Tukey sampling's
    ``[A b]`` is C-order whatever A's order (its Fortran-order copy took 2.4x the time)."""
    import sys

    tukey = sys.modules["gpusketch.robust.tukey"]
    rng = np.random.default_rng(5)
    A = np.asfortranarray(rng.standard_normal((1 << 18, 16)))
    S = gs.Sampling(np.arange(0, A.shape[0], 100), A.shape[0], scale=np.full(-(-A.shape[0] // 100), 2.0))
    box = []
    assert peak_ratio(lambda: box.append(S @ A), A) <= 0.05
    np.testing.assert_array_equal(box[0], 2 * A[::100])
    kernels = sys.modules["gpusketch._kernels"]
    rows = rng.permutation(A.shape[0])[:2000]
    assert peak_ratio(lambda: kernels._take_rows(A, rows, np), A) <= 0.05
    assert tukey._stack(A, rng.standard_normal(A.shape[0]), np, 2).flags.c_contiguous

