"""gpusketch.dask on a local Dask scheduler (threads and processes), NumPy chunks; CuPy chunks on a
GPU, or on the CuPy stand-in without one."""

import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import gpusketch as gs  # noqa: E402
from gpusketch import dask as gsd  # noqa: E402
from conftest import one_entry_per_column, refinement_off, to_numpy  # noqa: E402

SCHEDULERS = ["threads", "processes"]


@pytest.fixture(params=SCHEDULERS)
def scheduler(request):
    with dask.config.set(scheduler=request.param):
        yield request.param


OPS = {
    "countsketch": lambda n: gs.CountSketch(64, n, seed=1),
    "sparse_sign": lambda n: gs.SparseSign(64, n, nnz=4, seed=2),
    "gaussian": lambda n: gs.Gaussian(32, n, seed=3),
    "srht": lambda n: gs.SRHT(64, n, seed=4),
    "multilevel": lambda n: gs.MultiLevelCountSketch(16, n, 5, seed=5),
}


@pytest.mark.parametrize("kind", list(OPS))
def test_sketch_equals_in_memory_for_any_chunking(scheduler, rng, kind):
    A = rng.standard_normal((3001, 7))
    S = OPS[kind](3001)
    ref = S @ A
    for chunks in [(500, 7), (1000, 3), (3001, 7), (137, 2)]:
        out = gsd.sketch(S, da.from_array(A, chunks=chunks)).compute()
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)
    v = gsd.sketch(S, da.from_array(A[:, 0], chunks=400)).compute()
    np.testing.assert_allclose(v, S @ A[:, 0], rtol=1e-10, atol=1e-10)


def test_sketch_columns(scheduler, rng):
    A = rng.standard_normal((500, 900))
    S = gs.SparseSign(40, 900, nnz=4, seed=5)
    out = gsd.sketch_columns(da.from_array(A, chunks=(120, 250)), S).compute()
    np.testing.assert_allclose(out, A @ S.T, rtol=1e-10, atol=1e-10)


def test_empty_chunks_contribute_nothing(rng):
    # A filtered Dask array (after compute_chunk_sizes) can hold blocks of no rows; their
    # column slice S[:, a:a] raised "column slice [a:a] ... is empty".
    A = rng.standard_normal((600, 5))
    b = A @ np.ones(5) + rng.standard_normal(600)
    X = da.from_array(A, chunks=((200, 0, 400), (3, 0, 2)))
    S = gs.CountSketch(40, 600, seed=1)
    np.testing.assert_allclose(gsd.sketch(S, X).compute(), S @ A, rtol=1e-12)
    np.testing.assert_allclose(gsd.sketch(S, da.from_array(b, chunks=((0, 600),))).compute(), S @ b, rtol=1e-12)
    T = gs.CountSketch(4, 5, seed=2)
    np.testing.assert_allclose(gsd.sketch_columns(X, T).compute(), A @ T.T, rtol=1e-12)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    np.testing.assert_allclose(gsd.lstsq(X, da.from_array(b, chunks=((200, 0, 400),)), seed=3).x, x, rtol=1e-8)
    mask = (np.arange(600) // 100) % 3 == 0  # rows 0-99 and 300-399: four of six blocks end empty
    kept = da.from_array(A, chunks=(100, 5))[da.from_array(mask, chunks=100)].compute_chunk_sizes()
    assert kept.chunks[0] == (100, 0, 0, 100, 0, 0)
    S2 = gs.CountSketch(40, 200, seed=4)
    np.testing.assert_allclose(gsd.sketch(S2, kept).compute(), S2 @ A[mask], rtol=1e-12)


@pytest.mark.parametrize(
    "scheduler_name, method",
    # The processes scheduler pays a pool round trip per compute (two per LSQR iteration),
    # so it runs the one-shot sketch method; threads run both.
    [("threads", "precondition"), ("threads", "sketch"), ("processes", "sketch")],
)
def test_lstsq(rng, scheduler_name, method):
    A = rng.standard_normal((2000, 12))
    A[:, 0] *= 1e4  # ill-conditioned columns: the preconditioner must absorb them
    b = A @ rng.standard_normal(12) + rng.standard_normal(2000)
    X, y = da.from_array(A, chunks=(700, 12)), da.from_array(b, chunks=700)
    with dask.config.set(scheduler=scheduler_name):
        res = gsd.lstsq(X, y, method=method, tol=1e-13, seed=3)
    x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
    opt = np.linalg.norm(A @ x_ref - b)
    if method == "precondition":
        np.testing.assert_allclose(res.x, x_ref, rtol=1e-8, atol=1e-10)
        assert res.info["iterations"] < 60
        assert res.cost == pytest.approx(opt, rel=1e-12)
    else:  # sketch-and-solve with m = 20d + 10 rows: cost within 1 + 3 d/m of optimal (stated bound)
        assert opt <= res.cost <= (1 + 3 * 12 / res.info["m"]) * opt


@pytest.mark.parametrize("method", ["precondition", "sketch", "direct"])
def test_lstsq_several_columns_and_column_chunks(rng, method):
    """y of shape (n, 2) gives x of shape (d, 2), column by column the answer for each y[:, j];
    X chunked along columns too (TSQR needs whole rows: "direct" rechunks)."""
    A = rng.standard_normal((1500, 9))
    B = A @ rng.standard_normal((9, 2)) + rng.standard_normal((1500, 2))
    X, Y = da.from_array(A, chunks=(400, 4)), da.from_array(B, chunks=(300, 1))
    with dask.config.set(scheduler="threads"):
        res = gsd.lstsq(X, Y, method=method, seed=4)
        cols = [gsd.lstsq(X, Y[:, j], method=method, seed=4) for j in range(2)]
    assert res.x.shape == (9, 2) and res.cost.shape == (2,)
    none = gsd.lstsq(X, Y[:, :0], method=method, seed=4)  # y of no columns ("precondition": empty stack)
    assert none.x.shape == (9, 0) and none.cost.shape == (0,)
    for j in range(2):
        np.testing.assert_allclose(res.x[:, j], cols[j].x, rtol=1e-10, atol=1e-12)
        assert res.cost[j] == pytest.approx(cols[j].cost, rel=1e-12)
    if method != "sketch":
        np.testing.assert_allclose(res.x, np.linalg.lstsq(A, B, rcond=None)[0], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("refine", [True, False], ids=["refined", "sketch-R"])
def test_lstsq_precondition_is_gpusketch_lstsq_on_the_computed_arrays(rng, refine, monkeypatch):
    """The same seed gives the same sketch, preconditioner and block LSMR as in memory: the
    same iterations per column and x to round-off, whatever the chunks of X and y; with the
    preconditioner refined (its Gram summed over the blocks: here X's own, κ(R) ≈ 1e3, as in
    memory) or the sketch's R alone."""
    import gpusketch.dask as gsd_module

    grams = []
    finish = gsd_module.finish_gram_refinement
    monkeypatch.setattr(gsd_module, "finish_gram_refinement", lambda *a: grams.append(1) or finish(*a))
    if not refine:
        refinement_off(monkeypatch)
    A = rng.standard_normal((3000, 12)) * np.logspace(0, 3, 12)
    B = A @ rng.standard_normal((12, 3)) + rng.standard_normal((3000, 3)) * np.array([1.0, 1e-3, 1e3])
    ref = gs.lstsq(A, B, seed=6)
    with dask.config.set(scheduler="threads"):
        res = gsd.lstsq(da.from_array(A, chunks=(700, 5)), da.from_array(B, chunks=(900, 2)), seed=6)
        one = gsd.lstsq(da.from_array(A, chunks=(700, 12)), da.from_array(B[:, 1], chunks=700), seed=6)
        # "sketch": (SX, Sy) from one pass over each row block's slice of S, X's column strips and y together
        sk = gsd.lstsq(da.from_array(A, chunks=(700, 5)), da.from_array(B, chunks=(900, 2)), method="sketch", seed=6)
    np.testing.assert_allclose(sk.x, gs.lstsq(A, B, method="sketch", seed=6).x, rtol=1e-10, atol=1e-12 * np.abs(ref.x).max())
    assert res.info["iterations"] == ref.info["iterations"]
    assert one.info["iterations"] == ref.info["iterations"][1]
    assert res.info["preconditioner"] == ref.info["preconditioner"] == ("refined" if refine else "sketch")
    assert len(grams) == (2 if refine else 0)
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-10, atol=1e-12 * np.abs(ref.x).max())
    np.testing.assert_allclose(one.x, ref.x[:, 1], rtol=1e-10, atol=1e-12 * np.abs(ref.x).max())


def test_lstsq_refined_route_is_the_in_memory_one(rng, monkeypatch):
    """The refined route's sketch (REFINE_SKETCH_NNZ nonzeros a column) and its warm start,
    passing LSMR's test with no iteration, as in memory; the cost from that test's residual."""
    import gpusketch.dask as gsd_module

    made = []
    sketch_for = gsd_module.sketch_for
    monkeypatch.setattr(gsd_module, "sketch_for", lambda *a, **k: made.append(sketch_for(*a, **k)) or made[-1])
    A = rng.standard_normal((6000, 10)) * np.logspace(0, 4, 10)
    B = A @ rng.standard_normal((10, 2)) + rng.standard_normal((6000, 2))
    ref = gs.lstsq(A, B, seed=3)
    with dask.config.set(scheduler="threads"):
        res = gsd.lstsq(da.from_array(A, chunks=(1500, 4)), da.from_array(B, chunks=(2000, 2)), seed=3)
    assert made[-1].nnz == 2 and res.info["preconditioner"] == ref.info["preconditioner"] == "refined"
    assert res.info["iterations"] == ref.info["iterations"] == [0, 0]
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-11)
    np.testing.assert_allclose(res.cost, np.linalg.norm(A @ ref.x - B, axis=0), rtol=1e-12)


