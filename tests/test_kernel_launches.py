"""Every CUDA kernel launch passes the arguments its C signature declares (on the CuPy stand-in),
and the CuPy twins the stand-in can carry out compute what their NumPy twins do.

Without a GPU the kernels cannot run, but the Python that launches them can: the
stand-in's ``RawModule`` parses each ``__global__`` signature from the shipped
``.cu`` sources and checks every launch against it — argument count, device
arrays of the declared element type for pointers, NumPy scalars of exactly the
declared width for values (a Python int or an ``int64`` passed for an ``int``
is read as garbage by the kernel), grid and block in range.  Here each kernel
instantiation that run time asks for is launched at least once.
"""

import numpy as np
import pytest
import scipy.sparse as sp

import _fake_cupy
import gpusketch as gs
from conftest import HAS_GPU
from gpusketch import _kernels, kron, robust

pytestmark = pytest.mark.skipif(HAS_GPU, reason="a real GPU runs the kernels themselves (kernel vs twin tests)")

# cupyx's sparse matrices hold int32 indices; the int64 instantiations serve other callers.
NOT_REACHED = {"hash_sketch_csr<float,long long>", "hash_sketch_csr<double,long long>"}


def _exercise(cp):
    import cupyx.scipy.sparse as csp

    rng = np.random.default_rng(0)
    A = rng.standard_normal((3000, 8))
    for dt in (np.float32, np.float64):
        X = cp.asarray(A.astype(dt))
        for S in (gs.CountSketch(64, 3000, seed=1), gs.SparseSign(64, 3000, nnz=4, seed=1),
                  gs.CountSketch(64, 3000, seed=1, deterministic=True), gs.SRHT(64, 3000, seed=1),
                  gs.Gaussian(64, 3000, seed=1), gs.Sampling([5, 17, 5, 2999], 3000, scale=[1.0, 2.0, 3.0, 4.0])):
            Y = S @ X
            S @ cp.asfortranarray(X)
            S @ X[:, 0]
            S.T @ Y
        M = sp.random(3000, 8, density=0.3, format="csr", random_state=1, dtype=dt)
        gs.CountSketch(64, 3000, seed=1) @ csp.csr_matrix(M)
        gs.Gaussian(16, 3000, seed=1) @ csp.csr_matrix(M)
        gs.CountSketch(64, 3000, seed=1) @ cp.asarray(rng.standard_normal((3000, 520)).astype(dt))  # sorted
        gs.operators.MultiLevelCountSketch(16, 3000, 3, seed=1) @ X
        for S in (gs.SparseSign(64, 3000, nnz=4, seed=1), gs.Gaussian(16, 3000, seed=1),
                  gs.operators.MultiLevelCountSketch(16, 3000, 3, seed=1)):
            S.matmul_each(X, X[:, 0], cp.asarray(A))  # the shared-block twins, mixed dtypes
        F = [cp.asarray(rng.standard_normal(s).astype(dt)) for s in ((60, 3), (50, 2))]
        gs.Kronecker([gs.CountSketch(8, 60, seed=1), gs.CountSketch(8, 50, seed=2)]) @ cp.asarray(
            rng.standard_normal(3000).astype(dt))
        kron.KroneckerMatrix(F).rows(cp.asarray(np.arange(10)))
    Ad, b = cp.asarray(A), cp.asarray(A @ np.ones(8))
    gs.CountSketch(64, 3000, seed=1).hashes(cp)
    robust.heavy_coordinates(Ad, 4, seed=1)
    robust.heavy_coordinates(Ad, 4000, seed=1)
    robust.tukey_regression(Ad, b, 3.0, seed=1)
    gs.leverage_sample(Ad, 100, seed=1)
    gs.rank(cp.asarray(rng.standard_normal((300, 2)) @ rng.standard_normal((2, 400))), seed=1)  # csc_times_dense
    gs.rank(csp.csr_matrix(sp.random(2000, 500, density=0.05, format="csr", random_state=2)), seed=1)  # csc_times_sparse
    gs.lstsq(csp.csr_matrix(sp.random(3000, 8, density=0.5, format="csr", random_state=3)), b, seed=1)  # sparse_product
    kron.lstsq([cp.asarray(rng.standard_normal(s)) for s in ((60, 3), (50, 2))], cp.asarray(rng.standard_normal(3000)),
               m=200, seed=1)
    _kernels.call("philox_blocks", cp, np.zeros((4, 4), dtype=np.uint32), (1, 2))
    _kernels.call("gaussian_block", cp, 7, 5, 40, 0.5, 11, 3, np.float32)  # the sketch twins call it directly


def test_every_kernel_is_launched_as_its_signature_declares(monkeypatch):
    monkeypatch.setattr(_fake_cupy, "LAUNCHES", [])
    monkeypatch.setattr(_fake_cupy, "TWINS_COMPARED", {})
    with _fake_cupy.installed() as cp:
        _exercise(cp)  # a launch that disagrees with its signature raises here
    launched = {name for name, _, _ in _fake_cupy.LAUNCHES}
    expected = {n for names in _kernels.NAME_EXPRESSIONS.values() for n in names} - NOT_REACHED
    assert expected <= launched, sorted(expected - launched)
    # Every CuPy twin (but hash_values, which returns a pair) computed for real, its launches
    # carried out from the kernels' CUDA semantics, and matched its NumPy twin: the arguments'
    # values (strides, offsets, seeds, scales, grids) are right, and the padded batched group
    # leverage, the GPU's own algorithm, agrees.
    compared_everywhere = {name for name, backend in _kernels._TWINS if backend == "cupy"} - {"hash_values"}
    assert compared_everywhere <= set(_fake_cupy.TWINS_COMPARED), sorted(
        compared_everywhere - set(_fake_cupy.TWINS_COMPARED))


def test_a_mismatched_launch_is_refused():
    """The check can fail: a 64-bit value for an ``int``, a float64 array for a ``float*``,
    a missing argument, a block of more than 1024 threads."""
    with _fake_cupy.installed() as cp:
        kernel = _kernels._kernel("hash_sketch.cu", "hash_values")
        b, s = cp.zeros((4, 1), dtype=cp.int64), cp.zeros((4, 1), dtype=cp.int8)
        good = [np.int64(0), np.int64(4), np.int32(8), np.int32(1), np.uint32(1), np.uint32(2), np.uint32(0), b, s]
        kernel((1,), (32,), tuple(good))
        with pytest.raises(TypeError, match="argument 2 must be a NumPy int32 scalar"):
            kernel((1,), (32,), tuple(good[:2] + [np.int64(8)] + good[3:]))
        with pytest.raises(TypeError, match="argument 8 must be a device array of int8"):
            kernel((1,), (32,), tuple(good[:8] + [cp.zeros((4, 1), dtype=cp.int32)]))
        with pytest.raises(TypeError, match="8 arguments for 9 parameters"):
            kernel((1,), (32,), tuple(good[:8]))
        with pytest.raises(ValueError, match="block"):
            kernel((1,), (64, 32), tuple(good))
        fw = _kernels._kernel("hadamard.cu", "fwht_stage<float>")
        with pytest.raises(TypeError, match="argument 0 must be a device array of float32"):
            fw((1,), (32,), (cp.zeros(8), np.int64(8), np.int32(1), np.int64(1)))
