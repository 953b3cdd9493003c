"""Shared fixtures: one test body runs on NumPy and, where a GPU exists, on CuPy."""

import numpy as np
import pytest

from gpusketch._backend import cupy_available

HAS_GPU = cupy_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA device")


@pytest.fixture(
    params=[
        pytest.param("numpy", id="cpu"),
        pytest.param("cupy", id="gpu", marks=[pytest.mark.gpu, gpu]),
    ]
)
def xp(request):
    if request.param == "numpy":
        return np
    import cupy

    return cupy


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