def test_lstsq_refinement_band_of_x_own_gram_as_in_memory(rng, monkeypatch):
    """In ``refine_pays``' ``"gram"`` band (d = 200 at tol = 1e-6), as in memory: the sketch of
    R alone (8 nonzeros a column), refined from X's own Gram summed over the blocks where
    κ(R) allows (no iteration), else LSMR on R alone, iteration for iteration."""
    import gpusketch.dask as gsd_module

    made = []
    sketch_for = gsd_module.sketch_for
    monkeypatch.setattr(gsd_module, "sketch_for", lambda *a, **k: made.append(sketch_for(*a, **k)) or made[-1])
    U = rng.standard_normal((2000, 200))
    H = np.linalg.qr(rng.standard_normal((200, 200)))[0]  # rotated: κ that no column scaling removes
    b = rng.standard_normal(2000)
    for kappa, route in ((1e2, "refined"), (1e6, "sketch")):
        A = U * np.logspace(0, -np.log10(kappa), 200) @ H
        ref = gs.lstsq(A, b, tol=1e-6, seed=4)
        with dask.config.set(scheduler="threads"):
            res = gsd.lstsq(da.from_array(A, chunks=(600, 200)), da.from_array(b, chunks=600), tol=1e-6, seed=4)
        assert made[-1].nnz == 8 and res.info["preconditioner"] == ref.info["preconditioner"] == route
        assert res.info["iterations"] == ref.info["iterations"] and (ref.info["iterations"] == 0) == (route == "refined")
        # (the blocks' summation order differs from memory's: its round-off grows with κ in x)
        np.testing.assert_allclose(res.x, ref.x, rtol=1e-8 * kappa / 100, atol=1e-10 * np.abs(ref.x).max())


def test_lstsq_refined_route_of_a_rank_deficient_x_as_in_memory(rng):
    A = rng.standard_normal((6000, 9)) * np.logspace(0, -3, 9)
    A[:, 8] = A[:, 2] + A[:, 3]
    b = rng.standard_normal(6000)
    with pytest.warns(gs.RankDeficientWarning, match="sketch rank 8"):
        ref = gs.lstsq(A, b, seed=4)
    with dask.config.set(scheduler="threads"), pytest.warns(gs.RankDeficientWarning, match="sketch rank 8") as rec:
        res = gsd.lstsq(da.from_array(A, chunks=(1700, 9)), da.from_array(b, chunks=1700), seed=4)
    assert rec[0].filename == __file__
    assert res.info["preconditioner"] == ref.info["preconditioner"] == "refined"
    assert res.info["iterations"] == ref.info["iterations"] == 0
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-11)
    np.testing.assert_allclose(res.x, np.linalg.pinv(A) @ b, rtol=1e-9)
    assert res.cost == pytest.approx(ref.cost, rel=1e-12)


def test_lstsq_float32_x_and_float64_y_answer_in_float64_as_in_memory(rng):
    A = rng.standard_normal((3000, 5)).astype(np.float32)
    b = rng.standard_normal(3000)
    with dask.config.set(scheduler="threads"):
        res = gsd.lstsq(da.from_array(A, chunks=(700, 5)), da.from_array(b, chunks=700), seed=1)
    mem = gs.lstsq(A, b, seed=1)
    assert res.x.dtype == mem.x.dtype == np.float64 and res.info["preconditioner"] == "refined"
    np.testing.assert_allclose(res.x, mem.x, rtol=1e-10, atol=1e-13)
    # The direct solve's block Rs are factored in float64 on the host and rounded back: a float32
    # system still answers in float32, as in memory, to float32's precision.
    b32 = b.astype(np.float32)
    direct = gsd.lstsq(da.from_array(A, chunks=(700, 5)), da.from_array(b32, chunks=700), method="direct")
    mem = gs.lstsq(A, b32, method="direct")
    assert direct.x.dtype == mem.x.dtype == np.float32
    np.testing.assert_allclose(direct.x, mem.x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["precondition", "sketch", "direct"])
