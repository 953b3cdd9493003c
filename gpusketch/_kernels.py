"""Kernel layer: CUDA kernels (``kernels/*.cu``) and their CPU twins.

Each operation has two implementations with one signature: a CUDA kernel
launched through ``cupy.RawModule`` and a NumPy/SciPy twin that computes the
same thing from the same Philox hashes.  A sketch twin is handed ``out``, the
zeroed result buffer, and returns the result: the CUDA kernels accumulate
into ``out``; a CPU twin may instead return a new array, e.g. the sum of
partial products from its threads (``_parallel_sum``), leaving ``out``
unwritten.
:func:`call` is the one dispatch point between them: it picks the twin by
the array module ``xp`` that the public entry point resolved.  Nothing here
validates user input; the operator layer has done that.

CUDA modules are compiled lazily on first use (never at import), one module
per ``.cu`` file with every template instantiation named up front
(``name_expressions``), and cached per device.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from . import _random
from ._backend import all_blas_serial, check_memory, to_dense, to_host
from ._nvtx import annotate

__all__ = ["call", "kernel_dir", "NAME_EXPRESSIONS", "load_module", "kernel_sources", "uniforms", "level_values"]

# ---------------------------------------------------------------------------
# CUDA sources and loading
# ---------------------------------------------------------------------------

_FLOATS = ("float", "double")
_INDEX = ("int", "long long")

#: Every kernel instantiation that run time asks for, per source file.  The
#: nvcc compile test instantiates exactly these.
NAME_EXPRESSIONS = {
    "hash_sketch.cu": [f"hash_sketch_rowmajor<{t}>" for t in _FLOATS]
    + [f"hash_sketch_colmajor<{t}>" for t in _FLOATS]
    + [f"hash_sketch_sorted<{t}>" for t in _FLOATS]
    + [f"hash_sketch_csr<{t},{i}>" for t in _FLOATS for i in _INDEX]
    + [f"hash_adjoint<{t}>" for t in _FLOATS]
    + [f"hash_sketch_levels<{t}>" for t in _FLOATS]
    + ["hash_values", "philox_blocks"],
    "kronecker.cu": [f"kron_hash_sketch<{t}>" for t in _FLOATS] + [f"kron_rows<{t}>" for t in _FLOATS],
    "hadamard.cu": [f"fwht_stage<{t}>" for t in _FLOATS] + [f"fwht_local<{t}>" for t in _FLOATS],
    "gaussian.cu": [f"gaussian_fill<{t}>" for t in _FLOATS],
}


def kernel_dir() -> Path:
    """Directory holding the ``.cu`` sources.

    An installed wheel has them in ``gpusketch/kernels``; a source checkout
    (editable install or ``PYTHONPATH``) has them in ``kernels/`` beside the
    package.
    """
    here = Path(__file__).resolve().parent
    for cand in (here / "kernels", here.parent / "kernels"):
        if (cand / "philox.cuh").is_file():
            return cand
    raise FileNotFoundError(f"CUDA sources not found beside {here}; the installation is incomplete")


def kernel_sources(filename: str) -> str:
    """Source of one module with ``philox.cuh`` inlined.

    Inlining (rather than ``-I``) keeps CuPy's on-disk kernel cache keyed on
    the header's text too.
    """
    d = kernel_dir()
    header = (d / "philox.cuh").read_text()
    return (d / filename).read_text().replace('#include "philox.cuh"', header)


@functools.lru_cache(maxsize=None)
def _module_loader():
    import cupy

    @cupy.memoize(for_each_device=True)
    def load(filename):
        return cupy.RawModule(
            code=kernel_sources(filename),
            options=("--std=c++17",),
            name_expressions=NAME_EXPRESSIONS[filename],
        )

    return load


def load_module(filename):
    """The compiled ``cupy.RawModule`` of one source file on the current device."""
    return _module_loader()(filename)


def _kernel(filename, name):
    return load_module(filename).get_function(name)


def _ctype(dtype):
    return "float" if np.dtype(dtype) == np.float32 else "double"


@functools.lru_cache(maxsize=None)
def _sm_count(device_id):
    import cupy

    return cupy.cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"]


def _grid(work_items, per_block, xp):
    """Grid size: enough blocks to cover the work, capped at 32 per SM (grid-stride loops)."""
    cap = 32 * _sm_count(xp.cuda.Device().id)
    return int(max(1, min(cap, -(-work_items // per_block))))


# ---------------------------------------------------------------------------
# Registry: one dispatch point between the twins
# ---------------------------------------------------------------------------

_TWINS: dict = {}


def _twin(name, backend):
    def register(fn):
        _TWINS[(name, backend)] = fn
        return fn

    return register


def call(name, xp, *args, **kwargs):
    """Run operation ``name`` with the twin for array module ``xp``."""
    backend = "numpy" if xp is np else "cupy"
    with annotate(f"gpusketch.kernel.{name}[{backend}]"):
        return _TWINS[(name, backend)](*args, **kwargs)


# ---------------------------------------------------------------------------
# Philox blocks and hash values
# ---------------------------------------------------------------------------


@_twin("philox_blocks", "numpy")
def _philox_blocks_cpu(counters, key):
    return _random.philox4x32(counters, key)


@_twin("philox_blocks", "cupy")
def _philox_blocks_gpu(counters, key):
    import cupy

    ctr = cupy.asarray(np.ascontiguousarray(counters, dtype=np.uint32).reshape(-1, 4))
    out = cupy.empty_like(ctr)
    count = ctr.shape[0]
    _kernel("hash_sketch.cu", "philox_blocks")(
        (_grid(count, 256, cupy),), (256,),
        (ctr, np.uint32(key[0]), np.uint32(key[1]), np.int64(count), out),
    )
    return out.reshape(np.shape(counters))


def _buckets(w, t, m, nnz):
    """Bucket of hash word w for nonzero t: row block ``[t m/nnz, (t+1) m/nnz)``, upper 31 bits."""
    lo = t * m // nnz
    size = (t + 1) * m // nnz - lo
    return lo + (((w >> np.uint64(1)) * np.uint64(size)) >> np.uint64(31)).astype(np.int64)


def _bucket_sign(w, t, m, nnz):
    """Bucket and sign (the low bit) of hash word w for nonzero t."""
    return _buckets(w, t, m, nnz), (1 - 2 * (w & np.uint64(1)).astype(np.int8)).astype(np.int8)


def _hash_values_np(col0, n, m, nnz, seed, stream):
    """``_bucket_sign`` of columns ``col0 .. col0+n-1``'s hash words, chunk by chunk.

    Each chunk's bucket and sign arithmetic runs in place while its words are
    still in cache; whole-array passes made the arithmetic cost as much as
    Philox itself (hashing 2^20 CountSketch columns took 0.66-0.86x the time
    this way, measured on the 2-core development box).
    """
    buckets = np.empty((n, nnz), dtype=np.int64)
    signs = np.empty((n, nnz), dtype=np.int8)
    t = np.arange(nnz, dtype=np.int64)
    lo = t * m // nnz
    size = ((t + 1) * m // nnz - lo).astype(np.uint64)
    flat_b, flat_s = buckets.reshape(-1), signs.reshape(-1)
    chunk = max(1, (4 * _random._BLOCK) // nnz) * nnz  # whole columns per chunk
    for a, b, w in _random.hash_word_chunks(col0 * nnz, n * nnz, seed, stream, chunk):
        # bucket = lo[t] + ((w >> 1) * size[t]) >> 31, which is < 2^31: exact in int64
        x = np.right_shift(w, np.uint64(1))
        np.multiply(x.reshape(-1, nnz), size, out=x.reshape(-1, nnz))
        np.right_shift(x, np.uint64(31), out=x)
        out_b = flat_b[a:b]
        out_b[...] = x.view(np.int64)
        if nnz > 1:
            out_b.reshape(-1, nnz).__iadd__(lo)
        # sign = 1 - 2 * (w & 1)
        np.bitwise_and(w, np.uint64(1), out=x)
        out_s = flat_s[a:b]
        np.copyto(out_s, x, casting="unsafe")
        np.multiply(out_s, np.int8(-2), out=out_s)
        np.add(out_s, np.int8(1), out=out_s)
    return buckets, signs


def _hash_values_at(cols, m, nnz, seed, stream):
    """``_hash_values_np`` of the columns ``cols`` only: one Philox block per word
    (``hash_words_at``), so it pays off below about a quarter of a range's columns."""
    t = np.arange(nnz, dtype=np.int64)
    g = np.asarray(cols, dtype=np.uint64)[:, None] * np.uint64(nnz) + t.astype(np.uint64)
    w = _random.hash_words_at(g, seed, stream).reshape(-1, nnz)
    return _bucket_sign(w, t[None, :], m, nnz)


@_twin("hash_values", "numpy")
def _hash_values_cpu(col0, n, m, nnz, seed, stream):
    return _hash_values_np(col0, n, m, nnz, seed, stream)


@_twin("hash_values", "cupy")
def _hash_values_gpu(col0, n, m, nnz, seed, stream):
    import cupy

    buckets = cupy.empty((n, nnz), dtype=cupy.int64)
    signs = cupy.empty((n, nnz), dtype=cupy.int8)
    k0, k1 = _random.split_seed(seed)
    _kernel("hash_sketch.cu", "hash_values")(
        (_grid(n * nnz, 256, cupy),), (256,),
        (np.int64(col0), np.int64(n), np.int32(m), np.int32(nnz), np.uint32(k0), np.uint32(k1),
         np.uint32(stream), buckets, signs),
    )
    return buckets, signs


def uniforms(n, seed, xp, start=0):
    """n uniforms in (0, 1) from Philox hash words (stream ``STREAM_UNIFORM``), on ``xp``.

    Bit-identical on both backends, so randomized algorithms keep the same
    rows on CPU and GPU for the same seed.  Entry i is a function of
    ``start + i`` and the seed only: the uniforms of rows ``a:b`` are
    ``uniforms(b − a, seed, xp, start=a)``, the same numbers in any chunking.
    """
    buckets, _ = call("hash_values", xp, start, n, 1 << 30, 1, seed, _random.STREAM_UNIFORM)
    return (buckets[:, 0] + 0.5) / float(1 << 30)


@_twin("inverse_cdf", "numpy")
def _inverse_cdf_cpu(cdf, u):
    # ``searchsorted(cdf, u, side="right")``: the first i with cdf[i] > u.  For a short cdf
    # and many draws, a guide table (Chen & Asau 1974): G = 2^g >= 2 len(cdf) cells, cell c
    # starting at the first i with cdf[i] > c/G, then a few vectorised steps forward.  G a
    # power of two makes u·G and c/G exact, so the start never passes the answer.  NumPy's
    # binary search costs ~100 ns a draw (12100 draws into 300 entries: 1.3 ms).
    k = cdf.size
    if k == 0 or k > u.size:
        return np.searchsorted(cdf, u, side="right")
    G = 1 << max(1, (2 * k - 1).bit_length())
    table = np.searchsorted(cdf, np.arange(G, dtype=np.float64) / G, side="right")
    i = table[np.minimum((u * G).astype(np.int64), G - 1)]
    todo = np.flatnonzero(i < k)
    todo = todo[cdf[i[todo]] <= u[todo]]
    while todo.size:
        i[todo] += 1
        todo = todo[i[todo] < k]
        todo = todo[cdf[i[todo]] <= u[todo]]
    return i


@_twin("inverse_cdf", "cupy")
def _inverse_cdf_gpu(cdf, u):
    import cupy

    return cupy.searchsorted(cdf, u, side="right")


# ---------------------------------------------------------------------------
# Hashing sketches (CountSketch, SparseSign): scatter-add and adjoint gather
# ---------------------------------------------------------------------------

_CPU_BLOCK = 1 << 16
# Hash values (columns × nnz) up to which the CPU adjoint ``Sᵀ Y`` is one product
# (``_hash_adjoint_cpu``): beyond, blocks of columns.  Below, the blocks' copy into the
# result costs more than the hashes save (CountSketch 100000 x 64: 15 ms blocked, 8-9 whole).
_ADJOINT_WHOLE_HASHES = 1 << 20


def _cpu_threads(work):
    if work < (1 << 21):
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def _thread_map(fn, items, work):
    """``[fn(i) for i in items]``, on CPU threads with BLAS serial in each where ``work`` (the
    entries touched, as the caller counts them) is large enough for ``_cpu_threads`` to give
    several; in order either way."""
    items = list(items)
    threads = min(len(items), _cpu_threads(work))
    if threads <= 1:
        return [fn(i) for i in items]
    with all_blas_serial, ThreadPoolExecutor(threads) as ex:
        return list(ex.map(fn, items))


def _hash_matrix_cpu(col0, c, m, nnz, scale, seed, stream, dtype):
    """S[:, col0:col0+c] as a SciPy CSC matrix (m x c), nnz entries per column."""
    return _hash_matrix_of(*_hash_values_np(col0, c, m, nnz, seed, stream), m, scale, dtype)


def _hash_matrix_of(buckets, signs, m, scale, dtype):
    """The m x c CSC matrix of the hash values ``(buckets, signs)``, each of shape (c, nnz)."""
    c, nnz = buckets.shape
    data = (signs.astype(dtype) * dtype.type(scale)).ravel()
    indptr = np.arange(0, (c + 1) * nnz, nnz, dtype=np.int64)
    return sp.csc_matrix((data, buckets.ravel(), indptr), shape=(m, c))


