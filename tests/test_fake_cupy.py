"""The CuPy stand-in keeps the promises its docstring makes (it is what the [fakegpu] cases rest on)."""

import numpy as np
import pytest
import scipy.linalg

import _fake_cupy


@pytest.fixture
def cp():
    with _fake_cupy.installed() as module:
        yield module


def test_device_arrays_refuse_implicit_host_use(cp):
    x = cp.asarray(np.arange(6.0))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Implicit conversion"):
        scipy.linalg.norm(x)
    with pytest.raises(TypeError, match="host array"):
        x + np.ones(6)
    with pytest.raises(TypeError, match="host array"):
        cp.concatenate([x, np.ones(2)])
    np.testing.assert_array_equal(x.get(), np.arange(6.0))  # the explicit way
    assert float(x.sum()) == 15.0 and isinstance(x.sum(), cp.ndarray)  # 0-d device array
    with pytest.raises(TypeError):
        range(x.sum().astype(int))  # no __index__, as in CuPy


def test_only_cupys_names_are_offered(cp):
    assert "einsum" in _fake_cupy.CUPY_NAMES["cupy"] and cp.einsum
    with pytest.raises(AttributeError, match="CuPy 14.2 has none"):
        cp.asmatrix  # NumPy has it, CuPy does not
    with pytest.raises(AttributeError):
        cp.asarray(np.ones(3)).ctypes  # a NumPy-only ndarray attribute
    with pytest.raises(TypeError):
        np.nanquantile(cp.asarray(np.ones(4)), 0.5)  # np.f(x) dispatches only to what CuPy has


def test_failed_factorisations_give_nan_as_cupys_do(cp):
    singular = cp.asarray(np.zeros((3, 3)))
    assert bool(cp.isnan(cp.linalg.cholesky(singular)).all())
    import cupyx.scipy.linalg

    assert bool(cp.isnan(cupyx.scipy.linalg.solve_triangular(singular, cp.asarray(np.ones(3)))).all())


def test_calls_hand_back_their_own_inputs(cp):
    x = cp.asarray(np.ones((4, 3)))
    assert x.astype(np.float64, copy=False) is x and cp.ascontiguousarray(x) is x
    assert x.astype(np.float32) is not x