def test_lstsq_takes_an_in_memory_y(rng, method):
    """A NumPy y (1-D, 2-D, integer) is split into X's row chunks: the answer of the same y as Dask."""
    A = rng.standard_normal((1200, 7))
    B = A @ rng.standard_normal((7, 2)) + rng.standard_normal((1200, 2))
    X = da.from_array(A, chunks=(500, 7))
    for y in (B[:, 0], B, np.rint(B[:, 1]).astype(np.int64)):
        kept = y.copy()
        got = gsd.lstsq(X, y, method=method, seed=3)
        ref = gsd.lstsq(X, da.from_array(y, chunks=(300,) + y.shape[1:]), method=method, seed=3)
        np.testing.assert_allclose(got.x, ref.x, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(y, kept)
    with pytest.raises(ValueError, match="y has 1199 rows but X has 1200"):
        gsd.lstsq(X, B[:-1, 0], method=method)
    with pytest.raises(ValueError, match=r"y must be 1-D or 2-D, got shape \(1200, 2, 1\)"):
        gsd.lstsq(X, B[:, :, None], method=method)
    with pytest.raises(TypeError, match="y must be dense"):
        import scipy.sparse as sp

        gsd.lstsq(X, sp.csr_matrix(B), method=method)


def test_lstsq_direct_rank_deficient_is_minimum_norm(rng):
    A = rng.standard_normal((800, 6))
    A[:, 5] = A[:, 1] - A[:, 2]  # rank 5
    b = rng.standard_normal(800)
    with pytest.warns(gs.RankDeficientWarning, match="rank deficient") as rec:
        res = gsd.lstsq(da.from_array(A, chunks=(300, 6)), da.from_array(b, chunks=300), method="direct")
    assert rec[0].filename == __file__
    assert res.info["rank_deficient"]
    np.testing.assert_allclose(res.x, np.linalg.pinv(A) @ b, rtol=1e-9, atol=1e-12)


def test_columns_in_other_units_as_unscaled(rng):
    # Column scales 1e-8 .. 1e8 (κ₂ 1e16; 1.1 scaled): the fits and exact leverage scores of
    # the unscaled X, no warning (the rule on X itself had dropped 3 of 12 directions).
    X0 = rng.standard_normal((2000, 12))
    y = X0 @ rng.standard_normal(12) + rng.standard_normal(2000)
    D = np.logspace(-8, 8, 12)
    X, yd = da.from_array(X0 * D, chunks=(700, 12)), da.from_array(y, chunks=700)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.RankDeficientWarning)
        for method in ("direct", "precondition"):
            res = gsd.lstsq(X, yd, method=method, seed=3)
            assert not res.info["rank_deficient"]
            np.testing.assert_allclose(res.x * D, np.linalg.lstsq(X0, y, rcond=None)[0], rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(np.asarray(gsd.leverage_scores(X, exact=True)), gs.leverage_scores(X0, exact=True),
                                   rtol=0, atol=1e-12)


def test_lstsq_small_n_uses_the_identity(rng):
    """Where the default sketch size reaches n, S is the identity, as in memory: the exact answer."""
    A, b = rng.standard_normal((40, 8)), rng.standard_normal(40)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    for method in ("sketch", "precondition"):
        res = gsd.lstsq(da.from_array(A, chunks=(15, 8)), da.from_array(b, chunks=15), method=method, seed=1)
        assert res.info["sketch"] == "Sampling" and res.info["m"] == 40
        np.testing.assert_allclose(res.x, x, rtol=1e-10, atol=1e-12)


def test_lstsq_precondition_edge_cases(rng, monkeypatch):
    """Rank-deficient X (minimum norm, with a warning), y = 0 (x = 0 in no iterations), maxiter
    honoured (by LSMR on the sketch's R: a refined warm start here passes with none)."""
    A = rng.standard_normal((800, 6))
    A[:, 5] = A[:, 1] - A[:, 2]  # rank 5
    b = rng.standard_normal(800)
    X = da.from_array(A, chunks=(300, 6))
    with dask.config.set(scheduler="threads"):
        with pytest.warns(gs.RankDeficientWarning, match=r"sketch rank 5") as rec:
            res = gsd.lstsq(X, da.from_array(b, chunks=300), tol=1e-13, seed=1)
        assert rec[0].filename == __file__
        assert res.info["rank_deficient"]
        np.testing.assert_allclose(res.x, np.linalg.pinv(A) @ b, rtol=1e-9, atol=1e-12)
        with pytest.warns(gs.RankDeficientWarning):
            zero = gsd.lstsq(X, da.zeros(800, chunks=300), seed=1)
        assert zero.info["iterations"] == 0 and zero.cost == 0.0
        np.testing.assert_array_equal(zero.x, np.zeros(6))
        B = rng.standard_normal((800, 6)) * np.geomspace(1, 1e6, 6)
        XB, yb = da.from_array(B, chunks=300), da.from_array(b, chunks=300)
        assert gsd.lstsq(XB, yb, maxiter=1, seed=1).info["iterations"] == 0  # refined
        refinement_off(monkeypatch)
        capped = gsd.lstsq(XB, yb, maxiter=1, seed=1)
        start = gsd.lstsq(XB, yb, method="sketch", m=capped.info["m"], seed=1)  # the warm start
    assert capped.info["iterations"] == 1
    assert capped.cost >= np.linalg.norm(B @ np.linalg.lstsq(B, b, rcond=None)[0] - b)
    assert capped.cost < start.cost * (1 - 1e-6)  # the one step was taken


def _split_entries(block):
    """``block`` as a non-canonical CSR matrix: every entry stored twice, as two halves."""
    import scipy.sparse as sp

    c = sp.csr_matrix(block)
    return sp.csr_matrix((np.repeat(c.data / 2, 2), np.repeat(c.indices, 2), 2 * c.indptr), shape=c.shape)


@pytest.mark.parametrize("blocks", ["dense", "csr", "split csr"])
def test_lstsq_precondition_falls_back_when_the_sketch_loses_rank_that_x_has(blocks):
    """As in memory: X of full rank with one nonzero per column, a CountSketch that merges
    two of those rows (seed 0).  x was off by 13 % (7 of 10 seeds, 13-49 %) with a warning
    that blamed X; the normal equations now send it to the direct solve, without a warning,
    for one and for several right-hand sides.  Sparse blocks, canonical or with every entry
    split in two, take the same route."""
    import scipy.sparse as sp

    A, b, x_ref = one_entry_per_column()
    d = A.shape[1]
    X = da.from_array(A, chunks=(1000, d))
    if blocks != "dense":
        X = X.map_blocks(sp.csr_matrix if blocks == "csr" else _split_entries)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.RankDeficientWarning)
        one = gsd.lstsq(X, da.from_array(b, chunks=1000), sketch="countsketch", seed=0)
        two = gsd.lstsq(X, da.from_array(np.c_[b, 2 * b], chunks=(1000, 2)), sketch="countsketch", seed=0)
    for res in (one, two):
        assert res.info["fallback"] == "direct" and res.info["sketch_rank"] < d and not res.info["rank_deficient"]
    np.testing.assert_allclose(one.x, x_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(two.x, np.c_[x_ref, 2 * x_ref], rtol=1e-10, atol=1e-12)


def test_sparse_blocks_sum_of_squares_counts_a_split_entry_once(rng):
    """``||X||_F²`` (the fallback test's scale) sums a non-canonical block's repeated entries
    before squaring: (v/2 + v/2)² = v², not 2 (v/2)²."""
    from gpusketch.dask import _sum_squares

    A = rng.standard_normal((300, 5)) * (rng.random((300, 5)) < 0.3)
    X = da.from_array(A, chunks=(100, 5)).map_blocks(_split_entries)
    assert not X.blocks[0].compute().has_canonical_format
    assert float(dask.compute(_sum_squares(X))[0]) == pytest.approx(np.sum(A * A), rel=1e-13)


def test_lstsq_sketch_warns_when_the_sketch_loses_rank():
    """As in memory: a CountSketch of seed 2 merges two rows of the one-entry-per-column X.
    The sketched solve (NumPy's lstsq of SX) returned without a word; now it warns and
    answers as gpusketch.lstsq does."""
    A, b, _ = one_entry_per_column()
    X = da.from_array(A, chunks=(1000, A.shape[1]))
    with pytest.warns(gs.RankDeficientWarning, match="sketch of X.*rank 19 < 20") as rec:
        res = gsd.lstsq(X, da.from_array(b, chunks=1000), method="sketch", sketch="countsketch", seed=2)
    assert rec[0].filename == __file__ and res.info["sketch_rank"] == 19
    with pytest.warns(gs.RankDeficientWarning):
        mem = gs.lstsq(A, b, method="sketch", sketch="countsketch", seed=2)
    np.testing.assert_allclose(res.x, mem.x, rtol=1e-12, atol=1e-14)


def test_leverage_scores_and_randomized_svd(rng):
    A = rng.standard_normal((3000, 10)) * np.geomspace(1, 1e-3, 10)
    X = da.from_array(A, chunks=(400, 5))
    Q = np.linalg.qr(A)[0]
    exact = (Q**2).sum(axis=1)
    np.testing.assert_allclose(gsd.leverage_scores(X, exact=True).compute(), exact, rtol=1e-10)
    approx = gsd.leverage_scores(X, seed=1).compute()
    np.testing.assert_allclose(approx, gs.leverage_scores(A, seed=1), rtol=1e-9)  # same sketch as in memory
    ratio = approx / exact
    # Constant-factor estimates: OSNAP with 4d + 10 = 50 rows for d = 10 distorts squared norms by up to
    # (1 ± sqrt(d/m))^-2 ~ [0.48, 3.3], times the 73-column JL factor (max of 3000 chi2_73/73 ~ 1.75).
    assert 0.2 < ratio.min() and ratio.max() < 6.0
    small = rng.standard_normal((30, 5))  # 4d + 10 = 30 >= n: exact, as in memory
    np.testing.assert_allclose(gsd.leverage_scores(da.from_array(small, chunks=(10, 5)), seed=1).compute(),
                               gs.leverage_scores(small, exact=True), rtol=1e-10)
    square = da.from_array(small[:5], chunks=(5, 5))  # n = d, the smallest allowed: every score is 1
    np.testing.assert_allclose(gsd.leverage_scores(square, seed=1).compute(), 1.0, rtol=1e-10)
    U, s, Vt = gsd.randomized_svd(X, 4, seed=2)
    s_ref = np.linalg.svd(A, compute_uv=False)[:4]
    np.testing.assert_allclose(s, s_ref, rtol=1e-6)
    U = U.compute()
    np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-10)
    # A wider X, so that the k + oversample = 14 probe columns do not span all 40 and the
    # power iterations have work to do: a gap of 700 between s_4 and s_5 leaves ~(1/700)^5.
    s_true = np.r_[10.0, 9.0, 8.0, 7.0, np.full(36, 0.01)]
    W = np.linalg.qr(rng.standard_normal((3000, 40)))[0] * s_true @ np.linalg.qr(rng.standard_normal((40, 40)))[0]
    U, s, Vt = gsd.randomized_svd(da.from_array(W, chunks=(500, 40)), 4, seed=3)
    np.testing.assert_allclose(s, s_true[:4], rtol=1e-10)
    np.testing.assert_allclose((U.compute() * s) @ Vt, np.linalg.svd(W)[0][:, :4] * s_true[:4] @ np.linalg.svd(W)[2][:4], atol=1e-9)


