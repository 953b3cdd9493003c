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
    monkeypatch.setattr(_backend, "_scipy_blas_pools", lambda: (pool,))
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


def test_restored_when_the_entry_point_raises(fake_pool):
    with pytest.raises(ValueError, match="method"):
        gs.lstsq(np.ones((10, 2)), np.ones(10), method="nope")
    assert fake_pool.n == 4 and fake_pool.calls == [1, 4]
    assert _backend._serial_depth == 0


def test_opt_out_by_environment(monkeypatch):
    monkeypatch.setenv(_backend.SERIAL_SCIPY_BLAS_ENV, "0")
    _backend._scipy_blas_pools.cache_clear()
    try:
        assert _backend._scipy_blas_pools() == ()
    finally:
        monkeypatch.delenv(_backend.SERIAL_SCIPY_BLAS_ENV)
        _backend._scipy_blas_pools.cache_clear()


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
