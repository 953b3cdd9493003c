"""The CPU thread policy: SciPy's own BLAS is serial inside public entry points, restored after."""

import os

import numpy as np
import pytest

import gpusketch as gs
from gpusketch import _backend, _kernels
from gpusketch._nvtx import annotate


class _FakePool:
    def __init__(self, filepath="", n=4):
        self.filepath = filepath
        self.n = n
        self.calls = []

    @property
    def num_threads(self):
        return self.n

    def set_num_threads(self, n):
        self.calls.append(n)
        self.n = n


@pytest.fixture
def fake_pool(monkeypatch):
    pool = _FakePool()
    monkeypatch.setattr(_backend.scipy_blas_serial, "_pools", lambda: (pool,))
    return pool


def test_scipy_only_picks_scipys_library_when_numpy_has_its_own(tmp_path):
    site = str(tmp_path)
    numpy_lib = _FakePool(os.path.join(site, "numpy.libs", "libscipy_openblas64_.so"))
    scipy_lib = _FakePool(os.path.join(site, "scipy.libs", "libscipy_openblas.so"))
    scipy_dir = os.path.join(os.path.realpath(site), "scipy")
    assert _backend._scipy_only([numpy_lib, scipy_lib], scipy_dir) == (scipy_lib,)
    # One shared BLAS (conda, system builds): nothing to separate.
    assert _backend._scipy_only([numpy_lib], scipy_dir) == ()
    assert _backend._scipy_only([scipy_lib], scipy_dir) == ()


def test_entry_point_runs_scipy_blas_serial_and_restores(fake_pool, monkeypatch):
    seen = []
    call = _kernels.call

    def spy(name, *args, **kwargs):
        seen.append(fake_pool.n)
        return call(name, *args, **kwargs)

    monkeypatch.setattr(_kernels, "call", spy)
    rng = np.random.default_rng(0)
    gs.lstsq(rng.standard_normal((200, 5)), rng.standard_normal(200), seed=1)
    assert seen and set(seen) == {1}
    assert fake_pool.n == 4 and fake_pool.calls == [1, 4]


def test_nested_entries_restore_once_at_the_outermost(fake_pool):
    with annotate("outer"):
        with annotate("inner"):
            assert fake_pool.n == 1
        assert fake_pool.n == 1
    assert fake_pool.n == 4 and fake_pool.calls == [1, 4]


def test_one_large_scipy_call_runs_on_the_saved_threads(fake_pool, monkeypatch):
    """``scipy_blas_threaded``: inside an entry point, SciPy's pools get their saved thread
    count back for one large call (the rank rule's pivoted QR) and are serial again after
    it, also when it raises; outside any entry point, and while ``all_blas_serial`` holds
    (blocks on Python threads), it changes nothing."""
    with _backend.scipy_blas_threaded():
        assert fake_pool.n == 4
    assert fake_pool.calls == []
    with annotate("outer"):
        with _backend.scipy_blas_threaded():
            assert fake_pool.n == 4
        assert fake_pool.n == 1
        with pytest.raises(RuntimeError):
            with _backend.scipy_blas_threaded():
                raise RuntimeError
        assert fake_pool.n == 1
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_backend.all_blas_serial, "_depth", 1)
            with _backend.scipy_blas_threaded():
                assert fake_pool.n == 1
    assert fake_pool.n == 4 and fake_pool.calls == [1, 4, 1, 4, 1, 4]
    # rank's pivoted QR (a 60 x 60 matrix of rank 40: the QR proof fails, the pivoted QR
    # decides) is such a call.
    seen = []
    import scipy.linalg

    qr = scipy.linalg.qr
    monkeypatch.setattr(scipy.linalg, "qr", lambda *a, **k: seen.append(fake_pool.n) or qr(*a, **k))
    rng = np.random.default_rng(1)
    assert gs.rank(rng.standard_normal((60, 40)) @ rng.standard_normal((40, 60)), seed=2) == 40
    assert seen and set(seen) == {4}


def test_restored_when_the_entry_point_raises(fake_pool):
    with pytest.raises(ValueError, match="method"):
        gs.lstsq(np.ones((10, 2)), np.ones(10), method="nope")
    assert fake_pool.n == 4 and fake_pool.calls == [1, 4]
    assert _backend.scipy_blas_serial._depth == 0


def test_opt_out_by_environment(monkeypatch):
    monkeypatch.setenv(_backend.BLAS_POLICY_ENV, "0")
    _backend._blas_libs.cache_clear()
    _backend._scipy_blas_pools.cache_clear()
    try:
        assert _backend._blas_libs() == () and _backend._scipy_blas_pools() == ()
    finally:
        monkeypatch.delenv(_backend.BLAS_POLICY_ENV)
        _backend._blas_libs.cache_clear()
        _backend._scipy_blas_pools.cache_clear()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the CPU twins use one thread on one core")
def test_blocks_on_python_threads_run_serial_blas(monkeypatch):
    """While a CPU twin runs blocks on its own threads (Gaussian sketch), every BLAS is serial;
    the count comes back afterwards."""
    pool = _FakePool()
    monkeypatch.setattr(_backend.all_blas_serial, "_pools", lambda: (pool,))
    seen = []
    block = _kernels._gaussian_block_cpu

    def spy(*args):
        seen.append(pool.n)
        return block(*args)

    monkeypatch.setattr(_kernels, "_gaussian_block_cpu", spy)
    A = np.ones((40000, 2))
    gs.Gaussian(64, 40000, seed=1) @ A  # m n >= 2^21: more than one thread
    assert len(seen) > 1 and set(seen) == {1}
    assert pool.n == 4 and pool.calls == [1, 4]


def test_real_pools_when_numpy_and_scipy_bundle_their_own():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pools = _backend._scipy_blas_pools()
    if not pools:
        pytest.skip("NumPy and SciPy share one BLAS here (or none is controllable)")
    ours = {p.filepath for p in pools}
    before = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
    with annotate("gpusketch.test"):
        inside = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
    after = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
    assert all(inside[f] == 1 for f in ours)
    assert all(inside[f] == n for f, n in before.items() if f not in ours)  # NumPy's BLAS keeps its threads
    assert after == before