@pytest.mark.parametrize("test_matrix", ["gaussian", "sparse_sign", "srht", "countsketch"])
def test_randomized_svd_test_matrices_as_in_memory(rng, test_matrix):
    # Slowly decaying spectrum: the answer depends on the test matrix, so equality with the
    # in-memory call shows the same Ω.
    A = rng.standard_normal((2000, 60)) * np.geomspace(1, 0.3, 60)
    U, s, Vt = gsd.randomized_svd(da.from_array(A, chunks=(700, 25)), 5, power_iters=1, test_matrix=test_matrix,
                                  seed=4)
    Ur, sr, Vtr = gs.randomized_svd(A, 5, power_iters=1, test_matrix=test_matrix, seed=4)
    np.testing.assert_allclose(s, sr, rtol=1e-10)
    np.testing.assert_allclose(Vt, Vtr, atol=1e-9)
    np.testing.assert_allclose(U.compute(), Ur, atol=1e-9)
    op = gs.SparseSign(15, 60, nnz=3, seed=9)  # an operator as the test matrix
    np.testing.assert_allclose(gsd.randomized_svd(da.from_array(A, chunks=(700, 25)), 5, test_matrix=op)[1],
                               gs.randomized_svd(A, 5, test_matrix=op)[1], rtol=1e-10)
    with pytest.raises(ValueError, match="test_matrix"):
        gsd.randomized_svd(da.from_array(A, chunks=(700, 25)), 5, test_matrix="nope")


def _low_rank_product(res):
    V = res.V.compute() if hasattr(res.V, "compute") else res.V
    np.testing.assert_allclose(V.T @ V, np.eye(V.shape[1]), atol=1e-12)
    return V @ res.X


@pytest.mark.parametrize("kw", [{}, {"right": "exact", "eps": 0.3}])
def test_low_rank_is_the_in_memory_algorithm(rng, kw):
    # Slowly decaying noise on a rank-30 matrix: t = 4k² = 64 < d, an OSNAP below n, residual
    # columns drawn.  The same sketches and samples as in memory (info), and so the same V X.
    A = rng.standard_normal((2500, 30)) @ rng.standard_normal((30, 200)) + 0.3 * rng.standard_normal((2500, 200))
    ref = gs.low_rank(A, 4, seed=5, **kw)
    for chunks in [(600, 200), (1000, 70)]:
        res = gsd.low_rank(da.from_array(A, chunks=chunks), 4, seed=5, **kw)
        assert {key: res.info[key] for key in ref.info if key != "timings"} == \
            {key: ref.info[key] for key in ref.info if key != "timings"}
        np.testing.assert_allclose(_low_rank_product(res), ref.V @ ref.X, rtol=0, atol=1e-12 * np.abs(A).max())


def test_low_rank_edge_cases_and_inputs(rng):
    # Rank 3 <= 2k: X lies in span(U), no residual column is drawn (V from UᵀX, as in memory).
    A = rng.standard_normal((400, 3)) @ rng.standard_normal((3, 50))
    res = gsd.low_rank(da.from_array(A, chunks=(150, 50)), 2, seed=1)
    assert res.info["residual_columns"] == 0
    ref = gs.low_rank(A, 2, seed=1)
    np.testing.assert_allclose(_low_rank_product(res), ref.V @ ref.X, atol=1e-10)
    with dask.config.set(scheduler="processes"):
        np.testing.assert_allclose(_low_rank_product(gsd.low_rank(da.from_array(A, chunks=(150, 50)), 2, seed=1)),
                                   ref.V @ ref.X, atol=1e-10)
    X = da.from_array(A, chunks=(150, 50))
    with pytest.raises(ValueError, match=r"k must be < min\(n, d\) = 50"):
        gsd.low_rank(X, 50)
    with pytest.raises(ValueError, match="eps"):
        gsd.low_rank(X, 2, eps=1.0)
    with pytest.raises(ValueError, match="right must be"):
        gsd.low_rank(X, 2, right="svd")
    with pytest.raises(TypeError, match="dask.array.Array"):
        gsd.low_rank(A, 2)
    An = A.copy()
    An[7, 3] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        gsd.low_rank(da.from_array(An, chunks=(150, 50)), 2)


