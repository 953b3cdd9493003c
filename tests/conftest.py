"""Shared fixtures: one test body runs on NumPy and on CuPy where a GPU exists, or
else on the NumPy-backed CuPy stand-in (``_fake_cupy``, the ``[fakegpu]`` cases)."""

import numpy as np
import pytest

from gpusketch._backend import cupy_available

import _fake_cupy

HAS_GPU = cupy_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA device")
# Where no GPU is, the GPU branches run on a NumPy-backed CuPy (tests/_fake_cupy.py).
fakegpu = pytest.mark.skipif(HAS_GPU, reason="a real GPU runs the gpu cases")


@pytest.fixture(
    params=[
        pytest.param("numpy", id="cpu"),
        pytest.param("cupy", id="gpu", marks=[pytest.mark.gpu, gpu]),
        pytest.param("fake", id="fakegpu", marks=[fakegpu]),
    ]
)
def xp(request):
    if request.param == "numpy":
        yield np
    elif request.param == "fake":
        with _fake_cupy.installed() as cupy:
            yield cupy
    else:
        import cupy

        yield cupy


@pytest.fixture
def cupy_or_fake():
    """CuPy where a GPU is, else the NumPy-backed stand-in: for tests of the
    device dispatch (streams, Dask chunks, mixed inputs), not of kernels."""
    if HAS_GPU:
        import cupy

        yield cupy
    else:
        with _fake_cupy.installed() as cupy:
            yield cupy


def to_numpy(x):
    """Host copy of a NumPy/CuPy array (dense)."""
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def sparse_module(xp):
    if xp is np:
        import scipy.sparse as sp

        return sp
    import cupyx.scipy.sparse as csp

    return csp


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


def one_entry_per_column(n=5000, d=20, seed=0):
    """``(A, b, x_ref)``: a full-rank n × d A whose only nonzeros are one entry in [1, 2) per
    column, on distinct rows, a Gaussian b, and the least-squares solution.  A CountSketch
    that puts two of those rows into one bucket loses a direction of A."""
    rng = np.random.default_rng(seed)
    A = np.zeros((n, d))
    A[rng.choice(n, d, replace=False), np.arange(d)] = rng.uniform(1, 2, d)
    b = rng.standard_normal(n)
    return A, b, np.linalg.lstsq(A, b, rcond=None)[0]


def flip_svd_signs(monkeypatch):
    """Make ``numpy.linalg.svd`` return every other singular pair with the opposite sign, as
    another SVD routine may (cuSOLVER's signs need not be LAPACK's)."""
    svd = np.linalg.svd

    def flipped(M, *args, **kwargs):
        out = svd(M, *args, **kwargs)
        if kwargs.get("compute_uv", True) is False:
            return out
        U, s, Vt = out
        sign = np.where(np.arange(s.size) % 2 == 0, -1.0, 1.0)
        return U * sign, s, Vt * sign[:, None]

    monkeypatch.setattr(np.linalg, "svd", flipped)


def refinement_off(monkeypatch):
    """``lstsq``'s preconditioner refinement off whatever the shape (``refine_pays``' constants
    at 0: neither band), so that the sketch's R alone preconditions LSMR."""
    from gpusketch.linalg import _precondition

    for name in ("REFINE_COLUMNS_PER_ITERATION", "GRAM_REFINE_COLUMNS_PER_ITERATION"):
        monkeypatch.setattr(_precondition, name, {"numpy": 0, "cupy": 0})
