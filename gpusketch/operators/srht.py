"""Subsampled randomized Hadamard transform (SRHT)."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _kernels
from .._backend import all_blas_serial, check_memory, check_positive_int, check_seed
from .._random import STREAM_SRHT_ROWS, STREAM_SRHT_SIGNS, uniform_u64
from ._base import COLUMNS_LIMIT, MAX_SKETCH_COLUMNS, SketchOperator, _zeros

__all__ = ["SRHT"]


def _sample_rows(m, N, seed):
    """m distinct rows of [0, N) (Floyd's algorithm, Philox-driven), sorted."""
    u = uniform_u64(0, m, seed, STREAM_SRHT_ROWS)
    chosen = set()
    for i, j in enumerate(range(N - m, N)):
        t = int(u[i]) % (j + 1)
        chosen.add(j if t in chosen else t)
    return np.array(sorted(chosen), dtype=np.int64)


#: CPU block size for the transform (bytes of A): the Hadamard passes of a block stay in cache.
_CPU_BLOCK_BYTES = 4 << 20
#: CPU column tile (bytes of a block of a tile) for wide or non-C-order A (``SRHT._by_column_tiles``).
_CPU_TILE_BYTES = 1 << 20
_CPU_THREADS = max(1, min(8, os.cpu_count() or 1))


def _dyadic_blocks(g0, g1, kmax=None):
    """Split [g0, g1) into aligned blocks [c·2^k, (c+1)·2^k), largest first, with k <= kmax."""
    out = []
    while g0 < g1:
        k = (g0 & -g0).bit_length() - 1 if g0 else (g1 - g0).bit_length() - 1
        while (1 << k) > g1 - g0:
            k -= 1
        if kmax is not None:
            k = min(k, kmax)
        out.append((g0, k))
        g0 += 1 << k
    return out


class SRHT(SketchOperator):
    """Subsampled randomized Hadamard transform ``S = sqrt(N/m) · P H D``.

    ``D`` flips the sign of each input row (Philox signs), ``H`` is the
    orthonormal Walsh–Hadamard matrix of order ``N = 2^⌈log2 n⌉`` (the input
    is zero-padded to N), and ``P`` keeps ``m`` of its N rows sampled without
    replacement.  Entry ``(i, j)`` is ``d_j (-1)^{popcount(r_i & j)} / √m``.

    Parameters
    ----------
    m : int
        Rows kept, ``1 <= m <= N``.
    n : int
        Input dimension.
    seed : int, optional
        64-bit seed; ``None`` draws one from OS entropy.

    Notes
    -----
    The zero padding is never formed.  ``[0, n)`` (or a column slice
    ``[a, b)``) is split into aligned dyadic blocks of length ``2^k``; on a
    block starting at ``c·2^k`` the Hadamard matrix factors as
    ``H_N[r, c·2^k + t] = (-1)^{popcount((r >> k) & c)} · H_{2^k}[r mod 2^k, t]``,
    so each block costs one fast Walsh–Hadamard transform of its own length
    (CUDA kernel on the GPU) and a gather of m rows.  This is what makes
    ``S[:, a:b]`` exact and cheap, as streaming needs.  On the CPU the
    blocks are cut further, to about 4 MiB of A but at least 4m rows: each
    block's transform then runs in cache, and the gathers add at most a
    quarter of A's rows (1.6–3× faster at 2^20 × 64, fp64); a wide or
    non-C-order A is taken in column tiles, on threads.  The CPU computes
    only the m rows of each block's transform that are kept (a full
    transform over the high bits, then one batched GEMM with the kept rows'
    low-bit Hadamard rows; ``_kernels._fwht_rows_cpu``): at 2^20 × 64 that
    took 0.30–0.51x the full transform's time for m = 64 and 0.47–0.80x for
    m = 1024.  Sampled rows are chosen on the host (Floyd's algorithm with
    Philox draws) and sorted.

    References
    ----------
    Ailon, N. and Chazelle, B. "The fast Johnson–Lindenstrauss transform",
    SIAM J. Comput. 39(1), 2009; Tropp, J. "Improved analysis of the
    subsampled randomized Hadamard transform", 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import SRHT
    >>> S = SRHT(4, 8, seed=3)
    >>> D = S.todense()
    >>> np.allclose(D @ D.T, 2.0 * np.eye(4))   # rows orthogonal, norm² = N/m
    True
    """

    def __init__(self, m, n, *, seed=None):
        m = check_positive_int(m, "m")
        n = check_positive_int(n, "n", maximum=MAX_SKETCH_COLUMNS, why=COLUMNS_LIMIT)
        N = 1 << max(0, (n - 1).bit_length())
        if m > N:
            raise ValueError(f"m must be <= {N} (n={n} padded to a power of two), got m={m}")
        seed = check_seed(seed)
        super().__init__(m, n, seed)
        rows = _sample_rows(m, N, seed)
        rows.setflags(write=False)
        self._set(_col0=0, _N=N, _rows=rows, _scale=1.0 / math.sqrt(m))

    def _slice(self, a, b):
        new = object.__new__(SRHT)
        SketchOperator.__init__(new, self._m, b - a, self._seed)
        new._set(_col0=self._col0 + a, _N=self._N, _rows=self._rows, _scale=self._scale)
        return new

    @property
    def rows(self):
        """The m sampled rows of the N x N Hadamard matrix (sorted, read-only)."""
        return self._rows

    def _signs(self, xp, dtype):
        _, s = _kernels.call("hash_values", xp, self._col0, self._n, 1, 1, self._seed, STREAM_SRHT_SIGNS)
        return s[:, 0].astype(dtype)

    def _block_coefficients(self, g0, k):
        """Row positions inside the block and ±scale from the block's high bits."""
        low = self._rows & ((1 << k) - 1)
        coef = self._scale * (1 - 2 * _kernels.parity((self._rows >> k) & (g0 >> k)))
        return low, coef

    def _blocks(self, row_bytes, xp):
        """Aligned dyadic blocks of the column range; on the CPU, of at most
        ``max(_CPU_BLOCK_BYTES / row_bytes, 4m)`` rows (see Notes)."""
        kmax = None
        if xp is np:
            kmax = max((4 * self._m - 1).bit_length(), (max(1, _CPU_BLOCK_BYTES // max(1, row_bytes))).bit_length() - 1)
        return _dyadic_blocks(self._col0, self._col0 + self._n, kmax)

    def _apply_dense(self, A, xp):
        dtype = A.dtype
        out = _zeros(xp, (self._m,) + A.shape[1:], dtype, f"sketch output {(self._m,) + A.shape[1:]}")
        signs = self._signs(xp, dtype).reshape((-1,) + (1,) * (A.ndim - 1))
        self._by_column_tiles(A, out, xp, lambda A, out: self._add_blocks(A, signs, out, xp))
        return out

    def _apply_adjoint(self, Y, xp):
        dtype = Y.dtype
        out = _zeros(xp, (self._n,) + Y.shape[1:], dtype, f"adjoint output ({self._n} rows)")
        signs = self._signs(xp, dtype).reshape((-1,) + (1,) * (Y.ndim - 1))
        self._by_column_tiles(Y, out, xp, lambda Y, out: self._adjoint_blocks(Y, signs, out, xp))
        return out

    def _by_column_tiles(self, A, out, xp, run):
        """``run(A, out)``, or on the CPU ``run(A[:, c0:c1], out[:, c0:c1])`` per column
        tile where A's row blocks would not fit the CPU budget: a wide A (the right
        sketch ``B @ S.T`` is ``(S @ B.T).T``) or one not in C order (whose block copy
        NumPy does element by element across columns).  A tile's blocks are
        copied, transformed and gathered in cache; threads own tiles (each writes
        its own columns of out).  Measured against whole-width blocks (2-core box,
        alternating, one run): ``B @ S.T`` for 200000 x 2000 -> 64 fp64
        0.26-0.30x the time, the same on a C-order ``B.T`` 0.62-0.67x, F-order
        2^20 x 64 -> 32 0.62x, the adjoint of a 64 x 200000 Y 0.65-0.80x."""
        tiles = None
        if xp is np and A.ndim == 2 and A.shape[1] > 1:
            rows = 1 << self._blocks(A[:1].nbytes, np)[0][1]  # the largest block's rows
            if rows * A[:1].nbytes > 2 * _CPU_BLOCK_BYTES or not A.flags.c_contiguous:
                width = max(1, min(A.shape[1], _CPU_TILE_BYTES // (rows * A.itemsize)))
                tiles = [(c, min(c + width, A.shape[1])) for c in range(0, A.shape[1], width)]
        if tiles is None or len(tiles) == 1 and A.flags.c_contiguous:
            run(A, out)
            return
        parts = [tiles[t::_CPU_THREADS] for t in range(min(_CPU_THREADS, len(tiles)))]

        def tiles_of(part):
            for c0, c1 in part:
                run(A[:, c0:c1], out[:, c0:c1])

        with all_blas_serial, ThreadPoolExecutor(len(parts)) as ex:
            list(ex.map(tiles_of, parts))

    def _add_blocks(self, A, signs, out, xp):
        """``out += S @ A``, one aligned dyadic block of rows at a time."""
        dtype = A.dtype
        for g0, k in self._blocks(A[:1].size * A.itemsize, xp):
            a, b = g0 - self._col0, g0 - self._col0 + (1 << k)
            check_memory((b - a) * A[:1].size * A.itemsize, f"SRHT work buffer ({b - a} rows)", xp)
            # A fresh C-order buffer (the kernels need one); the caller's A is untouched.
            X = xp.empty((b - a,) + A.shape[1:], dtype=dtype)
            xp.multiply(A[a:b], signs[a:b], out=X)
            low, coef = self._block_coefficients(g0, k)
            # (H X)[low]: X is the kernel's scratch
            out += _kernels.call("fwht_rows", xp, X, xp.asarray(low)) * xp.asarray(coef, dtype=dtype).reshape(
                (-1,) + (1,) * (A.ndim - 1))

    def _adjoint_blocks(self, Y, signs, out, xp):
        """``out = Sᵀ Y`` (out zeroed), one aligned dyadic block of rows of out at a time."""
        dtype = Y.dtype
        for g0, k in self._blocks(Y[:1].size * Y.itemsize, xp):
            a, b = g0 - self._col0, g0 - self._col0 + (1 << k)
            low, coef = self._block_coefficients(g0, k)
            check_memory((b - a) * Y[:1].size * Y.itemsize, f"SRHT work buffer ({b - a} rows)", xp)
            V = Y * xp.asarray(coef, dtype=dtype).reshape((-1,) + (1,) * (Y.ndim - 1))
            out[a:b] = _kernels.call("fwht_rows_adjoint", xp, V, xp.asarray(low), b - a) * signs[a:b]

    def _dense(self):
        j = np.arange(self._col0, self._col0 + self._n, dtype=np.uint64)
        H = 1 - 2 * _kernels.parity(self._rows.astype(np.uint64)[:, None] & j[None, :])
        return H * (self._signs(np, np.float64)[None, :] * self._scale)
