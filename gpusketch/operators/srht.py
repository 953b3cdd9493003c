"""Subsampled randomized Hadamard transform (SRHT)."""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from .._backend import check_memory, check_positive_int, check_seed
from .._random import STREAM_SRHT_ROWS, STREAM_SRHT_SIGNS, uniform_u64
from ._base import SketchOperator, _zeros

__all__ = ["SRHT"]


def _parity(x):
    """Parity of the popcount of each uint64 in ``x``."""
    x = np.asarray(x, dtype=np.uint64).copy()
    for s in (32, 16, 8, 4, 2, 1):
        x ^= x >> np.uint64(s)
    return (x & np.uint64(1)).astype(np.int64)


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
    quarter of A's rows (1.6–3× faster at 2^20 × 64, fp64).  Sampled rows are
    chosen on the host (Floyd's algorithm with Philox draws) and sorted.

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
        n = check_positive_int(n, "n")
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
        coef = self._scale * (1 - 2 * _parity((self._rows >> k) & (g0 >> k)))
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
        for g0, k in self._blocks(A[:1].size * A.itemsize, xp):
            a, b = g0 - self._col0, g0 - self._col0 + (1 << k)
            check_memory((b - a) * A[:1].size * A.itemsize, f"SRHT work buffer ({b - a} rows)", xp)
            # A fresh C-order buffer (the kernels need one); the caller's A is untouched.
            X = xp.empty((b - a,) + A.shape[1:], dtype=dtype)
            xp.multiply(A[a:b], signs[a:b], out=X)
            _kernels.call("fwht", xp, X)
            low, coef = self._block_coefficients(g0, k)
            out += X[xp.asarray(low)] * xp.asarray(coef, dtype=dtype).reshape((-1,) + (1,) * (A.ndim - 1))
        return out

    def _apply_adjoint(self, Y, xp):
        dtype = Y.dtype
        out = _zeros(xp, (self._n,) + Y.shape[1:], dtype, f"adjoint output ({self._n} rows)")
        signs = self._signs(xp, dtype).reshape((-1,) + (1,) * (Y.ndim - 1))
        for g0, k in self._blocks(Y[:1].size * Y.itemsize, xp):
            a, b = g0 - self._col0, g0 - self._col0 + (1 << k)
            low, coef = self._block_coefficients(g0, k)
            Z = _zeros(xp, (b - a,) + Y.shape[1:], dtype, f"SRHT work buffer ({b - a} rows)")
            V = Y * xp.asarray(coef, dtype=dtype).reshape((-1,) + (1,) * (Y.ndim - 1))
            _kernels.call("scatter_add_rows", xp, Z, xp.asarray(low), V)
            _kernels.call("fwht", xp, Z)
            out[a:b] = Z * signs[a:b]
        return out

    def _dense(self):
        j = np.arange(self._col0, self._col0 + self._n, dtype=np.uint64)
        H = 1 - 2 * _parity(self._rows.astype(np.uint64)[:, None] & j[None, :])
        return H * (self._signs(np, np.float64)[None, :] * self._scale)
