"""Hashing sketches: CountSketch and SparseSign (OSNAP).

Column j of S has ``nnz`` nonzeros ``±scale`` in distinct rows; nonzero t
lives in row block ``[t*m//nnz, (t+1)*m//nnz)``, so the rows are distinct by
construction.  Buckets and signs come from Philox hash words (see
``gpusketch._random``), recomputed wherever they are needed: in the CUDA
kernels, in the CPU twins and in ``todense()``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from .._backend import check_memory, check_positive_int, check_seed
from .._random import STREAM_COUNTSKETCH, STREAM_SPARSESIGN
from ._base import COLUMNS_LIMIT, MAX_SKETCH_COLUMNS, MAX_SKETCH_ROWS, ROWS_LIMIT, SketchOperator, _zeros

__all__ = ["CountSketch", "SparseSign"]


class _HashingSketch(SketchOperator):
    _stream = 0

    def __init__(self, m, n, nnz, seed, col0=0, deterministic=False):
        super().__init__(m, n, seed)
        if not isinstance(deterministic, bool):
            raise TypeError(f"deterministic must be True or False, got {deterministic!r}")
        self._set(_nnz=nnz, _col0=col0, _scale=1.0 / math.sqrt(nnz), _deterministic=deterministic)

    def _copy_with(self, n, col0):
        new = object.__new__(type(self))
        _HashingSketch.__init__(new, self._m, n, self._nnz, self._seed, col0, self._deterministic)
        return new

    @property
    def deterministic(self):
        """Whether ``S @ A`` is bit-reproducible run to run on the GPU (atomic-free path)."""
        return self._deterministic

    def _describe(self):
        extra = ", deterministic=True" if self._deterministic else ""
        nnz = f", nnz={self._nnz}" if type(self) is SparseSign else ""
        return f"{type(self).__name__}(m={self._m}, n={self._n}{nnz}, seed={self._seed}{extra})"

    def hashes(self, xp=np):
        """``(buckets, signs)``, each of shape ``(n, nnz)``, computed on ``xp``.

        ``buckets[j, t]`` is the row of nonzero t of column j, ``signs[j, t]`` its
        sign (int8).  The CPU and GPU versions are bit-identical.
        """
        return _kernels.call("hash_values", xp, self._col0, self._n, self._m, self._nnz, self._seed, self._stream)

    def _kernel_args(self):
        return self._col0, self._m, self._nnz, self._scale, self._seed, self._stream

    def _apply_dense(self, A, xp):
        return self._apply_dense_each([A], xp)[0]

    def _apply_dense_each(self, As, xp):
        outs = [_zeros(xp, (self._m,) + A.shape[1:], A.dtype, f"sketch output {(self._m,) + A.shape[1:]}")
                for A in As]
        return _kernels.call("hash_sketch_dense", xp, As, outs, *self._kernel_args(),
                             deterministic=self._deterministic)

    def _apply_sparse(self, A, xp):
        out = _zeros(xp, (self._m, A.shape[1]), A.dtype, f"sketch output ({self._m}, {A.shape[1]})")
        return _kernels.call("hash_sketch_csr", xp, A, out, *self._kernel_args(),
                             deterministic=self._deterministic)

    def _apply_adjoint(self, Y, xp):
        nbytes = self._n * (Y.size // Y.shape[0]) * Y.itemsize
        check_memory(nbytes, f"adjoint output ({self._n} rows)", xp)
        return _kernels.call("hash_adjoint", xp, Y, self._n, self._col0, self._nnz, self._scale, self._seed, self._stream)

    def _slice(self, a, b):
        return self._copy_with(b - a, self._col0 + a)

    def _dense(self):
        b, s = _kernels.call("hash_values", np, self._col0, self._n, self._m, self._nnz, self._seed, self._stream)
        D = np.zeros((self._m, self._n))
        cols = np.repeat(np.arange(self._n), self._nnz)
        D[b.ravel(), cols] = s.ravel() * self._scale
        return D


class CountSketch(_HashingSketch):
    """CountSketch (Clarkson–Woodruff): one ±1 per column in a hashed row.

    ``S[h(j), j] = σ(j)`` with ``h(j)`` uniform on ``0..m-1`` and ``σ(j) = ±1``,
    both from Philox.  ``S @ A`` costs one pass over A (``O(nnz(A))``); S is a
    subspace embedding for d-dimensional subspaces with ``m = O(d²/ε²)`` rows.

    Parameters
    ----------
    m : int
        Sketch size (rows of S).
    n : int
        Input dimension (columns of S, rows of A).
    seed : int, optional
        64-bit seed; ``None`` draws one from OS entropy (recorded in ``.seed``).
    deterministic : bool, default False
        Bit-reproducible ``S @ A`` on the GPU: always take the atomic-free
        bucket-sorted kernel (a stable sort of the hashed entries, then one
        writer per output element in sorted order; sparse A goes through it
        in densified row chunks).  Without it, narrow dense and sparse inputs
        use float atomics, reproducible to round-off only.  The CPU twins are
        deterministic either way.

    Notes
    -----
    On CuPy inputs ``S @ A`` is a CUDA scatter-add kernel with in-kernel
    hashing; on NumPy inputs it is a SciPy CSC product built block by block
    from the same hashes.  Float atomics make GPU results reproducible to
    round-off, not bit-for-bit (see ``deterministic``).  NaN/Inf in A
    propagate to the buckets they hash to.

    References
    ----------
    Clarkson, K. L. and Woodruff, D. P. "Low-rank approximation and regression
    in input sparsity time", J. ACM 63(6), 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import CountSketch
    >>> A = np.arange(12.0).reshape(6, 2)
    >>> S = CountSketch(3, 6, seed=7)
    >>> np.allclose(S @ A, S.todense() @ A)
    True
    """

    _stream = STREAM_COUNTSKETCH

    def __init__(self, m, n, *, seed=None, deterministic=False):
        m = check_positive_int(m, "m", maximum=MAX_SKETCH_ROWS, why=ROWS_LIMIT)
        n = check_positive_int(n, "n", maximum=MAX_SKETCH_COLUMNS, why=COLUMNS_LIMIT)
        super().__init__(m, n, 1, check_seed(seed), deterministic=deterministic)


class SparseSign(_HashingSketch):
    """Sparse sign sketch (OSNAP): ``nnz`` entries ``±1/√nnz`` per column.

    Nonzero t of column j is in a uniformly hashed row of block
    ``[t·m//nnz, (t+1)·m//nnz)``, so every column has exactly ``nnz`` distinct
    rows.  With ``m = O(d log d / ε²)`` rows and ``nnz = O(log d / ε)`` it is
    a subspace embedding (Nelson–Nguyen's OSNAP; the block construction is
    Kane–Nelson's).

    Parameters
    ----------
    m : int
        Sketch size; must satisfy ``nnz <= m``.
    n : int
        Input dimension.
    nnz : int, default 8
        Nonzeros per column.
    seed : int, optional
        64-bit seed; ``None`` draws one from OS entropy.
    deterministic : bool, default False
        Bit-reproducible ``S @ A`` on the GPU (see ``CountSketch``).

    References
    ----------
    Nelson, J. and Nguyen, H. L. "OSNAP: Faster numerical linear algebra
    algorithms via sparser subspace embeddings", FOCS 2013.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import SparseSign
    >>> S = SparseSign(16, 100, nnz=4, seed=1)
    >>> int((S.todense() != 0).sum(axis=0).min())
    4
    """

    _stream = STREAM_SPARSESIGN

    def __init__(self, m, n, *, nnz=8, seed=None, deterministic=False):
        m = check_positive_int(m, "m", maximum=MAX_SKETCH_ROWS, why=ROWS_LIMIT)
        n = check_positive_int(n, "n", maximum=MAX_SKETCH_COLUMNS, why=COLUMNS_LIMIT)
        nnz = check_positive_int(nnz, "nnz")
        if nnz > m:
            raise ValueError(f"nnz must be <= m, got nnz={nnz} > m={m}")
        super().__init__(m, n, nnz, check_seed(seed), deterministic=deterministic)

    @property
    def nnz(self):
        """Nonzeros per column."""
        return self._nnz