def _row_blocks(n, block):
    return [(a, min(n, a + block)) for a in range(0, n, block)]


def _dense_row_blocks(n, threads):
    """Row blocks of ``_CPU_BLOCK`` rows, but at least one per thread (a short, wide A
    would otherwise be one block on one core: 65536 × 1024 fp64 → 8192 measured 229 →
    154 ms on 2 cores, scipy's clarkson_woodruff_transform 188 ms, same run)."""
    return _row_blocks(n, max(1, min(_CPU_BLOCK, -(-n // max(1, threads)))))


def _parallel_sum(fn, ranges, threads, out):
    """``sum(fn(a, b) for (a, b) in ranges)`` in the shape and dtype of ``out``, split across threads.

    ``out`` is the zeroed result buffer the operator layer allocated; the sum is
    returned as a new array (the first partial, with the others added into
    it) and ``out`` is left unwritten, or returned as is when there is nothing
    to add.  Adding the partials into out instead cost two more passes over
    the result (and first-touch page faults on its fresh pages): 11 % of a
    CPU CountSketch with a large output (65536 × 1024 → 8192), within noise
    on narrower ones.
    SciPy's sparse products release the GIL, so threads give real speed-up.
    Each thread accumulates its own partial sum; partials are added at the
    end, in thread order (the same sum as adding them into a zero buffer,
    except that an entry of −0.0 now stays −0.0).  BLAS runs on one thread
    meanwhile (``all_blas_serial``).
    """
    return _parallel_sums(lambda a, b: (fn(a, b),), ranges, threads, (out,))[0]


def _parallel_sums(fn, ranges, threads, outs):
    """``_parallel_sum`` of several sums at once: ``fn(a, b)`` returns one term per
    buffer of ``outs`` (a tuple), and a tuple of the sums comes back.  The sketches
    of several operands with one S share its blocks this way (``_hash_sketch_dense_cpu``)."""

    def run(part):
        acc = None
        for a, b in part:
            ys = fn(a, b)
            acc = list(ys) if acc is None else [x.__iadd__(y) for x, y in zip(acc, ys)]
        return acc

    if threads <= 1 or len(ranges) < 2:
        accs = [run(ranges)]
    else:
        parts = [ranges[i::threads] for i in range(threads)]
        with all_blas_serial, ThreadPoolExecutor(threads) as ex:  # the threads are the parallelism, not BLAS
            accs = list(ex.map(run, [p for p in parts if p]))
    accs = [acc for acc in accs if acc is not None]
    if not accs:
        return tuple(outs)
    totals = accs[0]
    for acc in accs[1:]:
        for total, y in zip(totals, acc):
            total += y
    return tuple(total.reshape(out.shape).astype(out.dtype, copy=False) for total, out in zip(totals, outs))


# A CountSketch of a C-order A whose result is at least this large is taken by
# bucket ranges (``_sketch_bucket_ranges``).  Measured on the 2-core development
# box (32 MB L3), bucket ranges against per-thread partial sums, medians of 5: 0.73-0.81x
# the time at outputs of 16-64 MB (65536 x 1024 -> 2048 / 8192, 65536 x 256 ->
# 16384), parity at 8 MB, 1.7-2.1x slower at 2-4 MB, where the partials stay in
# cache and gathering A's rows at random costs more than it saves.  SparseSign
# (nnz = 8) gained nothing at 64 MB: each row of A is gathered nnz times.
_BUCKET_RANGES_MIN_OUT_BYTES = 1 << 24
_BUCKET_RANGES_ROWS = 1 << 20  # rows of A per block: bounds the hashes' memory
# Column-major A is sketched column by column (``_sketch_by_columns``) when it has
# at least this many rows (each column is one sparse mat-vec call, ~10 us of overhead)
# and rows of at least this many bytes per nonzero of a column of S: every column
# re-reads the block's hashes, and below that it costs more than the copy it saves
# (CountSketch: 2^20 x 8 fp64 and 2^20 x 16 fp32 took 1.3-1.8x the copying route's
# time, 2^20 x 16 fp64 the same; SparseSign nnz = 8: 2^20 x 64 fp64 took 1.35x,
# 65536 x 1024 fp64 0.53-0.71x).  Blocks hold _COLUMN_ROUTE_ROWS / nnz rows.
_COLUMN_ROUTE_MIN_ROWS = 1 << 13
_COLUMN_ROUTE_MIN_ROW_BYTES = 128
_COLUMN_ROUTE_ROWS = 1 << 18


@_twin("hash_sketch_dense", "numpy")
def _hash_sketch_dense_cpu(As, outs, col0, m, nnz, scale, seed, stream, deterministic=False):
    """``S @ A`` for each dense A of ``As`` (all with S's n rows) into its zeroed ``out``.

    Operands on the row-block route share each block of S: its hashes, most
    of a narrow sketch's cost on a CPU (Philox in NumPy: 0.12 s for 2^20
    columns of SparseSign(nnz=8)), are computed once for all of them, so a
    least-squares sketch ``(S A, S b)`` hashes S once, not twice.  With one
    operand this is ``S @ A`` as before; with several, the row blocks' thread
    split follows their total size, so a result may differ from its own
    ``S @ A`` in round-off.  Column-major operands and large CountSketch
    results take their own routes, one operand at a time.
    Deterministic on every route: fixed blocks, fixed thread partitions, summed in order.
    """
    results = [None] * len(As)
    shared = []
    for i, (A, out) in enumerate(zip(As, outs)):
        A2, o2 = A.reshape(A.shape[0], -1), out.reshape(m, -1)
        n, threads = A2.shape[0], _cpu_threads(A2.size)

        def hashes(a, b, dtype=o2.dtype):
            return _hash_matrix_cpu(col0 + a, b - a, m, nnz, scale, seed, stream, dtype)

        column_major = A2.flags.f_contiguous and not A2.flags.c_contiguous
        if column_major and n >= _COLUMN_ROUTE_MIN_ROWS and A2.shape[1] * A2.itemsize >= _COLUMN_ROUTE_MIN_ROW_BYTES * nnz:
            results[i] = _sketch_by_columns(hashes, A2, o2, max(1, _COLUMN_ROUTE_ROWS // nnz), threads)
        elif column_major and n < _COLUMN_ROUTE_MIN_ROWS:
            results[i] = _sketch_by_column_tiles(hashes(0, n), A2, o2, threads)
        elif nnz == 1 and o2.nbytes >= _BUCKET_RANGES_MIN_OUT_BYTES:
            results[i] = _sketch_bucket_ranges(hashes, A2, o2, _BUCKET_RANGES_ROWS, threads)
        else:
            shared.append((i, A2, o2))
    if shared:
        n = shared[0][1].shape[0]
        threads = _cpu_threads(sum(A2.size for _, A2, _ in shared))

        def block(a, b):
            values = _hash_values_np(col0 + a, b - a, m, nnz, seed, stream)
            S = {}  # one CSC block per dtype among the operands
            for _, _, o2 in shared:
                if o2.dtype not in S:
                    S[o2.dtype] = _hash_matrix_of(*values, m, scale, o2.dtype)
            return tuple(np.asarray(S[o2.dtype] @ A2[a:b]) for _, A2, o2 in shared)

        sums = _parallel_sums(block, _dense_row_blocks(n, threads), threads, tuple(o2 for _, _, o2 in shared))
        for (i, _, _), y in zip(shared, sums):
            results[i] = y
    return tuple(y.reshape(out.shape) for y, out in zip(results, outs))


def _even_row_blocks(n, rows):
    """At most ``rows`` rows per block, blocks of near-equal size (no short tail block)."""
    count = -(-n // rows)
    return [(i * n // count, (i + 1) * n // count) for i in range(count)]


def _sketch_by_columns(hashes, A2, out, rows, threads):
    """``S @ A2`` for a column-major ``A2``, one column at a time: ``(S @ A2)[:, c] = S @ A2[:, c]``.

    SciPy's sparse-times-dense product wants a row-major operand and copies a
    column-major one first, at 1-2 GB/s (NumPy's transposing copy is not cache
    blocked), which made F-order A and right sketches ``A @ S.T`` 2-8x slower
    than C-order A (``bench/results/operators-cpu-quick.md`` at a8d842b).  A column of an F-order A is contiguous, so each thread
    takes whole columns (no partial sums) and runs SciPy's sparse matrix-vector
    product on them, one block of ``rows`` rows at a time so the block's hashes
    stay in cache.  The result is built transposed (d x m, row-major) and
    returned as its column-major transpose.  Measured (2-core box, CountSketch,
    alternating runs): 65536 x 1024 -> 8192 fp64 0.14-0.26x the time of the
    copying route, 2^20 x 64 -> 1024 fp64 0.34-0.35x, 2^20 x 64 -> 64 fp32
    0.44-0.59x; at 128-byte rows (2^20 x 16 -> 256 fp64) about even.
    """
    n, d = A2.shape
    outT = np.zeros((d, out.shape[0]), dtype=out.dtype)
    cols = [range(t, d, threads) for t in range(min(threads, d))]
    with all_blas_serial, ThreadPoolExecutor(len(cols)) as ex:
        for a, b in _even_row_blocks(n, rows):
            S = hashes(a, b)

            def run(part):
                for c in part:
                    outT[c] += S @ A2[a:b, c]

            list(ex.map(run, cols))
    return outT.T


#: Bytes of a column tile of a short column-major A (``_sketch_by_column_tiles``).
_COLUMN_TILE_BYTES = 1 << 20


def _sketch_by_column_tiles(S, A2, out, threads):
    """``S @ A2`` for a column-major ``A2`` of few rows, a tile of whole columns at a time.

    The right sketch ``A @ S.T`` of a tall row-major A is ``S @ A.T``, and ``A.T`` is
    this shape: few rows (A's columns), many columns.  SciPy's product copies a
    column-major operand to row-major first, and NumPy's transposing copy of a
    large block runs at 1-2 GB/s; a tile of about ``_COLUMN_TILE_BYTES`` copies in
    cache.  Threads own tiles (no partial sums: each writes its own columns of out).
    Measured (2-core box, A/B in one run against the block route, alternating):
    ``A @ S.T`` for 200000 x 2000 -> 64 fp64 CountSketch 0.08-0.09x the time
    (10 GB/s of A), 2^20 x 64 -> 32 SparseSign(nnz=8) 0.34-0.39x.
    """
    n, d = A2.shape
    width = max(1, _COLUMN_TILE_BYTES // max(1, n * A2.itemsize))
    tiles = _row_blocks(d, width)
    if not tiles:
        return out
    parts = [tiles[t::threads] for t in range(min(threads, len(tiles)))]

    def run(part):
        for c0, c1 in part:
            out[:, c0:c1] = S @ np.ascontiguousarray(A2[:, c0:c1])

    with all_blas_serial, ThreadPoolExecutor(len(parts)) as ex:
        list(ex.map(run, parts))
    return out


def _sketch_bucket_ranges(hashes, A2, out, rows, threads):
    """``S @ A2`` into ``out`` with each thread owning a range of buckets (rows of ``out``).

    For a large sketch, per-thread partial sums cost a zeroed ``out``-sized
    buffer per thread, a final sum, and read-modify-writes of ``out`` rows at
    random addresses that miss the cache.  Here ``S`` goes to CSR order and
    thread t computes rows ``[t m / T, (t+1) m / T)`` of the result: it writes
    them once, in order, and reads only the rows of A that hash into its range.
    A is taken in blocks of ``rows`` rows to bound the hashes' memory; blocks
    after the first are added in.  A2 may be a CSR matrix (``_hash_sketch_csr_cpu``'s
    route for long rows): each thread's rows are then a sparse product, written
    into out densely.
    """
    n, m = A2.shape[0], out.shape[0]
    ranges = [(t * m // threads, (t + 1) * m // threads) for t in range(threads)]
    ranges = [(r0, r1) for r0, r1 in ranges if r1 > r0]
    with all_blas_serial, ThreadPoolExecutor(len(ranges)) as ex:
        for i, (a, b) in enumerate(_even_row_blocks(n, rows)):
            S = hashes(a, b).tocsr()
            Ab = csr_row_view(A2, a, b) if sp.issparse(A2) else A2[a:b]

            def run(r):
                y = S[r[0] : r[1]] @ Ab
                dst = out[r[0] : r[1]]
                if sp.issparse(y) and i == 0 and y.dtype == dst.dtype:
                    y.toarray(out=dst)  # (zeroes dst first)
                    return
                y = y.toarray() if sp.issparse(y) else y
                if i == 0:
                    dst[...] = y
                else:
                    dst += y

            list(ex.map(run, ranges))
    return out


# Rows of at least this many bytes take the bucket-sorted path: one block per bucket
# then reads whole rows coalesced, and global atomics (the limit on wide A) vanish.
# Measured on an H100 with bench/tune_scatter.py (2026-11-22): sorted beats atomics by
# 1.2-2.3x at 4 KiB rows (fp32 d=1024, fp64 d=512/1024), ties or loses below.  A
# shared-memory privatised scatter was slower than global atomics on every narrow
# shape tried (up to 2x at 2 blocks/SM, 1.1-1.2x at 16), so it is not used.
_SORTED_MIN_ROW_BYTES = 4096


@_twin("hash_sketch_dense", "cupy")
def _hash_sketch_dense_each_gpu(As, outs, col0, m, nnz, scale, seed, stream, deterministic=False):
    # The kernels hash in registers as they read A: nothing to share between launches.
    return tuple(_hash_sketch_dense_gpu(A, out, col0, m, nnz, scale, seed, stream, deterministic)
                 for A, out in zip(As, outs))


def _hash_sketch_dense_gpu(A, out, col0, m, nnz, scale, seed, stream, deterministic=False):
    import cupy

    n = A.shape[0]
    d = 1 if A.ndim == 1 else A.shape[1]
    item = A.itemsize
    s0 = A.strides[0] // item
    s1 = A.strides[1] // item if A.ndim == 2 else 1
    k0, k1 = _random.split_seed(seed)
    T = _ctype(A.dtype)
    args = (A, np.int64(n), np.int32(d), np.int64(s0), np.int64(s1), np.int64(col0), np.int32(m),
            np.int32(nnz), A.dtype.type(scale), np.uint32(k0), np.uint32(k1), np.uint32(stream), out)
    colmajor = d == 1 or (s0 == 1 and s1 != 1)
    if deterministic or (not colmajor and d * item >= _SORTED_MIN_ROW_BYTES):
        # Bucket-sorted, atomic-free: one writer per output element, in a fixed order
        # (a stable radix sort of the buckets), so the result is bit-reproducible.
        check_memory(n * nnz * 26, f"bucket sort of {n * nnz} sketch entries", cupy)
        buckets, signs = _hash_values_gpu(col0, n, m, nnz, seed, stream)
        keys = buckets.ravel()
        order = cupy.argsort(keys)
        start = cupy.searchsorted(keys[order], cupy.arange(m + 1, dtype=keys.dtype))
        sgn = signs.ravel()[order]
        tx = min(256, 32 * -(-d // 32))
        _kernel("hash_sketch.cu", f"hash_sketch_sorted<{T}>")(
            (m, -(-d // tx)), (tx,),
            (A, np.int32(d), np.int64(s0), np.int64(s1), np.int32(nnz), A.dtype.type(scale), order, sgn,
             start.astype(cupy.int64), out),
        )
    elif colmajor:
        _kernel("hash_sketch.cu", f"hash_sketch_colmajor<{T}>")((_grid(n, 256, cupy),), (256,), args)
    else:
        # One warp per tile of 32 rows, 8 warps per block.
        _kernel("hash_sketch.cu", f"hash_sketch_rowmajor<{T}>")((_grid(-(-n // 32), 8, cupy),), (32, 8), args)
    return out


@_twin("csc_times_dense", "numpy")
def _csc_times_dense_cpu(S, X):
    """``S @ X`` for a SciPy CSC S (m × n) and a dense 2-D X, as a dense array.

    A column-major X (the right sketch ``M Sᵀ = (S Mᵀ)ᵀ`` of a row-major M) takes
    the hashing sketches' column routes, which SciPy's product would copy to
    row-major first at 1-2 GB/s: ``rank``'s right sketch of a 3000 × 20000 A
    spent 2.7 of its 11.3 s in that copy.
    """
    if not (X.flags.f_contiguous and not X.flags.c_contiguous):
        return np.asarray(S @ X)
    n = X.shape[0]
    out = np.zeros((S.shape[0], X.shape[1]), dtype=np.result_type(S.dtype, X.dtype))
    threads = _cpu_threads(X.size)
    if n < _COLUMN_ROUTE_MIN_ROWS:
        return _sketch_by_column_tiles(S, X, out, threads)
    nnz = max(1, -(-S.nnz // max(1, n)))
    return _sketch_by_columns(lambda a, b: S[:, a:b], X, out, max(1, _COLUMN_ROUTE_ROWS // nnz), threads)


@_twin("csc_times_dense", "cupy")
def _csc_times_dense_gpu(S, X):
    return S @ X  # cuSPARSE SpMM takes either layout


@_twin("csc_times_sparse", "numpy")
def _csc_times_sparse_cpu(S, M):
    """``S @ M`` for a SciPy CSC S (m × n) and a CSR or CSC M, in M's format.

    SciPy's product converts M to S's format first: for a CSR M a full
    ``tocsc`` copy, 0.85 s of ``rank``'s 1.2-1.35 s sketch of a 100000 × 2000 CSR
    matrix with 35.6 M entries.  Here S goes to M's format instead (it has a few
    entries per column), and the threads split the product (SciPy's sparse
    products release the GIL): S's rows for a CSR M, M's columns for a CSC M,
    stacked in order.  That sketch took 0.32-0.34 s on 2 cores.
    """
    fmt = M.format if M.format in ("csr", "csc") else "csr"
    M = M.asformat(fmt)
    S = S.asformat(fmt)
    side = S.shape[0] if fmt == "csr" else M.shape[1]
    threads = min(side, _cpu_threads(M.nnz * max(1, -(-S.nnz // max(1, S.shape[1])))))
    if threads <= 1:
        return S @ M
    cuts = [(t * side // threads, (t + 1) * side // threads) for t in range(threads)]
    part = (lambda c: S[c[0] : c[1]] @ M) if fmt == "csr" else (lambda c: S @ M[:, c[0] : c[1]])
    with all_blas_serial, ThreadPoolExecutor(threads) as ex:
        parts = list(ex.map(part, cuts))
    return (sp.vstack if fmt == "csr" else sp.hstack)(parts, format=fmt)


@_twin("csc_times_sparse", "cupy")
def _csc_times_sparse_gpu(S, M):
    return S @ M


#: ``sparse_product`` splits a CSR product among threads from this many (entry, column) pairs:
#: below, thread start, the blocks' index offsets and their outputs' copies cost more than the
#: second core saves (2 cores, A @ v and A.T @ r together: 3.2 M entries 1.1-1.3x the time of
#: SciPy's, 8 M 0.9x, 10-16 M 0.67-0.83x, 32 M 0.6x).
_SPARSE_PRODUCT_MIN_WORK = 1 << 23


def csr_row_view(A, a, b, transpose=False):
    """Rows ``a:b`` of a SciPy CSR A as a CSR matrix on A's own arrays (or its transpose, CSC).

    SciPy's row slicing copies them, and so do its constructors (and ``.T``) for a view of
    less than half its array (``prune``): the arrays are set on an empty matrix of the
    block's shape instead, as the format defines them.
    """
    lo, hi = int(A.indptr[a]), int(A.indptr[b])
    V = sp.csc_matrix((A.shape[1], b - a), dtype=A.dtype) if transpose else sp.csr_matrix(
        (b - a, A.shape[1]), dtype=A.dtype)
    V.data, V.indices, V.indptr = A.data[lo:hi], A.indices[lo:hi], A.indptr[a : b + 1] - lo
    return V


def _csr_row_views(A, parts, transpose=False):
    """``parts`` row blocks of a SciPy CSR A of near-equal stored entries (``csr_row_view``):
    ``[(a, b, A[a:b]), ...]``, or ``A[a:b].T``."""
    cuts = [int(c) for c in np.searchsorted(A.indptr, np.arange(1, parts) * (A.nnz / parts))]
    edges = sorted({0, A.shape[0], *cuts})
    return [(a, b, csr_row_view(A, a, b, transpose)) for a, b in zip(edges[:-1], edges[1:])]


@_twin("sparse_product", "numpy")
def _sparse_product_cpu(A, X, transpose=False):
    """``A @ X``, or ``A.T @ X`` with ``transpose``, for a SciPy sparse A and a dense X.

    SciPy's sparse-times-dense products run on one core.  For a CSR A (as LSMR
    applies it, twice an iteration) the threads take row blocks of A of equal
    stored entries: ``A @ X`` writes each block's rows, ``A.T @ X`` adds the
    blocks' ``A_blockᵀ X_block``, in block order.
    """
    work = A.nnz * (X.size // max(1, X.shape[0]))
    threads = _cpu_threads(work) if work >= _SPARSE_PRODUCT_MIN_WORK else 1
    if A.format != "csr" or threads <= 1:
        return np.asarray((A.T if transpose else A) @ X)
    views = _csr_row_views(A, threads, transpose)
    with ThreadPoolExecutor(len(views)) as ex:
        if transpose:
            parts = list(ex.map(lambda v: v[2] @ X[v[0] : v[1]], views))
            out = np.asarray(parts[0])
            for y in parts[1:]:
                out += y
            return out
        out = np.empty((A.shape[0],) + X.shape[1:], dtype=np.result_type(A.dtype, X.dtype))

        def rows(v):
            out[v[0] : v[1]] = v[2] @ X
        list(ex.map(rows, views))
    return out


@_twin("sparse_product", "cupy")
def _sparse_product_gpu(A, X, transpose=False):
    return (A.T if transpose else A) @ X


# ---------------------------------------------------------------------------
# Multi-level CountSketch (the oblivious Tukey sketch): SparseSign layout with
# one nonzero per level, kept while the column's uniform is below the level's
# threshold (see kernels/hash_sketch.cu, hash_sketch_levels)
# ---------------------------------------------------------------------------


def level_values(xp, col0, n, r, thresh, seed):
    """``(buckets, signs)`` of columns ``col0 .. col0+n`` of a multi-level CountSketch, each ``(n, L)``.

    Level t of column j is row ``t·r + bucket`` with a sign, or sign 0 when j
    does not survive level t (its uniform is not below ``thresh[t]``).
    """
    levels = len(thresh)
    hb, _ = call("hash_values", xp, col0, n, 1 << 30, 1, seed, _random.STREAM_LEVELS_UNIFORM)
    u = (hb[:, 0] + 0.5) / float(1 << 30)
    buckets, signs = call("hash_values", xp, col0, n, levels * r, levels, seed, _random.STREAM_LEVELS)
    alive = u[:, None] < xp.asarray(np.asarray(thresh, dtype=np.float64))[None, :]
    return buckets, xp.where(alive, signs, 0).astype(xp.int8)


@_twin("hash_sketch_levels", "numpy")
def _hash_sketch_levels_cpu(As, outs, col0, r, thresh, seed):
    # Only the surviving (column, level) entries are hashed (about n β/(β−1) of
    # the n·levels), each by its own Philox block: the same words as level_values.
    # Several operands (Tukey's (S A, S b)) share each block's hashes, as in
    # ``_hash_sketch_dense_cpu``.
    A2s = [A.reshape(A.shape[0], -1) for A in As]
    o2s = tuple(out.reshape(out.shape[0], -1) for out in outs)
    levels = len(thresh)
    m = levels * r
    ascending = np.asarray(thresh, dtype=np.float64)[::-1]

    def block(a, b):
        hb, _ = _hash_values_np(col0 + a, b - a, 1 << 30, 1, seed, _random.STREAM_LEVELS_UNIFORM)
        u = (hb[:, 0] + 0.5) / float(1 << 30)
        depth = levels - np.searchsorted(ascending, u, side="right")  # #{t: u < thresh[t]}, nested levels
        indptr = np.concatenate([[0], np.cumsum(depth)])
        j = np.repeat(np.arange(b - a), depth)
        t = np.arange(j.size) - indptr[j]
        w = _random.hash_words_at((col0 + a + j) * levels + t, seed, _random.STREAM_LEVELS)
        buckets, signs = _bucket_sign(w, t, m, levels)
        # CSC straight from the column-ordered entries (no sort); its product reads A in order.
        S = {o2.dtype: sp.csc_matrix((signs.astype(o2.dtype), buckets, indptr), shape=(m, b - a)) for o2 in o2s}
        return tuple(np.asarray(S[o2.dtype] @ A2[a:b]) for A2, o2 in zip(A2s, o2s))

    n = A2s[0].shape[0]
    threads = _cpu_threads(n * sum(A2.shape[1] for A2 in A2s))
    sums = _parallel_sums(block, _dense_row_blocks(n, threads), threads, o2s)
    return tuple(y.reshape(out.shape) for y, out in zip(sums, outs))


@_twin("hash_sketch_levels", "cupy")
def _hash_sketch_levels_each_gpu(As, outs, col0, r, thresh, seed):
    return tuple(_hash_sketch_levels_gpu(A, out, col0, r, thresh, seed) for A, out in zip(As, outs))


def _hash_sketch_levels_gpu(A, out, col0, r, thresh, seed):
    import cupy

    n = A.shape[0]
    d = 1 if A.ndim == 1 else A.shape[1]
    s0 = A.strides[0] // A.itemsize
    s1 = A.strides[1] // A.itemsize if A.ndim == 2 else 1
    k0, k1 = _random.split_seed(seed)
    _kernel("hash_sketch.cu", f"hash_sketch_levels<{_ctype(A.dtype)}>")(
        (_grid(-(-n // 32), 8, cupy),), (32, 8),
        (A, np.int64(n), np.int32(d), np.int64(s0), np.int64(s1), np.int64(col0), np.int32(r),
         np.int32(len(thresh)), cupy.asarray(np.asarray(thresh, dtype=np.float64)), np.uint32(k0), np.uint32(k1),
         np.uint32(_random.STREAM_LEVELS), np.uint32(k0), np.uint32(k1), np.uint32(_random.STREAM_LEVELS_UNIFORM),
         out),
    )
    return out


# The CPU CSR route accumulates with np.bincount (one float64 m·d buffer per thread,
# zeroed, then added into out: ~3 passes over m·d) while m·d is at most this and at
# most _SCATTER_RATIO times the scattered entries; beyond, it scatters into out with
# np.add.at (one thread; a cache miss per entry when m·d is large).  Measured on 2
# cores at m·d = 12 × entries (65536 × 1024 → 8192 at 1 %): the bincount and its
# addition take 2.2x the time of add.at.
_BINCOUNT_MAX_OUT = 1 << 24
_SCATTER_RATIO = 4
_CSR_BLOCK_ENTRIES = 1 << 22  # (stored entries) × (nonzeros per column of S) per block of rows
_CSR_BLOCK_ROWS = 1 << 17  # and rows per block: every row is hashed, stored entries or not
# A CSR A whose rows hold at least _CSR_SPGEMM_MIN_ROW_ENTRIES stored entries on average
# (half as many where m·d >= _CSR_SPGEMM_MIN_OUT) is sketched by bucket ranges
# (``_sketch_bucket_ranges``: S's rows split among threads, each a SciPy sparse product).
# That product gathers a row of A per entry of S, then costs ~3 ns per (entry of A, nonzero
# of S), against ~8-13 ns for the flat keys above plus, per block, a zeroed m·d bincount.
# Measured on the 2-core box, SparseSign (nnz = 8) / CountSketch, best of 3, time against
# the flat keys: 100000 x 2000 -> 8010 at 356 entries a row 0.18-0.19x / 0.20-0.40x; 50000
# x 4000 -> 16010 at 80 a row 0.53x / 0.53x; 2^19 x 2000 -> 1024 and 2^20 x 400 -> 1024 at
# 40 a row 0.64-0.94x; 10^6 x 2000 -> 8010 at 16 a row 0.69-0.87x / 0.68-0.78x.  Below 32 entries a row
# and m·d below 2^22 it can lose: 2^20 x 2000 -> 1024 at 20 a row 1.29x / 0.99x (while
# 2^18 x 2000 -> 1024 gained, 0.69x), and at 4 a row 1.3-1.4x, at 0.64 a row 3.2x.
_CSR_SPGEMM_MIN_ROW_ENTRIES = 32
_CSR_SPGEMM_MIN_OUT = 1 << 22


def _entry_rows(starts, total):
    """Row of each of ``total`` stored entries, given the entry offsets ``starts`` of rows 1, 2, …
    (an empty row repeats its successor's offset): a cumulative count of row starts.

    It equals ``numpy.repeat(arange(rows), counts)``: one index array that gathers both the
    buckets and the signs, where two repeats took 15.7 ms at 2^20 rows with 0.64 entries per
    row (gathering: 4.9 ms).  For long rows repeat wins: 0.95 ms against 4.9 ms at 2^16 rows
    with 10 entries per row.
    """
    return np.cumsum(np.bincount(starts, minlength=total + 1)[:total])


def _csr_row_blocks(indptr, per_block):
    """Row ranges of a CSR matrix holding about ``per_block`` stored entries each."""
    n = len(indptr) - 1
    cuts = np.searchsorted(indptr, np.arange(per_block, int(indptr[-1]), per_block), side="left")
    edges = np.unique(np.concatenate([[0], cuts, [n]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


@_twin("hash_sketch_csr", "numpy")
def _hash_sketch_csr_cpu(A, out, col0, m, nnz, scale, seed, stream, deterministic=False):
    # Deterministic either way: fixed blocks, fixed per-thread partitions, summed in order.
    n, d = A.shape
    dtype = out.dtype
    # Entry (i, j, v) of A lands in out[bucket_t(i), j] with sign_t(i)·v for each nonzero t
    # of column i of S: flat keys bucket·d + j from one pass over A's stored entries,
    # then a bincount (1.05-1.1x SciPy's SpGEMM with S prebuilt, hashing included, at
    # 1 % density on 2^20 × 64 → 1024; bench/results/NOTES.md) or, for a large m·d, a
    # scatter straight into out.  Long rows go by bucket ranges instead (_CSR_SPGEMM_MIN_ROW_ENTRIES).
    min_entries = _CSR_SPGEMM_MIN_ROW_ENTRIES // (2 if m * d >= _CSR_SPGEMM_MIN_OUT else 1)
    if A.nnz >= min_entries * n:
        def hashes(a, b):
            return _hash_matrix_cpu(col0 + a, b - a, m, nnz, scale, seed, stream, dtype)

        return _sketch_bucket_ranges(hashes, A, out, _BUCKET_RANGES_ROWS, _cpu_threads(A.nnz * nnz + n))
    indptr = np.asarray(A.indptr, dtype=np.int64)

    def keys_weights(a, b):
        lo, hi = int(indptr[a]), int(indptr[b])
        counts = np.diff(indptr[a : b + 1])
        if 4 * np.count_nonzero(counts) < b - a:  # mostly empty rows: hash only the others (they add no keys)
            rows = np.flatnonzero(counts)
            buckets, signs = _hash_values_at(col0 + a + rows, m, nnz, seed, stream)
            counts = counts[rows]
        else:
            buckets, signs = _hash_values_np(col0 + a, b - a, m, nnz, seed, stream)
        if hi - lo >= 4 * counts.size:  # long rows: numpy.repeat copies runs
            per_entry = lambda v: np.repeat(v, counts)  # noqa: E731
        else:  # short rows: one index array for both gathers (see _entry_rows)
            row = _entry_rows(np.cumsum(counts[:-1]), hi - lo)
            per_entry = lambda v: v[row]  # noqa: E731
        cols = A.indices[lo:hi]
        vals = A.data[lo:hi].astype(np.float64) * scale
        keys = np.concatenate([per_entry(buckets[:, t] * d) + cols for t in range(nnz)])
        weights = np.concatenate([per_entry(signs[:, t]) * vals for t in range(nnz)])
        return keys, weights

    blocks = [(a0 + a, min(b0, a0 + a + _CSR_BLOCK_ROWS)) for a0, b0 in
              _csr_row_blocks(indptr, max(1, _CSR_BLOCK_ENTRIES // nnz)) for a in range(0, b0 - a0, _CSR_BLOCK_ROWS)]
    if m * d > min(_BINCOUNT_MAX_OUT, _SCATTER_RATIO * A.nnz * nnz):
        assert out.flags.c_contiguous, "the scatter adds into out through a flat view"
        flat = out.reshape(-1)
        for a, b in blocks:  # in order: deterministic
            keys, weights = keys_weights(a, b)
            np.add.at(flat, keys, weights.astype(dtype, copy=False))  # one dtype: add.at's fast loop
        return out

    def block(a, b):
        return np.bincount(*keys_weights(a, b), minlength=m * d).reshape(m, d).astype(dtype, copy=False)

    return _parallel_sum(block, blocks, _cpu_threads(A.nnz * nnz + n), out)


@_twin("hash_sketch_csr", "cupy")
def _hash_sketch_csr_gpu(A, out, col0, m, nnz, scale, seed, stream, deterministic=False):
    import cupy

    n, d = A.shape
    if deterministic:  # densified ~64 MiB row chunks through the atomic-free sorted path, summed in order
        rows = max(1, (64 << 20) // max(1, d * A.dtype.itemsize))
        for a in range(0, n, rows):
            b = min(n, a + rows)
            _hash_sketch_dense_gpu(A[a:b].toarray(), out, col0 + a, m, nnz, scale, seed, stream, True)
        return out
    k0, k1 = _random.split_seed(seed)
    T = _ctype(A.dtype)
    idx = A.indices
    I = "int" if idx.dtype == cupy.int32 else "long long"
    indptr = A.indptr.astype(idx.dtype, copy=False)
    _kernel("hash_sketch.cu", f"hash_sketch_csr<{T},{I}>")(
        (_grid(n * 32, 256, cupy),), (256,),
        (indptr, idx, A.data, np.int64(n), np.int32(d), np.int64(col0), np.int32(m), np.int32(nnz),
         A.dtype.type(scale), np.uint32(k0), np.uint32(k1), np.uint32(stream), out),
    )
    return out


@_twin("hash_adjoint", "numpy")
def _hash_adjoint_cpu(Y, n, col0, nnz, scale, seed, stream):
    """``Sᵀ Y``; past ``_ADJOINT_WHOLE_HASHES`` hash values, S's columns (the result's rows)
    ``_CPU_BLOCK`` at a time, blocks on threads: the hashes and CSC of one block at a time,
    not of all n columns (FastEmbedding's last stage is an adjoint with n its m rows:
    m = 10^8 had asked for 38.7 GiB of hashes beside a 7.5 GiB result).  Bit-identical to
    the one product; 2-core CPU, A/B in one run, best of 3 in two rounds: CountSketch 2^22
    columns, Y 1000 x 16, 130-133 → 97-108 ms; SparseSign 2^22 x 16 582-590 → 337-338 ms,
    2^20 x 1 (m = 4000) 108-109 → 56 ms.  Peak over the result (tracemalloc): SparseSign
    2^20 x 4 5.6 → 1.7, CountSketch 2^21 x 4 1.5 → 1.1."""
    m = Y.shape[0]
    if n * nnz <= _ADJOINT_WHOLE_HASHES:  # one product: blocks would add a copy of the result
        return np.asarray(_hash_matrix_cpu(col0, n, m, nnz, scale, seed, stream, Y.dtype).T @ Y)
    out = np.empty((n,) + Y.shape[1:], dtype=Y.dtype)
    blocks = _row_blocks(n, _CPU_BLOCK)
    threads = min(len(blocks) // 2, _cpu_threads(n * nnz * max(1, Y.size // max(1, m))))

    def run(part):
        for a, b in part:
            out[a:b] = _hash_matrix_cpu(col0 + a, b - a, m, nnz, scale, seed, stream, Y.dtype).T @ Y

    if threads <= 1:
        run(blocks)
    else:
        with all_blas_serial, ThreadPoolExecutor(threads) as ex:
            list(ex.map(run, [blocks[t::threads] for t in range(threads)]))
    return out


@_twin("hash_adjoint", "cupy")
def _hash_adjoint_gpu(Y, n, col0, nnz, scale, seed, stream):
    import cupy

    m = Y.shape[0]
    Y2 = cupy.ascontiguousarray(Y.reshape(m, -1))
    d = Y2.shape[1]
    out = cupy.empty((n, d), dtype=Y.dtype)
    k0, k1 = _random.split_seed(seed)
    _kernel("hash_sketch.cu", f"hash_adjoint<{_ctype(Y.dtype)}>")(
        (_grid(n * d, 256, cupy),), (256,),
        (Y2, np.int32(m), np.int32(d), np.int64(n), np.int64(col0), np.int32(nnz),
         Y.dtype.type(scale), np.uint32(k0), np.uint32(k1), np.uint32(stream), out),
    )
    return out.reshape((n,) + Y.shape[1:])


# ---------------------------------------------------------------------------
# Kronecker products: one-pass hashing sketch of b, and rows of A_1 (x) ... (x) A_q
# ---------------------------------------------------------------------------

#: Most factor nonzeros the CUDA kernel keeps per row (sum over factors).
KRON_MAX_HASHES = 64


def _kron_hashes_cpu(j, dims, ms, nnzs, streams, seeds):
    """Buckets and signs, shape ``(len(j), prod nnz_t)``, of global columns ``j``.

    Columns of S_1 (x) ... (x) S_q in numpy.kron order; nonzero combination
    ``(k_1, ..., k_q)`` is column ``k`` in C order, as in the CUDA kernel.
    """
    multi = np.unravel_index(j, dims)
    bucket = np.zeros((j.size, 1), dtype=np.int64)
    sign = np.ones((j.size, 1), dtype=np.int8)
    for jt, mt, zt, st, seed in zip(multi, ms, nnzs, streams, seeds):
        # Hash only the range of factor indices that occurs in this block.
        lo, hi = int(jt.min()), int(jt.max()) + 1
        b, s = _hash_values_np(lo, hi - lo, mt, zt, seed, st)
        bucket = (bucket[:, :, None] * mt + b[jt - lo][:, None, :]).reshape(j.size, -1)
        sign = (sign[:, :, None] * s[jt - lo][:, None, :]).reshape(j.size, -1)
    return bucket, sign


def kron_range_apply(factors, B2, a, b, xp):
    """``(F_1 ⊗ ... ⊗ F_q)[:, a:b] @ B2`` (numpy.kron order) for a dense 2-D ``B2`` of ``b - a`` rows.

    ``factors``: anything with ``.shape``, ``@`` and column slices ``[:, j:k]``
    (sketch operators, SciPy sparse matrices).  Never forms the product:
    ``[a, b)`` splits into runs of whole rows of the leading factor, which
    take F_1 first (no copy: those rows of B2 are contiguous, and F_1 shrinks
    them before the transposing copy that brings the next mode forward),
    and partial rows at the ends, handled recursively on the other factors.
    """
    F = factors[0]
    if len(factors) == 1:
        return F[:, a:b] @ B2
    rest = factors[1:]
    Nr = int(np.prod([G.shape[1] for G in rest]))
    Mr = int(np.prod([G.shape[0] for G in rest]))
    d = B2.shape[1]
    check_memory(F.shape[0] * Mr * d * B2.itemsize, f"sketch output ({F.shape[0] * Mr}, {d})", xp)
    out = xp.zeros((F.shape[0], Mr, d), dtype=B2.dtype)
    pos = a
    while pos < b:
        j1, off = divmod(pos, Nr)
        if off == 0 and pos + Nr <= b:
            cnt = (b - pos) // Nr
            chunk = B2[pos - a : pos - a + cnt * Nr].reshape(cnt, Nr * d)
            Z = to_dense(F[:, j1 : j1 + cnt] @ chunk).reshape(F.shape[0], Nr, d)
            X = xp.moveaxis(Z, 1, 0).reshape(Nr, F.shape[0] * d)
            Y = kron_range_apply(rest, X, 0, Nr, xp).reshape(Mr, F.shape[0], d)
            out += xp.moveaxis(Y, 1, 0)
            pos += cnt * Nr
        else:
            end = min(b, (j1 + 1) * Nr)
            Y = kron_range_apply(rest, B2[pos - a : end - a], off, off + end - pos, xp)
            col = to_dense(F[:, j1 : j1 + 1] @ xp.ones((1, 1), dtype=B2.dtype)).reshape(-1)
            out += col[:, None, None] * Y.reshape(1, Mr, d)
            pos = end
    return out.reshape(F.shape[0] * Mr, d)


@_twin("kron_hash_sketch", "numpy")
def _kron_hash_sketch_cpu(B, out, col0, dims, ms, nnzs, streams, seeds, scale):
    M = int(np.prod(ms))
    z = int(np.prod(nnzs))
    if not sp.issparse(B):
        # Dense B: factor by factor (kron_range_apply) with each factor as a SciPy CSR
        # matrix from the same hashes.  On a CPU this beats one pass that hashes every
        # row into prod(nnz) buckets 17-40x (2.6e5 - 9e6 rows): the first factor shrinks
        # B before any other work.  The CUDA kernel keeps the single pass (bandwidth-bound).
        mats = [_hash_matrix_cpu(0, n_t, m_t, z_t, 1.0, seed, st, out.dtype).tocsr()
                for n_t, m_t, z_t, st, seed in zip(dims, ms, nnzs, streams, seeds)]
        B2 = B.reshape(B.shape[0], -1)
        Y = kron_range_apply(mats, B2, col0, col0 + B2.shape[0], np)
        out.reshape(M, -1)[...] += Y * out.dtype.type(scale)
        return out
    # Sparse B: each stored row hashed into its prod(nnz) buckets, as the CUDA kernel does.
    B2 = B
    o2 = out.reshape(M, -1)
    dtype = o2.dtype

    def block(a, b):
        j = np.arange(col0 + a, col0 + b, dtype=np.int64)
        bucket, sign = _kron_hashes_cpu(j, dims, ms, nnzs, streams, seeds)
        data = sign.astype(dtype).ravel() * dtype.type(scale)
        S = sp.csc_matrix((data, bucket.ravel(), np.arange(0, (b - a + 1) * z, z)), shape=(M, b - a))
        return (S @ B2[a:b]).toarray()

    n = B2.shape[0]
    return _parallel_sum(block, _row_blocks(n, max(1, _CPU_BLOCK // z)), _cpu_threads(n * B2.shape[1] * z),
                         o2).reshape(out.shape)


@_twin("kron_hash_sketch", "cupy")
def _kron_hash_sketch_gpu(B, out, col0, dims, ms, nnzs, streams, seeds, scale):
    import cupy

    if not isinstance(B, cupy.ndarray):  # cupyx CSR: bounded dense row chunks
        rows = max(1, (64 << 20) // (B.shape[1] * B.dtype.itemsize))
        for a in range(0, B.shape[0], rows):
            chunk = B[a : a + rows].toarray()
            _kron_hash_sketch_gpu(chunk, out, col0 + a, dims, ms, nnzs, streams, seeds, scale)
        return out
    n = B.shape[0]
    d = 1 if B.ndim == 1 else B.shape[1]
    item = B.itemsize
    s0 = B.strides[0] // item
    s1 = B.strides[1] // item if B.ndim == 2 else 1
    keys = np.array([k for s in seeds for k in _random.split_seed(s)], dtype=np.uint32)
    bx = min(32, 1 << max(0, (d - 1).bit_length()))
    by = 256 // bx
    _kernel("kronecker.cu", f"kron_hash_sketch<{_ctype(B.dtype)}>")(
        (_grid(n, by, cupy),), (bx, by),
        (B, np.int64(n), np.int32(d), np.int64(s0), np.int64(s1), np.int64(col0), np.int32(len(dims)),
         cupy.asarray(np.asarray(dims, dtype=np.int64)), cupy.asarray(np.asarray(ms, dtype=np.int32)),
         cupy.asarray(np.asarray(nnzs, dtype=np.int32)), cupy.asarray(np.asarray(streams, dtype=np.uint32)),
         cupy.asarray(keys), B.dtype.type(scale), out),
    )
    return out


@_twin("kron_rows", "numpy")
def _kron_rows_cpu(factors, idx):
    multi = np.unravel_index(idx, tuple(F.shape[0] for F in factors))
    R = factors[0][multi[0]]
    for F, it in zip(factors[1:], multi[1:]):
        R = (R[:, :, None] * F[it][:, None, :]).reshape(idx.size, -1)
    return R


@_twin("kron_rows", "cupy")
def _kron_rows_gpu(factors, idx):
    import cupy

    dtype = factors[0].dtype
    D = int(np.prod([F.shape[1] for F in factors]))
    sizes = [F.size for F in factors]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    packed = cupy.concatenate([cupy.ascontiguousarray(F).ravel() for F in factors])
    out = cupy.empty((idx.size, D), dtype=dtype)
    if out.size:
        _kernel("kronecker.cu", f"kron_rows<{_ctype(dtype)}>")(
            (_grid(out.size, 256, cupy),), (256,),
            (packed, cupy.asarray(offsets), cupy.asarray(np.array([F.shape[0] for F in factors], dtype=np.int64)),
             cupy.asarray(np.array([F.shape[1] for F in factors], dtype=np.int32)), np.int32(len(factors)),
             cupy.ascontiguousarray(idx, dtype=cupy.int64), np.int64(idx.size), np.int64(D), out),
        )
    return out


# ---------------------------------------------------------------------------
# Walsh–Hadamard transform (unnormalised, along axis 0, in place on our own buffer)
# ---------------------------------------------------------------------------


def _fwht_cpu(X):
    # H_L = H_2 (x) ... (x) H_2; grouping 5 bits at a time turns 5 radix-2 passes
    # into one batched product with H_32 (BLAS), about 3x faster than radix-2 in NumPy.
    assert X.flags.c_contiguous, "fwht works in place on a C-order buffer"
    L = X.shape[0]
    k = L.bit_length() - 1
    rest = X.size // L
    stride, done = 1, 0
    while done < k:
        b = min(5, k - done)
        h = 1 << b
        V = X.reshape(L // (h * stride), h, stride * rest)
        V[...] = np.matmul(_hadamard(h, X.dtype), V)
        stride *= h
        done += b
    return X


@functools.lru_cache(maxsize=None)
def _hadamard(h, dtype):
    H = np.ones((1, 1), dtype=dtype)
    while H.shape[0] < h:
        H = np.block([[H, H], [H, -H]])
    H.setflags(write=False)
    return H


def _fwht_gpu(X):
    import cupy

    assert X.flags.c_contiguous, "fwht works in place on a C-order buffer"
    L = X.shape[0]
    X2 = X.reshape(L, -1)
    d = X2.shape[1]
    T = _ctype(X.dtype)
    cx = min(32, d)
    by = max(1, 256 // cx)
    log_tile = max(0, min(L.bit_length() - 1, int(np.log2(32768 // (cx * X.itemsize)))))
    if log_tile >= 1:
        tile_rows = 1 << log_tile
        _kernel("hadamard.cu", f"fwht_local<{T}>")(
            (L // tile_rows, -(-d // cx)), (cx, by),
            (X2, np.int64(L), np.int32(d), np.int32(log_tile)),
            shared_mem=tile_rows * cx * X.itemsize,
        )
    h = 1 << log_tile
    stage = _kernel("hadamard.cu", f"fwht_stage<{T}>")
    while h < L:
        stage((_grid((L // 2) * d, 256, cupy),), (256,), (X2, np.int64(L), np.int32(d), np.int64(h)))
        h *= 2
    return X


# ---------------------------------------------------------------------------
# Sampled rows of a Walsh–Hadamard transform, and the adjoint (SRHT blocks)
# ---------------------------------------------------------------------------


@_twin("fwht_rows", "cupy")
def _fwht_rows_gpu(X, rows):
    # ``(H_L X)[rows]`` for a C-order X of L = 2^k rows, which is overwritten.
    return _fwht_gpu(X)[rows]


@_twin("fwht_rows_adjoint", "cupy")
def _fwht_rows_adjoint_gpu(V, rows, L):
    # ``H_L[rows, :]ᵀ V``: V's rows added at ``rows`` of a zero L-row buffer, then transformed.
    import cupy

    Z = cupy.zeros((L,) + V.shape[1:], dtype=V.dtype)
    return _fwht_gpu(_scatter_add_rows_gpu(Z, rows, V))


@_twin("fwht_rows", "numpy")
def _fwht_rows_cpu(X, rows):
    """``(H_L X)[rows]`` for a C-order X of ``L = 2^k`` rows (overwritten), by a pruned transform.

    With ``L = 2^{k2} · 2^{k1}`` and row index ``i = (hi, lo)``,
    ``H_L = H_{2^{k2}} ⊗ H_{2^{k1}}``.  The full transform over the high bits
    (``_fwht_cpu`` on X as a ``2^{k2} × 2^{k1}·w`` matrix: large GEMMs) leaves each
    wanted row ``(hi, lo)`` equal to ``H_{2^{k1}}[lo, :]`` times the block ``hi``
    of X: one batched GEMM over the ``2^{k2}`` blocks, with the wanted rows of
    each block padded to the same count.  That replaces the low bits' stages
    (32 multiply-adds an entry per 5 bits) by ``pad`` (the most wanted rows in
    one block) an entry; ``_fwht_rows_plan`` picks k2 by that count.  Measured
    on the 2-core box, one 2^13 × 64 block against the full transform and a
    gather: m = 64 rows 0.37x the time, 256 0.45x, 1024 0.75x, 8192 of 2^15 × 16
    0.98x.
    """
    plan = _fwht_rows_plan(np.ascontiguousarray(rows, dtype=np.int64).tobytes(), X.shape[0], X.dtype.str)
    if plan is None:
        return _fwht_cpu(X)[rows]
    k1, G, pad, H, flat = plan
    w = X[:1].size
    _fwht_cpu(X.reshape(G, (1 << k1) * w))
    Y = np.matmul(H, X.reshape(G, 1 << k1, w))
    return Y.reshape(G * pad, w)[flat].reshape((flat.size,) + X.shape[1:])


@_twin("fwht_rows_adjoint", "numpy")
def _fwht_rows_adjoint_cpu(V, rows, L):
    """``H_L[rows, :]ᵀ V`` (L rows), the transpose of ``_fwht_rows_cpu``'s steps: V's rows
    in their padded slots, the batched GEMM with the blocks' ``H_{2^{k1}}`` rows
    transposed, then the full transform over the high bits."""
    plan = _fwht_rows_plan(np.ascontiguousarray(rows, dtype=np.int64).tobytes(), L, V.dtype.str)
    if plan is None:
        return _fwht_cpu(_scatter_add_rows_cpu(np.zeros((L,) + V.shape[1:], dtype=V.dtype), rows, V))
    k1, G, pad, H, flat = plan
    w = V[:1].size
    Vp = np.zeros((G * pad, w), dtype=V.dtype)
    Vp[flat] = V.reshape(flat.size, w)  # every wanted row has a slot of its own
    Z = np.matmul(H.transpose(0, 2, 1), Vp.reshape(G, pad, w))  # (G, 2^k1, w), C order
    _fwht_cpu(Z.reshape(G, (1 << k1) * w))
    return Z.reshape((L,) + V.shape[1:])


#: Largest padded row matrix of ``_fwht_rows_plan`` (bytes): it is built once per block size
#: and kept in a cache of 4 plans.
_FWHT_ROWS_MAX_PLAN_BYTES = 16 << 20


def _radix_macs(bits):
    """Multiply-adds per entry of ``_fwht_cpu`` over ``2^bits`` rows (radix-32 stages)."""
    macs = 0
    while bits > 0:
        macs += 1 << min(5, bits)
        bits -= min(5, bits)
    return macs


def parity(x):
    """Parity of the popcount of each value of ``x`` as a uint64 (an int64 array): the sign
    ``(-1)^parity(r & j)`` of Walsh–Hadamard entry ``(r, j)``."""
    x = np.asarray(x, dtype=np.uint64).copy()
    for s in (32, 16, 8, 4, 2, 1):
        x ^= x >> np.uint64(s)
    return (x & np.uint64(1)).astype(np.int64)


@functools.lru_cache(maxsize=4)
def _fwht_rows_plan(rows_bytes, L, dtype_str):
    """The split ``L = 2^{k2} · 2^{k1}`` of ``_fwht_rows_cpu`` for these rows, or None for the
    full transform and a gather.

    Returns ``(k1, G, pad, H, flat)``: ``G = 2^{k2}`` blocks, ``pad`` slots per
    block, ``H[g, p] = H_{2^{k1}}[lo, :]`` for the wanted row in slot p of block g
    (zero rows in unused slots), and ``flat`` the slot ``g·pad + p`` of each
    wanted row.  The cost model counts multiply-adds per
    entry: ``_radix_macs(k2)`` for the high bits and ``pad`` for the GEMM, whose
    inner dimension ``2^{k1}`` is charged as at least 32 (narrower GEMMs run
    far below BLAS speed: 2^10 × 512 with k1 = 2 took 1.5x the full transform).
    Cached: the rows are the same for every block of one size in a sketch.
    """
    rows = np.frombuffer(rows_bytes, dtype=np.int64)
    dtype = np.dtype(dtype_str)
    k = L.bit_length() - 1
    best_cost, best = _radix_macs(k), None  # the full transform, then a gather (kept on a tie)
    for k2 in range(k):
        k1 = k - k2
        pad = int(np.bincount(rows >> k1, minlength=1 << k2).max())
        cost = _radix_macs(k2) + pad * max(1, 32 >> k1)
        if cost < best_cost and L * pad * dtype.itemsize <= _FWHT_ROWS_MAX_PLAN_BYTES:
            best_cost, best = cost, (k2, pad)
    if best is None:
        return None
    k2, pad = best
    k1, G = k - k2, 1 << k2
    hi, lo = rows >> k1, rows & ((1 << k1) - 1)
    order = np.argsort(hi, kind="stable")
    counts = np.bincount(hi, minlength=G)
    slot = np.empty(rows.size, dtype=np.int64)
    slot[order] = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    flat = hi * pad + slot
    lo_slots = np.zeros(G * pad, dtype=np.int64)
    lo_slots[flat] = lo
    H = (1 - 2 * parity(lo_slots[:, None] & np.arange(1 << k1, dtype=np.int64)[None, :])).astype(dtype)
    unused = np.ones(G * pad, dtype=bool)
    unused[flat] = False
    H[unused] = 0
    H = H.reshape(G, pad, 1 << k1)
    for a in (H, flat):
        a.setflags(write=False)
    return k1, G, pad, H, flat


# ---------------------------------------------------------------------------
# Dense Gaussian blocks
# ---------------------------------------------------------------------------


@_twin("gaussian_block", "numpy")
def _gaussian_block_cpu(m, j0, c, scale, seed, stream, dtype, work=None):
    # With ``work`` (a ``_random.NormalWork``) the block lives in it: valid until its next use.
    G = _random.normal_block(m, j0, c, seed, stream, dtype=np.float64, work=work)
    if np.dtype(dtype) == np.float64:
        G *= scale
        return G
    out = np.empty(G.shape, dtype) if work is None else work.buffer("gaussian_cast", G.shape, dtype)
    return np.multiply(G, scale, out=out, casting="same_kind")  # the float64 product, rounded once


@_twin("gaussian_block", "cupy")
def _gaussian_block_gpu(m, j0, c, scale, seed, stream, dtype):
    import cupy

    dtype = np.dtype(dtype)
    S = cupy.empty((m, c), dtype=dtype)
    k0, k1 = _random.split_seed(seed)
    nb = (m + 3) // 4
    _kernel("gaussian.cu", f"gaussian_fill<{_ctype(dtype)}>")(
        (_grid(nb * c, 256, cupy),), (256,),
        (S, np.int32(m), np.int64(c), np.int64(j0), dtype.type(scale), np.uint32(k0), np.uint32(k1),
         np.uint32(stream)),
    )
    return S


# ---------------------------------------------------------------------------
# Row scatter-add (adjoints of row sampling and of SRHT)
# ---------------------------------------------------------------------------


@_twin("scatter_add_rows", "numpy")
def _scatter_add_rows_cpu(Z, idx, V):
    # A sparse 0/1 matrix product: ``np.add.at`` is an order of magnitude slower.
    rows = Z.shape[0]
    V2 = V.reshape(V.shape[0], -1)
    E = sp.csr_matrix((np.ones(idx.size, dtype=V2.dtype), (np.asarray(idx), np.arange(idx.size))),
                      shape=(rows, idx.size))
    Z += (E @ V2).reshape(Z.shape)
    return Z


@_twin("scatter_add_rows", "cupy")
def _scatter_add_rows_gpu(Z, idx, V):
    import cupy

    cupy.add.at(Z, idx, V)
    return Z


# ---------------------------------------------------------------------------
# Leverage scores within groups (rows partitioned by a group label)
# ---------------------------------------------------------------------------

# Gathered or padded group rows per chunk: on the GPU, large batched GEMMs and eigh;
# on the CPU 32 MiB (its chunk and the chunk's products were 3-5x A at 256 MiB on
# 65536 x 256 with 257 groups, 1.7x at 32 MiB, in 0.9x the time).
_GROUP_CHUNK_BYTES = 256 << 20
_GROUP_CHUNK_BYTES_CPU = 32 << 20
_GROUP_BLOCK_ROWS = 4096  # 4096 × d float64 rows stay in L2 for d <= 64
# Mean group size below which the CPU takes the padded batched route (measured on
# d = 21-51: faster at ~480 rows per group, slower from ~600).
_GROUP_SMALL_ROWS = 512
# Density up to which a sparse X takes the sparse route (_group_leverage_sparse).
_SPARSE_MAX_DENSITY = 0.25
# Rows per group and column in the CPU's screening subset (_group_leverage_subset_screened).
_SCREEN_ROWS = 32
# Rows per group and column from which the CPU's exact route screens rows by the
# eigenvalue bound (_group_leverage_exact).  Gaussian groups, d = 200: equal times
# at 10 rows per column, the screen 0.64x at 16 and 0.5x at 40.
_SCREEN_MIN_RATIO = 12


def _group_chunk_bytes(xp):
    return _GROUP_CHUNK_BYTES if xp is not np else min(_GROUP_CHUNK_BYTES, _GROUP_CHUNK_BYTES_CPU)


def _scaled_inverse_root(G, xp, bound=True):
    """Jacobi-scaled inverse square root of symmetric PSD Gram matrices ``G`` (batched).

    Returns ``(s, W, lam_min, triangular)``: ``s = diag(G)^{-1/2}`` (0 for zero
    columns), and ``W`` with ``W Wᵀ = G_s⁻¹`` on the range of
    ``G_s = diag(s) G diag(s)``:

    - ``W = V Λ^{−1/2}`` from the ``eigh`` of ``G_s`` over the eigenvalues above
      ``10 d ε λ_max`` (the Gram's own round-off; smaller ones count as rank
      deficiency), ``lam_min`` the smallest kept eigenvalue (``inf`` when none
      is kept), ``triangular`` False;
    - on the CPU, when every matrix of the batch is certified to have no
      eigenvalue cut, ``W = L⁻ᵀ`` (upper triangular) from ``G_s = LLᵀ``,
      ``triangular`` True.  With ``bound`` the certificate is ``eigvalsh``,
      whose smallest eigenvalue is ``lam_min``.  Without it the eigenvalues are
      skipped (at d = 200 they cost more than the Gram's Cholesky and
      inverse together): LAPACK's ``pocon`` estimate of the 1-norm reciprocal
      condition number must be at least ``1e4 d ε``, and ``lam_min`` is 0
      (no bound).  ``κ₂ <= κ₁`` for symmetric matrices and the estimate is
      rarely off by more than a factor of 10 (Higham), so a certified matrix
      is at least 100x inside the eigenvalue cut; the others take ``eigh``.

    Then ``ℓ(x) = ||(x ∘ s) W||²`` is the leverage score of x in the range
    (column scaling leaves it unchanged), and
    ``ℓ(x) <= ||x ∘ s||² / lam_min`` — the screening bound; the scaling makes
    it tight for columns of very different norms.  On the GPU the ``eigh``
    route always runs (and gives the bound whatever ``bound`` says).
    """
    d = G.shape[-1]
    diag = xp.diagonal(G, axis1=-2, axis2=-1)
    s = xp.where(diag > 0, 1.0 / xp.sqrt(xp.where(diag > 0, diag, 1.0)), 0.0)
    Gs = G * s[..., :, None] * s[..., None, :]

    def cut(lam):
        eps, tiny = np.finfo(np.float64).eps, np.finfo(np.float64).tiny
        return xp.maximum(10 * d * eps * lam.max(axis=-1, keepdims=True), tiny)

    if xp is np:
        W, lam_min = _cholesky_inverse_root_cpu(Gs, cut, bound)
        if W is not None:
            return s, W, lam_min, True
    lam, V = xp.linalg.eigh(Gs)
    tol = cut(lam)
    kept = lam > tol
    W = V * xp.where(kept, 1.0 / xp.sqrt(xp.maximum(lam, tol)), 0.0)[..., None, :]
    return s, W, xp.where(kept, lam, xp.inf).min(axis=-1), False


#: ``pocon``'s reciprocal condition estimate certifies a Gram for the Cholesky route at
#: ``_CHOLESKY_RCOND · d · ε`` and above: 1000x the eigenvalue cut's ``10 d ε``.
_CHOLESKY_RCOND = 1e4


def _cholesky_inverse_root_cpu(Gs, cut, bound):
    """``(W, lam_min)`` of ``_scaled_inverse_root``'s Cholesky route, or ``(None, None)``
    where some matrix of the batch is not certified (see there).

    A zero column (a column no row of the group touches: common in groups of
    sparse rows) is left out of its matrix's factorization and gets zero rows
    and columns in W, which leaves ``W Wᵀ`` the pseudo-inverse; otherwise it
    would send the whole batch to ``eigh``.
    """
    d = Gs.shape[-1]
    flat = Gs.reshape(-1, d, d)
    live = np.diagonal(flat, axis1=1, axis2=2) > 0
    if live.all():
        W, lam_min = _cholesky_inverse_root_batch(flat, cut, bound)
    else:
        W, lam_min = np.zeros_like(flat), np.full(flat.shape[0], np.inf)
        for k in range(flat.shape[0]):
            at = np.flatnonzero(live[k])
            if at.size == 0:
                continue  # a zero matrix: every score 0, nothing to bound
            Wk, lk = _cholesky_inverse_root_batch(flat[k][np.ix_(at, at)][None], cut, bound)
            if Wk is None:
                return None, None
            W[k][np.ix_(at, at)] = Wk[0]  # still upper triangular: ``at`` is ascending
            lam_min[k] = lk[0]
    if W is None:
        return None, None
    return W.reshape(Gs.shape), lam_min.reshape(Gs.shape[:-2])


def _cholesky_inverse_root_batch(flat, cut, bound):
    d = flat.shape[-1]
    if bound:
        lam = np.linalg.eigvalsh(flat)
        if not np.all(lam[:, 0] > cut(lam)[:, 0]):
            return None, None
        lam_min = lam[:, 0]
    else:
        lam_min = np.zeros(flat.shape[0])
    try:
        L = np.linalg.cholesky(flat)
    except np.linalg.LinAlgError:
        return None, None
    least = _CHOLESKY_RCOND * d * np.finfo(np.float64).eps
    W = np.empty_like(L)
    for k, (f, g) in enumerate(zip(L, flat)):
        if not bound:
            rcond, info = scipy.linalg.lapack.dpocon(f, np.abs(g).sum(axis=0).max(), uplo="L")
            if info != 0 or not rcond >= least:
                return None, None
        inv, info = scipy.linalg.lapack.dtrtri(f, lower=1)
        if info != 0:
            return None, None
        W[k] = inv.T
    return W, lam_min


def _scaled_scores_cpu(B, s, W, triangular, threshold=0.0):
    """``||(b_i ∘ s) W||²`` for the rows of B (float64); with ``threshold > 0`` the scores
    below it may come back as 0.

    An upper-triangular W is applied by one TRMM in place, half a GEMM's flops
    (0.4-0.7x its time with the row norms at d = 51-400).  With a threshold the
    TRMM runs in float32 (half the time again) and only the rows it cannot
    place below the threshold are scored in float64, so every score at or
    above it is the float64 one.  The bound is rigorous: rounding ``b ∘ s``
    and W to float32 and a d-term product in any order leave
    ``|ỹ − y| <= γ_{d+3} |b ∘ s| |W|`` entrywise (``γ_k = k u / (1 − k u)``,
    u the float32 unit roundoff), so ``||y|| <= ||ỹ|| + γ_{d+3} ||b ∘ s|| ||W||_F``,
    with both norms from float32 sums of squares divided by ``1 − γ_d``.
    At d = 200 on Gaussian groups that margin is about 1e-4 of the
    threshold's root: no extra rows.
    """
    if B.shape[0] == 0 or not triangular:
        Y = (B * s) @ W
        return np.einsum("ij,ij->i", Y, Y)
    if threshold > 0:
        d = B.shape[1]
        u = float(np.finfo(np.float32).eps) / 2
        gamma = (d + 3) * u / (1 - (d + 3) * u)
        Bs32 = np.empty(B.shape, dtype=np.float32)
        np.multiply(B, s, out=Bs32, casting="same_kind")
        # Sums of squares in float32 too: each within a factor (1 − γ_d) of its value,
        # and ||b ∘ s|| <= ||fl32(b ∘ s)|| / (1 − u).
        shrink = 1 - d * u / (1 - d * u)
        norm_bs = np.sqrt(np.einsum("ij,ij->i", Bs32, Bs32).astype(np.float64) / shrink) / (1 - u)
        W32 = np.asarray(W.T, dtype=np.float32, order="F")  # lower triangular, Fortran order
        Yt = scipy.linalg.blas.strmm(1.0, W32, Bs32.T, side=0, lower=1, overwrite_b=1)
        root = np.sqrt(np.einsum("ij,ij->j", Yt, Yt).astype(np.float64) / shrink)
        root += gamma * norm_bs * float(np.sqrt(np.einsum("ij,ij->", W, W)))
        q = np.zeros(B.shape[0])
        cand = np.flatnonzero(~(root * root < threshold * (1 - 1e-6)))  # NaN: a candidate
        if cand.size:
            q[cand] = _scaled_scores_cpu(B[cand], s, W, triangular)
        return q
    # (Bs W)ᵀ = Wᵀ Bsᵀ: Bsᵀ is Fortran-ordered, so the product overwrites Bs without a copy.
    Bs = B * s
    Yt = scipy.linalg.blas.dtrmm(1.0, W.T, Bs.T, side=0, lower=1, overwrite_b=1)
    return np.einsum("ij,ij->j", Yt, Yt)


def _take_rows(X, rows, xp):
    """``X[rows]`` of a dense X: ``take`` for a C-order X, fancy indexing otherwise (NumPy's
    ``take`` copies a non-contiguous X whole first: 1 % of a Fortran-order 2^19 x 32 took
    44 ms and a copy of X, against 0.5 ms)."""
    return xp.take(X, rows, axis=0) if xp is not np or X.flags.c_contiguous else X[rows]


def _group_order(group, groups, xp):
    """Rows ordered by group (stable) and the group boundaries in that order."""
    # Small integer labels sort by radix sort (NumPy's stable sort for <= 16-bit ints).
    key = group.astype(xp.int16) if groups < 2**15 else group
    order = xp.argsort(key, kind="stable") if xp is np else xp.argsort(key)
    counts = xp.bincount(group, minlength=groups)
    bounds = np.concatenate([[0], np.cumsum(to_host(counts))]).astype(np.int64)
    return order, bounds


class _GivenLabels:
    """Labelings given as a ``(k, n)`` array.

    The interface the group-leverage routes read labels through (``_HashLabels``
    has the same): ``len``, ``all(k)`` (labeling k), ``at(k, rows)`` and
    ``at_runs(k, q, count)`` (rows ``4q .. 4q+3`` for each ascending q, the first
    ``count`` of them).
    """

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return self.batch.shape[0]

    def all(self, k):
        return self.batch[k]

    def at(self, k, rows):
        return self.batch[k][rows]

    def at_runs(self, k, q, count):
        return self.batch[k][_run_rows(q)[:count]]


def _run_rows(q):
    return (4 * np.asarray(q)[:, None] + np.arange(4)).reshape(-1)


class _HashLabels:
    """Labelings ``hash_values(0, n, groups, 1, seed_k, stream)[0][:, 0]``, hashed only where read.

    Row i's label is hash word i's bucket (``_buckets`` with one nonzero).
    """

    def __init__(self, n, groups, seeds, stream):
        self.n, self.groups, self.seeds, self.stream = n, groups, list(seeds), stream

    def __len__(self):
        return len(self.seeds)

    def _labels(self, w):
        return _buckets(w, 0, self.groups, 1)

    def all(self, k):
        return self._labels(_random.hash_words(0, self.n, self.seeds[k], self.stream))

    def at(self, k, rows):
        return self._labels(_random.hash_words_at(rows, self.seeds[k], self.stream))

    def at_runs(self, k, q, count):
        # one Philox block per run of four rows
        return self._labels(_random.hash_word_blocks(q, self.seeds[k], self.stream)).reshape(-1)[:count]


@_twin("group_leverage", "numpy")
def _group_leverage_cpu(X, group, groups, threshold=0.0):
    # ``group`` is (n,) or (k, n): k labelings of the same rows (heavy_coordinates'
    # repetitions), which share the screening pass below.
    labels = np.asarray(group)
    out = _group_leverage_labelings(X, _GivenLabels(labels.reshape(-1, X.shape[0])), groups, threshold)
    return out.reshape(labels.shape)


@_twin("hashed_group_leverage", "numpy")
def _hashed_group_leverage_cpu(X, groups, seeds, stream, threshold=0.0):
    # group_leverage of the labelings hash_values(0, n, groups, 1, seed, stream) for each
    # seed, shape (len(seeds), n); the CPU hashes only the labels its route reads.
    return _group_leverage_labelings(X, _HashLabels(X.shape[0], groups, seeds, stream), groups, threshold)


@_twin("hashed_group_leverage", "cupy")
def _hashed_group_leverage_gpu(X, groups, seeds, stream, threshold=0.0):
    import cupy

    X = to_dense(X)
    n = X.shape[0]
    return cupy.stack([
        _group_leverage_padded(X, _hash_values_gpu(0, n, groups, 1, seed, stream)[0][:, 0], groups, threshold, cupy)
        for seed in seeds
    ])


def _group_leverage_labelings(X, labels, groups, threshold):
    n, d = X.shape
    if sp.issparse(X):
        # Small groups go dense (the padded route's loops run in C; per-group sparse
        # products cost ~0.1 ms of Python each), as does a dense-ish X.
        if n > _GROUP_SMALL_ROWS * groups and X.nnz <= _SPARSE_MAX_DENSITY * n * d:
            return np.stack([_group_leverage_sparse(X, labels.all(k), groups, threshold) for k in range(len(labels))])
        check_memory(8 * n * d, f"dense copy of the sparse {n} x {d} rows", np)
        X = X.toarray()
    stride = n // (_SCREEN_ROWS * d * groups)
    if threshold > 0 and stride >= 2:
        return _group_leverage_subset_screened(X, labels, groups, threshold, stride)
    # Labelings on threads, BLAS serial in each: the gathers are serial and the groups' GEMMs
    # small (18 labelings of 51 groups, d = 51: 125000 rows 1.20-1.27 → 0.68-0.73 s, 62000
    # 0.41 → 0.25-0.27 s; at 10000 rows threads lost, hence the per-labeling size).
    return np.stack(_thread_map(lambda k: _group_leverage_exact(X, labels.all(k), groups, threshold),
                                range(len(labels)), X.size))


def _group_leverage_sparse(X, group, groups, threshold):
    """Group leverage scores of a SciPy sparse X (the CPU twin's sparse route).

    Row i's entries are moved to columns ``g(i)·d + j`` of an ``n × groups·d``
    CSR matrix Z (its indices shifted, nothing reordered).  ``ZᵀZ`` is then
    block diagonal with the groups' Grams ``X_gᵀX_g`` as its blocks: all of
    them from one sparse product.  With ``V`` stacking the groups'
    ``diag(s_g) W_g``, ``Z V`` has rows ``(x_i ∘ s_{g(i)}) W_{g(i)}``: every score
    from sparse-times-dense products over row blocks.  Per labeling that is
    O(nnz·d + n·d) plus ``groups · d³``, against the dense routes' ``n d²`` on
    the densified rows, in a handful of SciPy calls rather than several per
    group.  With a threshold and groups of at least ``_SCREEN_MIN_RATIO`` rows
    per column, only the rows that the bound ``ℓ_i <= ||x_i ∘ s||² / λ_min``
    cannot place below the threshold are multiplied.
    """
    X = sp.csr_matrix(X, dtype=np.float64)
    if not X.has_canonical_format:
        # Repeated (row, column) entries add; the screen below squares entries, which
        # would split a value's square into smaller ones (a bound below the score).
        X = X.copy()
        X.sum_duplicates()
    n, d = X.shape
    shift = np.repeat(np.asarray(group, dtype=np.int64) * d, np.diff(X.indptr))
    Z = sp.csr_matrix((X.data, X.indices + shift, X.indptr), shape=(n, groups * d))
    G = (Z.T @ Z).tocoo()  # block diagonal: row and column share the group
    grams = np.zeros((groups, d, d))
    grams[G.row // d, G.row % d, G.col % d] = G.data
    del G
    V = np.empty((groups, d, d))
    S = np.empty((groups, d))
    lam_min = np.zeros(groups)
    # Large groups: the screening bound of _group_leverage_exact, ||x ∘ s||² from the
    # squared entries (nnz work), so that only the rows it cannot clear are multiplied.
    bound = threshold > 0 and n >= _SCREEN_MIN_RATIO * d * groups
    per = max(1, _group_chunk_bytes(np) // (8 * d * d))  # Grams per factorization call
    for g0 in range(0, groups, per):
        S[g0 : g0 + per], Ws, lam_min[g0 : g0 + per], _ = _scaled_inverse_root(grams[g0 : g0 + per], np, bound=bound)
        V[g0 : g0 + per] = S[g0 : g0 + per, :, None] * Ws
    del grams
    V = V.reshape(groups * d, d)
    q = np.zeros(n)
    rows = np.arange(n)
    if bound:
        Z2 = Z.copy()
        Z2.data **= 2
        rows = np.flatnonzero(Z2 @ (S * S).reshape(-1) >= threshold * lam_min[group])
        del Z2
    # Rows in group order, so that a block of rows reads the V of a few groups (in
    # cache), not rows of all of V (3x the time at 201 groups of d = 201).
    if groups > 1:
        rows = rows[np.argsort(np.asarray(group)[rows], kind="stable")]
    Zo = Z if rows.size == n and groups == 1 else Z[rows]
    for a in range(0, rows.size, _GROUP_BLOCK_ROWS):
        Y = np.asarray(Zo[a : a + _GROUP_BLOCK_ROWS] @ V)
        q[rows[a : a + _GROUP_BLOCK_ROWS]] = np.einsum("ij,ij->i", Y, Y)
    return _below_threshold_zero(q, threshold, np)


def _group_leverage_exact(X, group, groups, threshold, only=None):
    # Large groups: per group, gather its rows and one Gram (syrk); the small
    # eigendecompositions of a chunk of groups in one batched call; then, in
    # cache-sized row blocks, the screening bound and the GEMM for the rows it
    # cannot rule out.  One group needs no gather.  (Groups on threads measured
    # slower: the Grams' BLAS threads already fill the cores.)
    # Small groups: the padded batched route, whose loops run in C, not Python.
    # ``only``: the groups to score (the others are left 0); None for all.
    n = X.shape[0]
    if groups > 1 and n <= _GROUP_SMALL_ROWS * groups:
        return _group_leverage_padded(X, group, groups, threshold, np)
    if groups == 1:
        order, bounds = None, np.array([0, n])
    else:
        order, bounds = _group_order(group, groups, np)
    q = np.zeros(n)
    todo = np.array([g for g in (range(groups) if only is None else only) if bounds[g + 1] > bounds[g]], dtype=np.int64)
    rows = (bounds[1:] - bounds[:-1])[todo]
    budget = max(1, _group_chunk_bytes(np) // (8 * X.shape[1]))  # gathered rows per chunk

    def gather(lo, hi):  # rows lo..hi-1 in group order, float64
        return np.asarray(X[lo:hi] if order is None else _take_rows(X, order[lo:hi], np), dtype=np.float64)

    i = 0
    while i < todo.size:
        # A chunk of groups (at least one): the inverse roots of its Grams in one batched call.
        j = i + max(1, int(np.searchsorted(np.cumsum(rows[i:]), budget, side="right")))
        chunk = todo[i:j]
        if j == i + 1 and rows[i] > budget and (order is not None or X.dtype != np.float64):
            # One group over the budget whose gather would copy it (Tukey sampling's
            # non-heavy rows): its Gram and scores read it a budget's rows at a time.
            lo, hi = int(bounds[chunk[0]]), int(bounds[chunk[0] + 1])
            Bs = [None]
            G = sum(B.T @ B for B in (gather(c, min(c + budget, hi)) for c in range(lo, hi, budget)))
            grams = [G]
        else:
            Bs = [gather(int(bounds[g]), int(bounds[g + 1])) for g in chunk]
            grams = [B.T @ B for B in Bs]
        # The screening bound pays for its eigenvalues only in groups of many rows per
        # column: at 10 rows per column (Tukey sampling's groups) half the rows of
        # Gaussian data pass it, at 20 almost none.
        bound = threshold > 0 and rows[i:j].sum() >= _SCREEN_MIN_RATIO * X.shape[1] * (j - i)
        S, Ws, lam_mins, triangular = _scaled_inverse_root(np.stack(grams), np, bound=bound)
        for g, B, s, W, lam_min in zip(chunk, Bs, S, Ws, lam_mins):
            a, end = int(bounds[g]), int(bounds[g + 1])
            for c in range(0, end - a, _GROUP_BLOCK_ROWS):
                c1 = c + _GROUP_BLOCK_ROWS
                Bc = B[c:c1] if B is not None else gather(a + c, min(a + c1, end))
                at = np.arange(a + c, a + c + Bc.shape[0])
                if threshold > 0 and lam_min > 0:  # ||a∘s||² as one GEMV: 3.5x the scaled copy and einsum
                    keep = np.flatnonzero((Bc * Bc) @ (s * s) >= threshold * lam_min)
                    Bc, at = Bc[keep], at[keep]
                q[at if order is None else order[at]] = _scaled_scores_cpu(Bc, s, W, triangular, threshold)
        i = j
    return _below_threshold_zero(q, threshold, np)


def _group_leverage_subset_screened(X, labels, groups, threshold, stride):
    """Screened group leverage scores through a subset T of the rows: every ``stride``-th aligned run of four.

    For any rows T, ``G_{g∩T} ⪯ G_g``, so ``λ_min(D G_{g∩T} D) <= λ_min(D G_g D)``
    for any positive diagonal D, and ``ℓ_i <= ||a_i ∘ s||² / λ_min(D_s G_{g∩T} D_s)``
    bounds the leverage score of row i in its group g.  A group none of whose rows
    reaches ``threshold`` under that bound cannot hold a score at or above it:
    all its rows stay 0, without touching the group's rows again.  Only the
    other (candidate) groups go through the exact route.  ``s`` is the inverse
    column norm of T (one scaling for every group and labeling), so
    ``||a_i ∘ s||²`` is one pass over X for all k labelings, and each labeling
    costs the Grams of T (``|T| ≈ 32 d`` rows per group, where the bound
    rules out Gaussian-like rows with a wide margin) instead of those of X.
    A group whose T Gram is numerically singular (T misses a direction of the
    data) has no bound: it is a candidate.  ``labels`` (``_GivenLabels`` or
    ``_HashLabels``) is read at T, at the rows the smallest bound cannot rule
    out, and in full only for a labeling with candidate groups: hashed labels
    cost a fraction of one pass (runs of four rows share a Philox block).
    Returns ``(k, n)``.
    """
    n, d = X.shape
    q_T = np.arange(0, -(-n // 4), stride)
    rows_T = _run_rows(q_T)
    rows_T = rows_T[rows_T < n]
    T = np.asarray(_take_rows(X, rows_T, np), dtype=np.float64)
    colsq = np.einsum("ij,ij->j", T, T)
    s2 = np.where(colsq > 0, 1.0 / np.where(colsq > 0, colsq, 1.0), 0.0)
    if not np.all(colsq > 0):
        zero = np.flatnonzero(colsq == 0)
        if np.any(X[:, zero]):  # a column that T misses: no usable bound, score exactly
            return np.stack([_group_leverage_exact(X, labels.all(k), groups, threshold) for k in range(len(labels))])
    r = np.empty(n)  # ||a_i ∘ s||², in cache-sized blocks
    for a in range(0, n, _GROUP_BLOCK_ROWS):
        B = np.asarray(X[a : a + _GROUP_BLOCK_ROWS], dtype=np.float64)
        r[a : a + B.shape[0]] = (B * B) @ s2
    live = colsq > 0  # all-zero columns add nothing to r or to any Gram
    if not live.any():  # X = 0: every score is 0
        return np.zeros((len(labels), n))
    # T is this function's own copy (a gather), scaled in place when every column is live:
    # T and TS are up to half of X each.  C order: the row gather TS[order] below is 3x slower on F order.
    TS = T if live.all() else np.ascontiguousarray(T[:, live])
    del T
    TS *= np.sqrt(s2[live])
    eps = np.finfo(np.float64).eps
    cut = threshold * (1 - 1e-6)  # the margin covers the round-off of this and the exact route's eigenvalues
    out = np.zeros((len(labels), n))

    def subset_lam_min(k):  # λ_min of each group's subset Gram under labeling k (0: singular)
        order, bounds = _group_order(labels.at_runs(k, q_T, rows_T.size), groups, np)
        TSo = np.take(TS, order, axis=0)
        G = np.stack([TSo[a:b].T @ TSo[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
        lam = np.linalg.eigvalsh(G)
        return np.where(lam[:, 0] > 10 * d * eps * lam[:, -1], lam[:, 0], 0.0)

    # The labelings' subset Grams on threads (the gather, the small GEMMs and eigvalsh release
    # the GIL, and each is serial at these sizes); the candidates' exact scores after, in order.
    for k, lam_min in enumerate(_thread_map(subset_lam_min, range(len(labels)), TS.size)):
        rows = np.flatnonzero(r >= cut * lam_min.min())  # the rows some group's bound cannot rule out
        if rows.size == 0:
            continue
        # (at rows costs one Philox block per row, all of them one per four rows)
        group = labels.at(k, rows) if 4 * rows.size < n else labels.all(k)[rows]
        cand = np.unique(group[r[rows] >= cut * lam_min[group]])
        if cand.size:
            out[k] = _group_leverage_exact(X, labels.all(k), groups, threshold, only=cand)
    return out


@_twin("group_leverage", "cupy")
def _group_leverage_gpu(X, group, groups, threshold=0.0):
    import cupy

    X = to_dense(X)  # (the GPU twin has no sparse route: its callers pass dense rows)
    if group.ndim == 2:  # k labelings: one after the other
        return cupy.stack([_group_leverage_padded(X, g, groups, threshold, cupy) for g in group])
    return _group_leverage_padded(X, group, groups, threshold, cupy)


def _group_leverage_padded(X, group, groups, threshold, xp):
    # Rows sorted by group into a zero-padded (groups, L, d) stack (L the largest
    # group; zero rows change neither Gram nor scores), so each chunk of groups is
    # one batched GEMM, one batched eigh and one batched GEMM, not 3·groups launches.
    # No rows are screened out: a batched GEMM costs less than a compaction.
    n, d = X.shape
    order, starts = _group_order(group, groups, xp)
    sorted_group = group[order]
    pos = xp.arange(n) - xp.asarray(starts[:-1])[sorted_group]
    L = max(1, int((starts[1:] - starts[:-1]).max()))
    per = max(1, _group_chunk_bytes(xp) // (8 * L * d))
    out = xp.empty(n, dtype=xp.float64)
    for g0 in range(0, groups, per):
        g1 = min(groups, g0 + per)
        a, b = int(starts[g0]), int(starts[g1])
        if a == b:
            continue
        slot, at, rows = sorted_group[a:b] - g0, pos[a:b], order[a:b]
        P = xp.zeros((g1 - g0, L, d), dtype=xp.float64)
        # Rows by one flat index (slot·L + at): NumPy's 2-index scatter into a 3-D array was 3x slower.
        P.reshape(-1, d)[slot * L + at] = _take_rows(X, rows, xp)
        # (every row of the stack is scored: no screening bound, so the CPU skips its eigenvalues)
        s, W, _, _ = _scaled_inverse_root(xp.matmul(P.transpose(0, 2, 1), P), xp, bound=False)
        P *= s[:, None, :]
        Y = xp.matmul(P, W)
        q = xp.einsum("gld,gld->gl", Y, Y)
        out[rows] = q[slot, at]
    return _below_threshold_zero(out, threshold, xp)


def _below_threshold_zero(q, threshold, xp):
    # Both twins return the scores below a positive threshold as 0, whichever rows
    # their screening skipped, so that they agree.
    return q if threshold <= 0 else xp.where(q >= threshold, q, 0.0)


# ---------------------------------------------------------------------------
# Gaussian sketch: generate column blocks of S and multiply (BLAS / cuBLAS)
# ---------------------------------------------------------------------------


def _gaussian_cols(m, itemsize, block_bytes):
    return max(1, block_bytes // (m * itemsize))


def _thread_normal_work():
    """A function giving the calling thread its own ``_random.NormalWork``, for one call
    of a CPU Gaussian twin: the blocks a thread generates reuse one set of buffers,
    which go when the call returns."""
    local = threading.local()

    def work():
        w = getattr(local, "work", None)
        if w is None:
            w = local.work = _random.NormalWork()
        return w

    return work


#: A CPU Gaussian sketch whose result is at least this large generates S in blocks of at
#: least ``_GAUSSIAN_WIDE_MIN_COLS`` columns (``_gaussian_sketch_cpu``).
_GAUSSIAN_WIDE_OUT_BYTES = 1 << 24
_GAUSSIAN_WIDE_MIN_COLS = 1024


@_twin("gaussian_sketch", "numpy")
def _gaussian_sketch_cpu(As, outs, col0, m, scale, seed, stream):
    """``S @ A`` for each dense A of ``As``, every column block of S generated once for all.

    Generation (Philox + Box–Muller, ~15 ns per entry) dominates on a CPU: small
    blocks that stay in cache, spread over threads (NumPy releases the GIL).
    Each block's product is a fresh m × d array, and past malloc's mmap threshold
    every one of them page-faults in anew: with results of 16 MiB or more, blocks
    of at least 1024 columns (a 2000 × 59200 column-major A sketched to 1952 rows,
    ``independent_rows``' step: 15 blocks of 134 columns, each product 925 MB, took
    9.7-11.3 s; 2 blocks 3.3-3.4 s).  Several operands (a least-squares ``(S A, S b)``)
    share each block: block sizes follow their total width, so a result may differ
    from its own ``S @ A`` in round-off.
    """
    A2s = [A.reshape(A.shape[0], -1) for A in As]
    o2s = tuple(out.reshape(m, -1) for out in outs)
    c = _gaussian_cols(m, 8, 2 << 20)
    if m * sum(A2.shape[1] * out.itemsize for A2, out in zip(A2s, outs)) >= _GAUSSIAN_WIDE_OUT_BYTES:
        c = max(c, _GAUSSIAN_WIDE_MIN_COLS)
    work = _thread_normal_work()

    def block(a, b):
        G = {}  # one block of S per dtype among the operands; only the first in the thread's buffers
        for A2 in A2s:
            if A2.dtype not in G:
                G[A2.dtype] = _gaussian_block_cpu(m, col0 + a, b - a, scale, seed, stream, A2.dtype,
                                                  None if G else work())
        return tuple(G[A2.dtype] @ A2[a:b] for A2 in A2s)

    n = A2s[0].shape[0]
    sums = _parallel_sums(block, _row_blocks(n, c), _cpu_threads(m * n), o2s)
    return tuple(y.reshape(out.shape) for y, out in zip(sums, outs))


@_twin("gaussian_sketch", "cupy")
def _gaussian_sketch_gpu(As, outs, col0, m, scale, seed, stream):
    # Each block of S is filled once (per dtype) and multiplied into every operand's out.
    c = _gaussian_cols(m, max(A.itemsize for A in As), 256 << 20)
    for a, b in _row_blocks(As[0].shape[0], c):
        G = {}
        for A, out in zip(As, outs):
            if A.dtype not in G:
                G[A.dtype] = _gaussian_block_gpu(m, col0 + a, b - a, scale, seed, stream, A.dtype)
            out += G[A.dtype] @ A[a:b]
    return tuple(outs)


@_twin("gaussian_adjoint", "numpy")
def _gaussian_adjoint_cpu(Y, out, col0, scale, seed, stream):
    m = Y.shape[0]
    c = _gaussian_cols(m, 8, 2 << 20)
    work = _thread_normal_work()

    def block(a, b):
        out[a:b] = _gaussian_block_cpu(m, col0 + a, b - a, scale, seed, stream, Y.dtype, work()).T @ Y

    ranges = _row_blocks(out.shape[0], c)
    with all_blas_serial, ThreadPoolExecutor(_cpu_threads(m * out.shape[0])) as ex:
        list(ex.map(lambda r: block(*r), ranges))
    return out


@_twin("gaussian_adjoint", "cupy")
def _gaussian_adjoint_gpu(Y, out, col0, scale, seed, stream):
    m = Y.shape[0]
    for a, b in _row_blocks(out.shape[0], _gaussian_cols(m, Y.itemsize, 256 << 20)):
        out[a:b] = _gaussian_block_gpu(m, col0 + a, b - a, scale, seed, stream, Y.dtype).T @ Y
    return out


@_twin("gaussian_sketch_sparse", "numpy")
def _gaussian_sketch_sparse_cpu(A, out, col0, m, scale, seed, stream):
    """``S @ A`` for a CSR A: each column block of S times A's rows as a sparse–dense
    product, ``nnz(A) · m`` flops, where densified row blocks of A cost ``m · n · d``
    (randomized_svd of a 10⁵ × 10⁵ CSR matrix with 10⁶ nonzeros spent 16 of its 21 s
    there).  Generating S's ``m · n`` entries is the rest, as for dense A."""
    n, d = A.shape
    work = _thread_normal_work()

    def block(a, b):  # (A_ab)ᵀ G_abᵀ: d × m, summed in that orientation
        return A[a:b].T @ _gaussian_block_cpu(m, col0 + a, b - a, scale, seed, stream, A.dtype, work()).T

    # Returned as the transpose of the d × m sum (F order): a copy to C order cost as much as
    # the products for the right sketch of a tall A (A @ S.T = (S @ A.T).T, d = A's n rows).
    return _parallel_sum(block, _row_blocks(n, _gaussian_cols(m, 8, 2 << 20)), _cpu_threads(m * n), out.T).T


@_twin("gaussian_sketch_sparse", "cupy")
def _gaussian_sketch_sparse_gpu(A, out, col0, m, scale, seed, stream):
    for a, b in _row_blocks(A.shape[0], _gaussian_cols(m, A.dtype.itemsize, 256 << 20)):
        # CSR @ dense (cuSPARSE SpMM) for the block's transpose
        out += (A[a:b].T.tocsr() @ _gaussian_block_gpu(m, col0 + a, b - a, scale, seed, stream, A.dtype).T).T
    return out