def _sample_weights(S, n):
    """Per row of the input, the scale with which the sample S keeps it (0 where it is dropped)."""
    T = S.operators[-1] if hasattr(S, "operators") else S
    w = np.zeros(n)
    w[to_numpy(T.indices)] = to_numpy(T.scale)
    return w


@pytest.mark.parametrize("kw", [{}, {"gamma": 0.3, "osnap": 60}])
def test_leverage_sample_is_the_in_memory_sample(rng, kw):
    import scipy.sparse as sp

    A = rng.standard_normal((20000, 6)) * np.r_[np.ones(19990), np.full(10, 40.0)][:, None]  # 10 heavy rows
    ref = gs.leverage_sample(A, 300, seed=2, **kw)
    for chunks in [(20000, 6), (4001, 6)]:
        X = da.from_array(A, chunks=chunks)
        for blocks in (X, X.map_blocks(sp.csr_matrix, meta=sp.csr_matrix((0, 0)))):
            S = gsd.leverage_sample(blocks, 300, seed=2, **kw)
            assert type(S) is type(ref) and S.shape == ref.shape
            np.testing.assert_allclose(_sample_weights(S, 20000), _sample_weights(ref, 20000), rtol=1e-10)
    assert (_sample_weights(ref, 20000)[-10:] > 0).all()  # the heavy rows are kept
    with pytest.raises(ValueError, match="gamma"):
        gsd.leverage_sample(X, 300, gamma=0.0)
    with pytest.raises(ValueError, match="is zero"):
        gsd.leverage_sample(da.zeros((100, 3), chunks=50), 10)
    small = np.random.default_rng(0).standard_normal((4000, 3))  # s = 1 keeps no row for seed 1, as in memory
    with pytest.raises(ValueError, match="no rows were sampled"):
        gs.leverage_sample(small, 1, seed=1)
    with pytest.raises(ValueError, match="no rows were sampled"):
        gsd.leverage_sample(da.from_array(small, chunks=1000), 1, seed=1)


@pytest.mark.gpu
def test_leverage_sample_on_device_chunks(rng, cupy_or_fake):
    cupy = cupy_or_fake
    A = rng.standard_normal((6000, 5))
    with dask.config.set(scheduler="threads"):
        S = gsd.leverage_sample(da.from_array(cupy.asarray(A), chunks=(1500, 5), asarray=False), 200, seed=1)
    ref = gs.leverage_sample(A, 200, seed=1)
    np.testing.assert_array_equal(to_numpy(S.indices), ref.indices)


