"""Sketching matrices that do not fit in memory: one pass over row chunks.

``S @ A == sum(S[:, a:b] @ A[a:b])`` for any chunking (the operators hash by
global column index), so a matrix on disk is sketched chunk by chunk with
memory bounded by about two chunks plus the sketch.
"""

from __future__ import annotations

import os

import numpy as np

from ._backend import as_operand, check_dtype, check_positive_int, cupy_available, is_scipy_sparse
from ._nvtx import annotate
from .operators import SketchOperator

__all__ = ["sketch"]

_CHUNK_BYTES = 64 << 20


def load_npy(path, mmap_mode=None, *, sparse=False):
    """A numeric array from a ``.npy`` file; other contents (pickles, object arrays) are refused.

    ``sparse=True`` also takes a SciPy sparse matrix saved by
    ``scipy.sparse.save_npz`` (an ``.npz`` archive with ``format`` and
    ``shape`` entries), read whole (a zip archive cannot be memory-mapped) and
    returned in CSR format.  Empty arrays are refused.  The errors are
    ``ValueError`` naming the file.
    """
    try:
        x = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError) as exc:  # NumPy takes a file without a .npy header for a pickle
        why = "no .npy header" if "pickle" in str(exc) else str(exc)
        raise ValueError(f"{path} is not a .npy array file ({why})") from None
    if not isinstance(x, np.ndarray):  # an .npz archive
        with x:
            names = sorted(x.files)
        if not (sparse and "format" in names and "shape" in names):
            what = "a .npy array file or a scipy.sparse.save_npz matrix" if sparse else "a .npy array file"
            raise ValueError(f"{path} is not {what} (found an .npz archive of {', '.join(names) or 'nothing'})")
        import scipy.sparse

        try:
            x = scipy.sparse.load_npz(path).tocsr()
        except (ValueError, KeyError, OSError, NotImplementedError) as exc:  # (a format it cannot load)
            raise ValueError(f"{path} is not a readable scipy.sparse.save_npz matrix ({exc})") from None
    if 0 in x.shape:
        raise ValueError(f"{path} holds an empty {'sparse matrix' if is_scipy_sparse(x) else 'array'} "
                         f"of shape {x.shape}")
    return x


