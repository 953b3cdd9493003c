"""Streaming sketches from disk and from iterables equal the in-memory sketch."""

import numpy as np
import pytest

import gpusketch as gs
from gpusketch import stream
from conftest import HAS_GPU, to_numpy


@pytest.fixture
def npy(tmp_path):
    A = np.random.default_rng(0).standard_normal((5003, 6))
    path = tmp_path / "A.npy"
    np.save(path, A)
    return A, path


@pytest.mark.parametrize("kind", ["countsketch", "sparse_sign", "srht", "gaussian"])
def test_npy_file_larger_than_chunk(npy, kind):
    A, path = npy
    S = gs.operators.make_sketch(kind, 64, A.shape[0], seed=3)
    Y = stream.sketch(S, path, chunk_rows=700, device="cpu", progress=False)
    np.testing.assert_allclose(Y, S @ A, rtol=1e-10, atol=1e-10)


def test_memmap_and_iterable(npy):
    A, path = npy
    S = gs.SparseSign(40, A.shape[0], nnz=4, seed=4)
    mm = np.load(path, mmap_mode="r")
    np.testing.assert_allclose(stream.sketch(S, mm, chunk_rows=999, device="cpu", progress=False), S @ A, atol=1e-10)
    blocks = (A[a : a + 1234] for a in range(0, A.shape[0], 1234))
    np.testing.assert_allclose(stream.sketch(S, blocks, device="cpu", progress=False), S @ A, atol=1e-10)
    n = A.shape[0]  # blocks shorter than A is wide, up to the last row
    ragged = [A[: n - 3], A[n - 3 : n - 2], A[n - 2 :]]
    np.testing.assert_allclose(stream.sketch(S, ragged, device="cpu", progress=False), S @ A, atol=1e-10)


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_a_dataframe_source(npy, device, request):
    """A pandas DataFrame has per-column dtypes and no ``.dtype``: it raised AttributeError.
    It is taken as one array; mixed column dtypes (object) are refused by name."""
    pd = pytest.importorskip("pandas")
    if device == "gpu":
        request.getfixturevalue("cupy_or_fake")
    A = npy[0]
    S = gs.SparseSign(40, A.shape[0], nnz=4, seed=8)
    df = pd.DataFrame(A, columns=list("abcdef"))
    for chunk in (None, 777):
        Y = stream.sketch(S, df, chunk_rows=chunk, device=device, progress=False)
        np.testing.assert_allclose(to_numpy(Y), S @ A, rtol=1e-10, atol=1e-10)
    ints = pd.DataFrame({"i": np.arange(A.shape[0]), "x": A[:, 0]})  # int64 and float64 columns: float64
    np.testing.assert_allclose(to_numpy(stream.sketch(S, ints, device=device, progress=False)),
                               S @ np.c_[np.arange(A.shape[0]), A[:, 0]], rtol=1e-10, atol=1e-8)
    with pytest.raises(TypeError, match="source has unsupported dtype object"):
        stream.sketch(S, df.assign(g="x"), device=device, progress=False)
    assert df.shape == A.shape and np.array_equal(df.to_numpy(), A)  # not modified


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_a_vector_source_gives_a_vector(npy, tmp_path, device, request):
    if device == "gpu":
        request.getfixturevalue("cupy_or_fake")
    v = npy[0][:, 2].copy()
    path = tmp_path / "v.npy"
    np.save(path, v)
    S = gs.SparseSign(40, v.size, nnz=4, seed=6)
    for source in (path, v, np.load(path, mmap_mode="r")):
        y = stream.sketch(S, source, chunk_rows=700, device=device, progress=False)
        assert y.shape == (40,)
        np.testing.assert_allclose(to_numpy(y), S @ v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_sparse_source_and_sparse_blocks(npy, device, request):
    if device == "gpu":
        request.getfixturevalue("cupy_or_fake")
    import scipy.sparse as sp

    A = np.where(np.abs(npy[0]) > 1.5, npy[0], 0.0)
    S = gs.SparseSign(40, A.shape[0], nnz=4, seed=7)
    # COO and LIL sources have no (fast) row slicing: they are read as CSR (COO raised
    # "not subscriptable").  Blocks of no rows are skipped: S[:, a:a] is no operator.
    blocks = [sp.coo_matrix(A[a : a + 999]) for a in range(0, A.shape[0], 999)]
    blocks[2:2] = [A[1998:1998], sp.csr_matrix(A[1998:1998])]
    saved = npy[1].with_name("A.npz")  # a scipy.sparse.save_npz file, by path
    sp.save_npz(saved, sp.csc_matrix(A))
    for source in (sp.csr_matrix(A), sp.csc_array(A), sp.coo_matrix(A), sp.lil_array(A), iter(blocks), saved):
        Y = stream.sketch(S, source, chunk_rows=700, device=device, progress=False)
        assert Y.shape == (40, 6)
        np.testing.assert_allclose(to_numpy(Y), S @ A, rtol=1e-10, atol=1e-10)
    y = stream.sketch(S, sp.csr_array(A[:, 1]), chunk_rows=700, device=device, progress=False)  # 1-D sparse
    assert y.shape == (40,)
    np.testing.assert_allclose(to_numpy(y), S @ A[:, 1], rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
def test_gpu_double_buffered_stream(npy, cupy_or_fake):
    A, path = npy
    S = gs.CountSketch(64, A.shape[0], seed=5)
    Y = stream.sketch(S, path, chunk_rows=500, device="gpu", progress=False)
    assert type(Y).__module__.split(".")[0] == "cupy"  # sketched on the device, not on the host
    np.testing.assert_allclose(to_numpy(Y), S @ A, rtol=1e-10, atol=1e-10)
    assert type(stream.sketch(S, path, chunk_rows=500, progress=False)).__module__.split(".")[0] == "cupy"  # auto
    with pytest.raises(ValueError, match=f"more than {A.shape[0]} rows"):  # checked as each block is read
        stream.sketch(S, iter([A, A[:5]]), device="gpu", progress=False)


def test_stream_bad_input(npy, tmp_path):
    A, path = npy
    S = gs.CountSketch(8, A.shape[0], seed=1)
    with pytest.raises(FileNotFoundError, match="not found"):
        stream.sketch(S, tmp_path / "missing.npy", progress=False)
    with pytest.raises(ValueError, match=f"source has {A.shape[0]} rows but S has 10 columns"):
        stream.sketch(gs.CountSketch(8, 10, seed=1), path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="rows"):
        stream.sketch(S, iter([A[:100]]), device="cpu", progress=False)
    with pytest.raises(ValueError, match=f"more than {A.shape[0]} rows"):  # one block too many
        stream.sketch(S, iter([A, A[:5]]), device="cpu", progress=False)
    with pytest.raises(TypeError, match="sketch operator"):
        stream.sketch(np.eye(3), path, progress=False)
    with pytest.raises(ValueError, match="device"):
        stream.sketch(S, path, device="tpu", progress=False)
    if not HAS_GPU:
        with pytest.raises(ValueError, match="device='gpu' but no CUDA device is available"):
            stream.sketch(S, path, device="gpu", progress=False)
        assert type(stream.sketch(S, path, progress=False)) is np.ndarray  # auto: the CPU
    with pytest.raises(ValueError, match="chunk_rows"):
        stream.sketch(S, path, chunk_rows=0, progress=False)
    with pytest.raises(ValueError, match="block 1 of source has 6 columns but block 0 has 1"):  # it broadcast
        stream.sketch(S, iter([A[:100, :1], A[100:]]), device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"block 0 of source must be 2-D \(rows x columns\), got shape \(6,\): "
                                         r".*for a list of rows pass numpy.asarray\(source\)"):
        stream.sketch(S, A.tolist(), device="cpu", progress=False)  # a list of rows is not a list of blocks
    with pytest.raises(ValueError, match="source path must be a .npy file or a scipy.sparse.save_npz .npz file"):
        stream.sketch(S, str(tmp_path), device="cpu", progress=False)
    (tmp_path / "junk.npy").write_text("not an array")
    with pytest.raises(ValueError, match=r"junk.npy is not a .npy array file \(no .npy header\)"):
        stream.sketch(S, tmp_path / "junk.npy", device="cpu", progress=False)
    np.savez(tmp_path / "fake.npz", format=np.array("lil"), shape=np.array([3, 3]))  # the keys, not the matrix
    with pytest.raises(ValueError, match=r"fake.npz is not a readable scipy.sparse.save_npz matrix"):
        stream.sketch(S, tmp_path / "fake.npz", device="cpu", progress=False)
    np.savez(tmp_path / "plain.npz", A=A)
    with pytest.raises(ValueError, match=r"plain.npz is not a .npy array file or a scipy.sparse.save_npz matrix "
                                         r"\(found an .npz archive of A\)"):
        stream.sketch(S, tmp_path / "plain.npz", device="cpu", progress=False)
    with pytest.raises(TypeError, match="source must be a .npy path"):
        stream.sketch(S, 3.0, device="cpu", progress=False)
    with pytest.raises(TypeError, match="source has dtype float16"):
        stream.sketch(S, A.astype(np.float16), device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"source must be 1-D or 2-D, got shape \(\d+, 3, 2\)"):  # iterated, it
        stream.sketch(S, np.zeros((A.shape[0], 3, 2)), device="cpu", progress=False)  # said "more than n rows"
    strings = tmp_path / "strings.npy"
    np.save(strings, np.array(["a"] * A.shape[0]))
    with pytest.raises(TypeError, match="source has unsupported dtype <U1"):  # it named a "block"
        stream.sketch(S, strings, device="cpu", progress=False)


def test_make_sketch_caps_srht_rows_at_the_padded_length():
    from gpusketch.operators import make_sketch

    assert make_sketch("srht", 5000, 1000, seed=1).shape == (1024, 1000)
    assert make_sketch("countsketch", 5000, 1000, seed=1).shape == (5000, 1000)