def test_rank_is_the_in_memory_algorithm(rng):
    import scipy.sparse as sp

    cases = [
        rng.standard_normal((3000, 40)) @ rng.standard_normal((40, 300)),  # rank 40, both sides sketched
        rng.standard_normal((2000, 300)) @ rng.standard_normal((300, 400)),  # rank 300: the size grows
        rng.standard_normal((60, 2000)),  # z >= n: X computed whole, its columns sketched
        np.outer(rng.standard_normal(500), rng.standard_normal(40)),
        np.zeros((200, 10)),
    ]
    for A in cases:
        ref = gs.rank(A, seed=3)
        for rows in (A.shape[0], A.shape[0] // 3 + 1):
            assert gsd.rank(da.from_array(A, chunks=(rows, -1)), seed=3) == ref
    S = sp.random(20000, 300, density=0.005, random_state=4, format="csr")
    S = S[:, :150] @ sp.random(150, 300, density=0.05, random_state=5, format="csr")  # rank <= 150
    X = da.from_array(S.toarray(), chunks=(5000, 300)).map_blocks(sp.csr_matrix, meta=sp.csr_matrix((0, 0)))
    assert gsd.rank(X, seed=2) == gs.rank(S, seed=2) == np.linalg.matrix_rank(S.toarray())
    # The blocks' sketches sum to the in-memory sketch of all rows (the rank alone would survive
    # other rank-preserving sketches).
    from gpusketch.linalg.rank import _sketch_rows

    A = cases[0]
    parts = [gsd._block_rank_sketch(A[a:a + 700], a, min(a + 700, 3000), 3000, 64, 11) for a in range(0, 3000, 700)]
    np.testing.assert_allclose(sum(parts), _sketch_rows(A, 64, 11, np), rtol=1e-12, atol=1e-9)
    An = cases[0].copy()
    An[5, 5] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        gsd.rank(da.from_array(An, chunks=(1000, -1)))
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        gsd.rank(da.from_array(An[:60], chunks=(30, -1)))
    with pytest.raises(ValueError, match="X must be 2-D"):
        gsd.rank(da.ones(10, chunks=5))
    assert gsd.rank(da.zeros((0, 4), chunks=1)) == 0


def test_independent_rows_are_the_in_memory_rows(rng):
    import scipy.sparse as sp

    cases = [
        rng.standard_normal((3000, 30)) @ rng.standard_normal((30, 200)),  # columns sketched to 2k + 10
        rng.standard_normal((800, 12)),  # narrow: B = X
        rng.standard_normal((40, 500)),  # s >= n: every row a candidate
        np.zeros((50, 6)),
    ]
    for A in cases:
        ref = gs.independent_rows(A, seed=6)
        for rows in (A.shape[0], A.shape[0] // 3 + 1):
            got = gsd.independent_rows(da.from_array(A, chunks=(rows, -1)), seed=6)
            np.testing.assert_array_equal(got, ref)
        assert len(ref) == np.linalg.matrix_rank(A) and (len(ref) == 0 or np.linalg.matrix_rank(A[ref]) == len(ref))
    S = sp.random(6000, 80, density=0.02, random_state=3, format="csr")
    X = da.from_array(S.toarray(), chunks=(1500, 80)).map_blocks(sp.csr_matrix, meta=sp.csr_matrix((0, 0)))
    np.testing.assert_array_equal(gsd.independent_rows(X, seed=2), gs.independent_rows(S, seed=2))


@pytest.mark.gpu
def test_rank_on_device_chunks(cupy_or_fake):
    cupy = cupy_or_fake
    A = np.random.default_rng(8).standard_normal((3000, 25)) @ np.random.default_rng(9).standard_normal((25, 200))
    with dask.config.set(scheduler="threads"):
        X = da.from_array(cupy.asarray(A), chunks=(1000, 200), asarray=False)
        assert gsd.rank(X, seed=1) == 25
        rows = gsd.independent_rows(X, seed=1)
    assert isinstance(rows, cupy.ndarray)
    np.testing.assert_array_equal(to_numpy(rows), gs.independent_rows(A, seed=1))


@pytest.mark.parametrize("kappa", [1e3, 1e10])
def test_exact_leverage_scores_by_cholesky_qr2_or_householder(rng, kappa, monkeypatch):
    # CholeskyQR2 over the blocks where it is safe (κ = 1e3), Dask's Householder TSQR where its
    # Cholesky fails (κ = 1e10, columns graded then rotated): both the in-memory scores.
    V = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    A = (rng.standard_normal((5000, 12)) * np.geomspace(1, 1 / kappa, 12)) @ V
    routes = []
    original = gsd._cholesky_qr2_scores
    monkeypatch.setattr(gsd, "_cholesky_qr2_scores", lambda X: routes.append(original(X)) or routes[-1])
    got = gsd.leverage_scores(da.from_array(A, chunks=(1300, 12)), exact=True).compute()
    assert (routes[0] is None) == (kappa > 1e8)
    # (Two Householder TSQRs, Dask's and the in-memory one, agree to about ε κ: 1e-5-2e-5 measured.)
    np.testing.assert_allclose(got, gs.leverage_scores(A, exact=True), rtol=1e-4 if kappa > 1e8 else 1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("chunks", [(3, 3, 3), (1, 8), (9,)])
def test_exact_leverage_scores_of_rank_deficient_x(rng, chunks):
    # Q of the tall-skinny QR has d orthonormal columns however low X's rank: its
    # row norms summed to d = 4 here, not rank 2, each score off by up to 1.
    A = rng.standard_normal((9, 2)) @ rng.standard_normal((2, 4))
    A[[1, 5]] = 0
    U = np.linalg.svd(A, full_matrices=False)[0][:, :2]
    lev = gsd.leverage_scores(da.from_array(A, chunks=(chunks, 4)), exact=True).compute()
    np.testing.assert_allclose(lev, (U**2).sum(axis=1), atol=1e-12)
    np.testing.assert_allclose(lev, gs.leverage_scores(A, exact=True), atol=1e-12)
    assert max(lev[1], lev[5]) < 1e-20  # zero rows


def test_sketched_leverage_scores_of_a_zero_x():
    # The sketch has rank 0: the JL Gaussian of 0 columns raised "n must be >= 1".
    X = da.zeros((3000, 10), chunks=(700, 10))
    lev = gsd.leverage_scores(X, seed=3)
    assert lev.chunks == ((700, 700, 700, 700, 200),)
    np.testing.assert_array_equal(lev.compute(), np.zeros(3000))


def test_integer_and_sparse_blocks(rng):
    # Integer X is computed in float64, as in memory: the Gaussians of leverage_scores
    # and randomized_svd were cast to X's integer dtype, which rounds most of them to 0
    # (the leverage scores of this X came out all 0).
    A = np.rint(rng.standard_normal((600, 30)) * 4).astype(np.int64)
    X = da.from_array(A, chunks=(150, 30))
    np.testing.assert_array_equal(gsd.leverage_scores(X, seed=1).compute(),
                                  gsd.leverage_scores(X.astype(float), seed=1).compute())
    np.testing.assert_allclose(gsd.leverage_scores(X, seed=1).compute(), gs.leverage_scores(A, seed=1), rtol=1e-9)
    U, s, Vt = gsd.randomized_svd(X, 3, oversample=2, power_iters=0, seed=2)  # 5 of 30 columns: Ω matters
    _, s_ref, _ = gsd.randomized_svd(X.astype(float), 3, oversample=2, power_iters=0, seed=2)
    np.testing.assert_array_equal(s, s_ref)
    assert s.dtype == Vt.dtype == U.dtype == np.float64
    y = da.from_array(A @ np.ones(30) + 1, chunks=150)
    assert gsd.lstsq(X, y, seed=3).x.dtype == np.float64
    # The sketches read sparse blocks and give dense results, with dense metadata for what follows.
    import scipy.sparse as sp

    B = rng.standard_normal((600, 40))
    Xs = da.from_array(B, chunks=(200, 15)).map_blocks(sp.csr_matrix)
    S = gs.SparseSign(50, 600, seed=4)
    left, right = gsd.sketch(S, Xs), gsd.sketch_columns(Xs, gs.CountSketch(8, 40, seed=5))
    assert type(left._meta) is np.ndarray and type(right._meta) is np.ndarray
    np.testing.assert_allclose((left + 0).compute(), S @ B, atol=1e-12)
    np.testing.assert_allclose(right.sum(axis=0).compute(), (B @ gs.CountSketch(8, 40, seed=5).T).sum(axis=0), atol=1e-10)


def test_bad_input(rng):
    A = da.from_array(rng.standard_normal((100, 3)), chunks=50)
    with pytest.raises(TypeError, match="dask.array.Array"):
        gsd.sketch(gs.CountSketch(10, 100, seed=1), np.ones((100, 3)))
    with pytest.raises(ValueError, match="X has 100 rows but S has 90"):
        gsd.sketch(gs.CountSketch(10, 90, seed=1), A)
    with pytest.raises(ValueError, match="method"):
        gsd.lstsq(A, da.ones(100, chunks=50), method="qr")
    with pytest.raises(ValueError, match="y has 99 rows"):
        gsd.lstsq(A, da.ones(99, chunks=50))
    with pytest.raises(ValueError, match="k must be at most"):
        gsd.randomized_svd(A, 4)
    with pytest.raises(ValueError, match="oversample must be >= 0"):  # it gave 1 singular value for k = 2
        gsd.randomized_svd(A, 2, oversample=-1)
    with pytest.raises(TypeError, match="oversample must be an integer"):
        gsd.randomized_svd(A, 2, oversample=2.5)
    with pytest.raises(TypeError, match="S must be a sketch operator"):
        gsd.sketch(np.eye(100), A)
    with pytest.raises(TypeError, match="S must be a sketch operator"):
        gsd.sketch_columns(A, np.eye(3))
    with pytest.raises(ValueError, match="X has 3 columns but S has 5"):
        gsd.sketch_columns(A, gs.CountSketch(2, 5, seed=1))
    with pytest.raises(ValueError, match=r"X must be 1-D or 2-D, got shape \(100, 3, 1\)"):
        gsd.sketch(gs.CountSketch(10, 100, seed=1), A[:, :, None])
    with pytest.raises(TypeError, match="X has unsupported dtype"):
        gsd.sketch(gs.CountSketch(10, 100, seed=1), da.from_array(np.array(["a"] * 100), chunks=50))
    with pytest.raises(TypeError, match="X has dtype float16, which is not supported"):
        gsd.randomized_svd(A.astype(np.float16), 2)  # refused at entry, like an in-memory float16 A
    with pytest.raises(TypeError, match="y has complex dtype"):
        gsd.lstsq(A, da.ones(100, chunks=50).astype(complex))
    import scipy.sparse as sp

    with pytest.raises(TypeError, match=r"y has sparse blocks \(csr_matrix\); it must have dense blocks"):
        gsd.lstsq(A, da.from_array(np.ones((100, 1)), chunks=50).map_blocks(sp.csr_matrix))
    with pytest.raises(ValueError, match=r"unknown chunk sizes; call X.compute_chunk_sizes\(\)"):
        gsd.lstsq(A[A[:, 0] > 0], da.ones(100, chunks=50))
    with pytest.raises(ValueError, match="needs n >= d"):
        gsd.lstsq(A[:2], da.ones(2, chunks=2))
    with pytest.raises(ValueError, match="leverage scores need n >= d"):
        gsd.leverage_scores(A[:2])
    empty = da.zeros((100, 0), chunks=50)
    with pytest.raises(ValueError, match=r"X is empty \(shape \(100, 0\)\)"):
        gsd.lstsq(empty, da.ones(100, chunks=50))
    with pytest.raises(ValueError, match="X is empty"):
        gsd.leverage_scores(empty)
    # NaN / Inf in the data is found in the sketch (no extra pass over X), before any solve.
    X = rng.standard_normal((100, 3))
    X[57, 1] = np.nan
    Xn = da.from_array(X, chunks=50)
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        gsd.lstsq(Xn, da.ones(100, chunks=50), seed=1)
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        gsd.lstsq(A, da.from_array(np.where(np.arange(100) == 3, np.inf, 1.0), chunks=50), seed=1)
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        gsd.lstsq(Xn, da.ones(100, chunks=50), method="direct")
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        gsd.lstsq(A, da.from_array(np.where(np.arange(100) == 77, np.nan, 1.0), chunks=50), method="direct")
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        gsd.leverage_scores(Xn, seed=1)
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(found in its R factor\)"):
        gsd.leverage_scores(Xn, exact=True).compute()  # it was numpy's LinAlgError from R's SVD
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        gsd.randomized_svd(Xn, 2, seed=1)


def _outlier_problem(rng, n=12000, d=5):
    A = rng.standard_normal((n, d))
    b = A @ np.ones(d) + rng.standard_normal(n)
    b[rng.choice(n, n // 20, replace=False)] = 1e4
    return A, b


@pytest.mark.parametrize("scheduler_name", SCHEDULERS)
def test_tukey_regression_is_the_in_memory_oblivious_sketch(rng, scheduler_name):
    from gpusketch.robust import tukey_regression

    A, b = _outlier_problem(rng)
    # The processes scheduler pays a pool start per compute (two here): one case of the grid.
    grid = [((3000, 5), 3000), ((2500, 2), 4000), ((12000, 5), 12000)][: 1 if scheduler_name == "processes" else 3]
    for kw in [{"trials": 3}, {"p": 1.5, "rows": 90, "branching": 3.0}][: 2 if len(grid) > 1 else 1]:
        ref = tukey_regression(A, b, 3.0, method="oblivious", seed=7, **kw)
        for chunks, ychunks in grid:
            with dask.config.set(scheduler=scheduler_name):
                res = gsd.tukey_regression(da.from_array(A, chunks=chunks), da.from_array(b, chunks=ychunks), 3.0,
                                           seed=7, **kw)
            np.testing.assert_allclose(res.x, ref.x, rtol=1e-10, atol=1e-12)
            assert res.cost == pytest.approx(ref.cost, rel=1e-12)
            np.testing.assert_array_equal(res.weights, ref.weights)
            assert res.rows is None and res.info["trial"] == ref.info["trial"]
            assert res.info["reduced_rows"] == ref.info["reduced_rows"] == res.weights.shape[0]
    # The sketch fits the clean rows: the full-data IRLS's cost within the bench's bound for oblivious.
    full = tukey_regression(A, b, 3.0, method="full", seed=1)
    assert res.cost <= 1.5 * full.cost


def test_tukey_regression_small_problem_and_inputs(rng):
    from gpusketch.robust import tukey_regression

    A, b = _outlier_problem(rng, n=300, d=4)
    X = da.from_array(A, chunks=(100, 4))
    # rows >= n: no sketch is smaller than the problem, which is solved whole, as in memory.
    res = gsd.tukey_regression(X, b, 3.0, rows=400, seed=2)
    ref = tukey_regression(A, b, 3.0, method="oblivious", rows=400, seed=2)
    np.testing.assert_array_equal(res.x, ref.x)
    assert res.info["levels"] == 0
    # Sparse and integer blocks, an in-memory y.
    import scipy.sparse as sp

    A2, b2 = _outlier_problem(rng, n=6000, d=4)
    ref = gsd.tukey_regression(da.from_array(A2, chunks=(1500, 4)), b2, 3.0, seed=3)
    sparse = gsd.tukey_regression(da.from_array(A2, chunks=(1500, 4)).map_blocks(sp.csr_matrix), b2, 3.0, seed=3)
    np.testing.assert_allclose(sparse.x, ref.x, rtol=1e-10)
    Ai = np.rint(4 * A2)
    ints = gsd.tukey_regression(da.from_array(Ai.astype(np.int64), chunks=(1500, 4)), b2, 3.0, seed=3)
    np.testing.assert_allclose(ints.x, tukey_regression(Ai, b2, 3.0, method="oblivious", seed=3).x, rtol=1e-10)
    with pytest.raises(ValueError, match="tau must be a positive"):
        gsd.tukey_regression(X, b, 0.0)
    with pytest.raises(ValueError, match="rows must exceed d = 4"):
        gsd.tukey_regression(X, b, 3.0, rows=4)
    with pytest.raises(ValueError, match="branching"):
        gsd.tukey_regression(X, b, 3.0, branching=1.0)
    with pytest.raises(ValueError, match="p must lie in"):
        gsd.tukey_regression(X, b, 3.0, p=2.5)
    with pytest.raises(ValueError, match="y must be 1-D"):
        gsd.tukey_regression(X, np.c_[b, b], 3.0)
    with pytest.raises(ValueError, match="y has 299 rows but X has 300"):
        gsd.tukey_regression(X, da.from_array(b[:-1], chunks=100), 3.0)
    with pytest.raises(TypeError, match="dask.array.Array"):
        gsd.tukey_regression(A, b, 3.0)
    Xn = A.copy()
    Xn[123, 2] = np.inf
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        gsd.tukey_regression(da.from_array(Xn, chunks=(100, 4)), b, 3.0, rows=50)
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        gsd.tukey_regression(X, np.where(np.arange(300) == 5, np.nan, b), 3.0, rows=50)


@pytest.mark.parametrize("p", [1, 1.5, 2])
def test_lp_regression_is_the_in_memory_lewis_sample(rng, p, monkeypatch):
    A = rng.standard_normal((20000, 5))
    b = A @ np.ones(5) + rng.laplace(size=20000)
    ref = gs.lp_regression(A, b, p, seed=4)
    if p == 1:  # the weights' sketch in row slices of 1000 rows within each block (64 MiB otherwise)
        monkeypatch.setattr(gsd, "_SLICE_BLOCK_BYTES", 1000 * 8 * 6)
    for chunks, ychunks in [((5000, 5), 5000), ((3000, 2), 7000), ((20000, 5), 20000)]:
        res = gsd.lp_regression(da.from_array(A, chunks=chunks), da.from_array(b, chunks=ychunks), p, seed=4)
        # The same Lewis weights (sketches, Gaussians), uniforms of the global rows and so the same sample.
        assert res.info == ref.info
        # p = 1.5: IRLS's stopping point moves with the round-off of the sample (x 5e-10, cost 1e-11
        # relative measured).
        np.testing.assert_allclose(res.x, ref.x, rtol=1e-8 if p == 1.5 else 1e-10, atol=1e-12)
        assert res.cost == pytest.approx(ref.cost, rel=1e-9 if p == 1.5 else 1e-12)


def test_lp_regression_small_problems_and_inputs(rng):
    A = rng.standard_normal((60, 4))
    b = A @ np.ones(4) + rng.laplace(size=60)
    X = da.from_array(A, chunks=(20, 4))
    # m >= n: the whole problem, as in memory; n < 4(d + 1) + 10: exact leverage scores, as in memory.
    for m in (60, 30):
        res = gsd.lp_regression(X, b, 1, m=m, seed=2)
        ref = gs.lp_regression(A, b, 1, m=m, seed=2)
        assert res.info == ref.info
        np.testing.assert_allclose(res.x, ref.x, rtol=1e-10, atol=1e-12)
    # [X y] = 0: no weights to sample by; x = 0 as in memory.
    zero = gsd.lp_regression(da.zeros((300, 3), chunks=100), np.zeros(300), 1, m=50, seed=1)
    np.testing.assert_array_equal(zero.x, np.zeros(3))
    assert zero.cost == 0.0
    with dask.config.set(scheduler="processes"):  # p = 2: one step of the weights (a pool start per compute)
        res = gsd.lp_regression(X, b, 2, m=30, seed=2)
    np.testing.assert_allclose(res.x, gs.lp_regression(A, b, 2, m=30, seed=2).x, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="p must lie in"):
        gsd.lp_regression(X, b, 2.5)
    with pytest.raises(ValueError, match="m must be an integer > d = 4"):
        gsd.lp_regression(X, b, 1, m=4)
    with pytest.raises(ValueError, match="needs n >= d"):
        gsd.lp_regression(X[:3], b[:3], 1)
    with pytest.raises(ValueError, match="y must be 1-D"):
        gsd.lp_regression(X, np.c_[b, b], 1)
    with pytest.raises(ValueError, match="y has 59 rows but X has 60"):
        gsd.lp_regression(X, da.from_array(b[:-1], chunks=20), 1)
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        gsd.lp_regression(X, np.where(np.arange(60) == 5, np.nan, b), 1, m=30)
    An = A.copy()
    An[17, 1] = np.inf
    for n in (60, 30):  # the sketched route and the exact one
        with pytest.raises(ValueError, match="X contains NaN or Inf"):
            gsd.lp_regression(da.from_array(An[:n], chunks=(20, 4)), b[:n], 1, m=25)


@pytest.mark.gpu
def test_cupy_chunks(rng, cupy_or_fake):
    cupy = cupy_or_fake
    A = rng.standard_normal((3000, 6))
    X = da.from_array(cupy.asarray(A), chunks=(500, 6), asarray=False)
    S = gs.SparseSign(64, 3000, nnz=4, seed=2)
    with dask.config.set(scheduler="threads"):
        out = gsd.sketch(S, X).compute()
        assert isinstance(out, cupy.ndarray)
        np.testing.assert_allclose(to_numpy(out), S @ A, rtol=1e-10, atol=1e-10)
        b = A @ np.ones(6) + rng.standard_normal(3000)
        y = da.from_array(cupy.asarray(b), chunks=500, asarray=False)
        for method in ("precondition", "direct"):
            res = gsd.lstsq(X, y, method=method, tol=1e-13, seed=1)
            assert isinstance(res.x, cupy.ndarray)
            np.testing.assert_allclose(to_numpy(res.x), np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-8)
        # An in-memory y must sit on the blocks' device.
        res = gsd.lstsq(X, cupy.asarray(b), tol=1e-13, seed=1)
        np.testing.assert_allclose(to_numpy(res.x), np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-8)
        with pytest.raises(TypeError, match="y is a numpy array but X's blocks are not"):
            gsd.lstsq(X, b)


_DA = np.random.default_rng(4).standard_normal((6000, 8))
_DB = _DA @ np.ones(8) + np.random.default_rng(5).standard_normal(6000)
DEVICE_CALLS = {
    "sketch": lambda X, y: gsd.sketch(gs.SparseSign(64, 6000, nnz=4, seed=2), X).compute(),
    "sketch_columns": lambda X, y: gsd.sketch_columns(X, gs.CountSketch(4, 8, seed=3)).compute(),
    "lstsq sketch": lambda X, y: gsd.lstsq(X, y, method="sketch", seed=1).x,
    "lstsq precondition": lambda X, y: gsd.lstsq(X, y, seed=1).x,
    "lstsq precondition, 2-D y": lambda X, y: gsd.lstsq(X, da.stack([y, 0.5 * y + y**2], axis=1), seed=1).x,
    "lstsq direct": lambda X, y: gsd.lstsq(X, y, method="direct").x,
    "leverage_scores": lambda X, y: gsd.leverage_scores(X, seed=1).compute(),
    "leverage_scores exact": lambda X, y: gsd.leverage_scores(X, exact=True).compute(),
    "randomized_svd": lambda X, y: gsd.randomized_svd(X, 3, seed=1)[1],
    "tukey_regression": lambda X, y: gsd.tukey_regression(X, y, 2.0, trials=2, seed=1).x,
    "low_rank": lambda X, y: (lambda r: (r.V @ r.X).compute())(gsd.low_rank(X, 3, eps=0.5, seed=1)),
    "lp_regression": lambda X, y: gsd.lp_regression(X, y, 1, seed=1).x,
    "lp_regression p=1.5": lambda X, y: gsd.lp_regression(X, y, 1.5, m=200, seed=1).x,
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(DEVICE_CALLS))
def test_device_chunks_agree_with_host_chunks(cupy_or_fake, name):
    """Each gpusketch.dask call on CuPy chunks returns CuPy results equal (to round-off) to the
    same call on NumPy chunks: the blocks hash their global rows alike on both devices."""
    cupy, call = cupy_or_fake, DEVICE_CALLS[name]
    with dask.config.set(scheduler="threads"):
        host = call(da.from_array(_DA, chunks=(1000, 8)), da.from_array(_DB, chunks=1000))
        dev = call(da.from_array(cupy.asarray(_DA), chunks=(1000, 8), asarray=False),
                   da.from_array(cupy.asarray(_DB), chunks=1000, asarray=False))
    assert isinstance(dev, cupy.ndarray)
    np.testing.assert_allclose(to_numpy(dev), host, rtol=1e-9, atol=1e-12 * float(np.abs(host).max()))


# Sparse blocks: 70 % of _DA's entries zeroed, and a unit diagonal for full column rank.
_DS = _DA * (np.random.default_rng(6).random(_DA.shape) < 0.3) + np.eye(*_DA.shape)


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", list(DEVICE_CALLS))
def test_sparse_blocks_agree_with_dense_blocks(request, device, name):
    """Each gpusketch.dask call on SciPy (or cupyx) CSR blocks returns what it returns on the same
    matrix in dense blocks: the solvers' products run one per sparse block instead of Dask's
    matmul, "direct" and exact leverage scores densify a block at a time."""
    import scipy.sparse as sp

    xp = np if device == "cpu" else request.getfixturevalue("cupy_or_fake")
    csr = sp.csr_matrix if xp is np else __import__("cupyx.scipy.sparse", fromlist=["csr_matrix"]).csr_matrix
    call = DEVICE_CALLS[name]
    with dask.config.set(scheduler="threads"):
        X = da.from_array(xp.asarray(_DS), chunks=(1000, 4), asarray=False)  # two column strips
        y = da.from_array(xp.asarray(_DB), chunks=1000, asarray=False)
        dense = call(X, y)
        sparse = call(X.map_blocks(csr, meta=csr(xp.zeros((1, 1)))), y)
    assert type(sparse) is type(dense)
    scale = float(np.abs(to_numpy(dense)).max())
    np.testing.assert_allclose(to_numpy(sparse), to_numpy(dense), rtol=1e-9, atol=1e-12 * scale)