def _open(source):
    """An object with ``.shape`` and row slicing, or ``None`` for a plain iterable of blocks."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"source file not found: {path}")
        if not path.endswith((".npy", ".npz")):
            raise ValueError(f"source path must be a .npy file or a scipy.sparse.save_npz .npz file, got {path!r}")
        return load_npy(path, mmap_mode="r", sparse=True)
    if is_scipy_sparse(source) and source.format not in ("csr", "csc"):
        return source.tocsr()  # COO, DIA, DOK, ...: no row slicing, or a slow one; one copy of an in-memory matrix
    if hasattr(source, "to_numpy") and hasattr(source, "shape") and not hasattr(source, "dtype"):
        # A DataFrame (pandas, polars): already in memory; it has per-column dtypes, no .dtype,
        # and slicing that is not always by row.  One array (object for mixed columns: refused).
        return np.asarray(source.to_numpy())
    if hasattr(source, "shape") and hasattr(source, "__getitem__"):
        if len(source.shape) not in (1, 2):  # iterated, a 3-D array was read as blocks of its first axis
            raise ValueError(f"source must be 1-D or 2-D, got shape {tuple(source.shape)}")
        return source  # NumPy array or memmap, h5py / zarr dataset (a vector when 1-D)
    if hasattr(source, "__iter__"):
        return None
    raise TypeError(f"source must be a .npy path, a 1-D or 2-D array-like dataset or an iterable of row blocks, "
                    f"got {type(source).__name__}")


def _progress(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="rows", desc="sketch")


def sketch(S, source, *, chunk_rows=None, device="auto", progress=True):
    """``S @ A`` for a matrix A read in row chunks from ``source``.

    Parameters
    ----------
    S : SketchOperator
        Shape ``(m, n)``; n must equal the rows of the source.
    source : str or path, array-like, sparse matrix, or iterable
        A ``.npy`` file (memory-mapped), a ``.npz`` file written by
        ``scipy.sparse.save_npz`` (read whole, then in CSR row chunks), a NumPy array or memmap, an HDF5 or
        Zarr dataset (anything 1-D or 2-D with ``.shape`` and row slicing), a
        SciPy sparse matrix (read in CSR row chunks), a pandas or polars
        DataFrame (in memory already: taken as one array, mixed column
        dtypes refused), or an iterable of 2-D row blocks in order (dense or
        SciPy sparse, all of one width).
    chunk_rows : int, optional
        Rows per chunk; default about 64 MiB of input per chunk.
    device : {"auto", "cpu", "gpu"}
        Where to sketch; ``"auto"`` uses a CUDA device when CuPy sees one.
        On the GPU each chunk's host-to-device copy is issued on its own
        stream one chunk ahead of the sketch that uses it (double buffering);
        from pageable host memory (a memmap) the driver stages the copy, so
        the overlap is partial.
    progress : bool
        Show a tqdm bar when tqdm is installed.

    Returns
    -------
    array of shape (m, d), or (m,) for a 1-D source: NumPy on the CPU, CuPy on the GPU

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from gpusketch import CountSketch, stream
    >>> A = np.random.default_rng(0).standard_normal((1000, 4))
    >>> path = os.path.join(tempfile.mkdtemp(), "A.npy"); np.save(path, A)
    >>> S = CountSketch(50, 1000, seed=1)
    >>> bool(np.allclose(stream.sketch(S, path, chunk_rows=300, progress=False), S @ A))
    True
    """
    with annotate("gpusketch.stream.sketch"):
        if not isinstance(S, SketchOperator):
            raise TypeError(f"S must be a sketch operator, got {type(S).__name__}")
        if device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
        if device == "gpu" and not cupy_available():
            raise ValueError("device='gpu' but no CUDA device is available")
        use_gpu = device == "gpu" or (device == "auto" and cupy_available())
        if chunk_rows is not None:
            chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
        data = _open(source)
        m, n = S.shape
        vector = data is not None and len(data.shape) == 1
        if data is not None:
            check_dtype(data.dtype, "source")  # before any block is read, naming the source
            if data.shape[0] != n:
                raise ValueError(f"source has {data.shape[0]} rows but S has {n} columns")
            width = 1 if vector else data.shape[1]
            rows = chunk_rows or max(1, _CHUNK_BYTES // max(1, width * np.dtype(data.dtype).itemsize))
            blocks = (data[a : min(n, a + rows)] for a in range(0, n, rows))
            if vector:  # sketched as one column, returned as a vector (a 1-D sparse array's chunks densified)
                blocks = (np.asarray(v.toarray() if is_scipy_sparse(v) else v).reshape(-1, 1) for v in blocks)
            elif is_scipy_sparse(data):
                blocks = (data[a : min(n, a + rows)].tocsr() for a in range(0, n, rows))
        else:
            blocks = iter(source)
        bar = _progress(n, progress)
        try:
            out = _run_gpu(S, blocks, bar) if use_gpu else _run_cpu(S, blocks, bar)
        finally:
            if bar is not None:
                bar.close()
        return out[:, 0] if vector else out


class _Blocks:
    """Checks each row block in turn: 2-D, a supported dtype, one width, no rows beyond S's columns."""

    def __init__(self, n):
        self.n, self.width, self.count = n, None, 0

    def check(self, block, a):
        name = f"block {self.count} of source"
        if not is_scipy_sparse(block):
            block = np.asarray(block)
            if block.ndim != 2:
                hint = (": an iterable source is read as row blocks; for a list of rows pass "
                        "numpy.asarray(source)" if block.ndim == 1 else "")
                raise ValueError(f"{name} must be 2-D (rows x columns), got shape {block.shape}{hint}")
        block, _ = as_operand(block, name, ndim=(2,))
        if self.width is None:
            self.width = block.shape[1]
        elif block.shape[1] != self.width:  # out + y would broadcast a width-1 block silently
            raise ValueError(f"{name} has {block.shape[1]} columns but block 0 has {self.width}")
        if a + block.shape[0] > self.n:
            raise ValueError(f"source has more than {self.n} rows, the columns of S")
        self.count += 1
        return block


def _run_cpu(S, blocks, bar):
    n = S.shape[1]
    checker = _Blocks(n)
    out, a = None, 0
    for block in blocks:
        block = checker.check(block, a)
        if block.shape[0] == 0:  # contributes nothing, and S[:, a:a] is no operator
            continue
        y = S[:, a : a + block.shape[0]] @ block
        out = y if out is None else out + y
        a += block.shape[0]
        if bar is not None:
            bar.update(block.shape[0])
    if a != n:
        raise ValueError(f"source has {a} rows but S has {n} columns")
    return out


def _run_gpu(S, blocks, bar):
    import cupy
    import cupyx.scipy.sparse as cusparse

    n = S.shape[1]
    copy_stream = cupy.cuda.Stream(non_blocking=True)
    compute = cupy.cuda.get_current_stream()
    out, a = None, 0
    pending = None  # (device buffer, rows, event) of the chunk being copied
    checker = _Blocks(n)
    rows_read = 0
    for block in blocks:
        block = checker.check(block, rows_read)
        if block.shape[0] == 0:
            continue
        rows_read += block.shape[0]
        with copy_stream:
            if is_scipy_sparse(block):
                dev = cusparse.csr_matrix(block)
            else:
                dev = cupy.asarray(np.ascontiguousarray(block))
            ready = copy_stream.record()
        if pending is not None:
            out, a = _sketch_chunk(S, pending, out, a, compute, bar)
        pending = (dev, ready)
    if pending is not None:
        out, a = _sketch_chunk(S, pending, out, a, compute, bar)
    if a != n:
        raise ValueError(f"source has {a} rows but S has {n} columns")
    return out


def _sketch_chunk(S, pending, out, a, compute, bar):
    dev, ready = pending
    compute.wait_event(ready)  # the copy of this chunk is done; the next one may still run
    y = S[:, a : a + dev.shape[0]] @ dev
    out = y if out is None else out + y
    if bar is not None:
        bar.update(dev.shape[0])
    return out, a + dev.shape[0]
