"""Multi-level CountSketch: CountSketches of nested uniform subsamples, stacked.

The oblivious sketch for M-estimators of Clarkson and Woodruff (SODA 2015),
which Clarkson, Wang and Woodruff (ICML 2019, §2.4) show also works for
Tukey regression.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from .._backend import check_memory, check_positive_int, check_real_in, check_seed, sparse_module, to_dense
from ._base import COLUMNS_LIMIT, MAX_SKETCH_COLUMNS, MAX_SKETCH_ROWS, ROWS_LIMIT, SketchOperator, _zeros

__all__ = ["MultiLevelCountSketch"]


class MultiLevelCountSketch(SketchOperator):
    """``levels`` CountSketches of ``r`` rows each, level t applied to a ``β^{-t}`` uniform subsample.

    Column j of S draws one uniform ``u_j``.  It survives level t when
    ``u_j < β^{-t}``, so level 0 keeps every column and the levels are nested.
    In every level it survives, column j has one ``±1`` in a hashed row of
    that level's block ``[t·r, (t+1)·r)``.  Rows of level t carry the weight
    ``β^t`` (``weights``) in the sketched problem ``min Σ_i w_i M((SAx − Sb)_i)``.

    Parameters
    ----------
    r : int
        Rows (buckets) per level.
    n : int
        Input dimension.
    levels : int
        Number of levels (``H + 1``); S has ``levels · r`` rows.
    branching : float > 1, default 4
        Subsampling ratio β between consecutive levels.
    seed : int, optional
        64-bit seed; ``None`` draws one from OS entropy.

    Notes
    -----
    Hashes and uniforms are Philox functions of the global column index, so
    S is one fixed linear map: chunked, streamed or Dask-distributed
    applications add up to ``S @ A``, the CPU and GPU agree, and ``S @ A``
    reads A once.  On the GPU that one read is a single scatter-add kernel
    (``hash_sketch_levels``): each row is hashed once per level it survives,
    and a warp stops at the first level none of its rows reaches.  This is
    the paper's one-pass sketch.  (A stack of ``Composed([CountSketch,
    Sampling])`` would gather each subsample and read about ``n β/(β−1)``
    rows.)

    References
    ----------
    Clarkson, K. L. and Woodruff, D. P. "Sketching for M-estimators: a unified
    approach to robust regression", SODA 2015.
    Clarkson, K. L., Wang, R. and Woodruff, D. P. "Dimensionality reduction
    for Tukey regression", ICML 2019.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import MultiLevelCountSketch
    >>> S = MultiLevelCountSketch(8, 1000, 4, seed=1)
    >>> S.shape
    (32, 1000)
    >>> D = S.todense()
    >>> [int((D[8 * t : 8 * (t + 1)] != 0).sum()) for t in range(4)]   # columns kept per level
    [1000, 271, 64, 15]
    >>> S.weights().tolist()[::8]
    [1.0, 4.0, 16.0, 64.0]
    """

    def __init__(self, r, n, levels, *, branching=4.0, seed=None):
        r = check_positive_int(r, "r")
        n = check_positive_int(n, "n", maximum=MAX_SKETCH_COLUMNS, why=COLUMNS_LIMIT)
        levels = check_positive_int(levels, "levels")
        branching = check_real_in(branching, "branching", 1, math.inf, closed="()")
        check_positive_int(r * levels, "r * levels", maximum=MAX_SKETCH_ROWS, why=ROWS_LIMIT)
        super().__init__(r * levels, n, check_seed(seed))
        self._set(_r=r, _levels=levels, _beta=branching, _col0=0,
                  _thresh=np.power(branching, -np.arange(levels, dtype=np.float64)))

    def _describe(self):
        return (f"MultiLevelCountSketch(r={self._r}, n={self._n}, levels={self._levels}, "
                f"branching={self._beta}, seed={self._seed})")

    @property
    def levels(self):
        """Number of levels."""
        return self._levels

    @property
    def branching(self):
        """Subsampling ratio β between levels."""
        return self._beta

    def weights(self, xp=np):
        """Row weights ``β^t`` for the rows of level t, an ``(levels · r,)`` array on ``xp``."""
        return xp.asarray(np.repeat(self._beta ** np.arange(self._levels, dtype=np.float64), self._r))

    def hashes(self, xp=np):
        """``(buckets, signs)``, each ``(n, levels)``: row and sign of column j in level t (sign 0: not kept)."""
        return _kernels.level_values(xp, self._col0, self._n, self._r, self._thresh, self._seed)

    def _apply_dense(self, A, xp):
        return self._apply_dense_each([A], xp)[0]

    def _apply_dense_each(self, As, xp):
        outs = [_zeros(xp, (self._m,) + A.shape[1:], A.dtype, f"sketch output {(self._m,) + A.shape[1:]}")
                for A in As]
        return _kernels.call("hash_sketch_levels", xp, As, outs, self._col0, self._r, self._thresh, self._seed)

    def _transpose_matrix(self, xp, dtype):
        """``Sᵀ`` as a CSR matrix (n × m): one entry per column of S and level it survives."""
        buckets, signs = self.hashes(xp)
        j, t = xp.nonzero(signs)
        return sparse_module(xp).coo_matrix(
            (signs[j, t].astype(dtype), (j.astype(xp.int32), buckets[j, t].astype(xp.int32))),
            shape=(self._n, self._m),
        ).tocsr()

    def _apply_sparse(self, A, xp):
        # A sparse product, O(nnz(A)) per level kept, instead of the default's densified
        # row blocks of A (n · d work): 10⁶ x 200 CSR at 1 %, 6 levels, 0.56-0.68x the time.
        # Both operands CSR: cupyx's sparse-sparse product (cuSPARSE SpGEMM) takes CSR.
        return to_dense(self._transpose_matrix(xp, A.dtype).T.tocsr() @ A.tocsr())

    def _apply_adjoint(self, Y, xp):
        check_memory(self._n * (Y.size // Y.shape[0]) * Y.itemsize, f"adjoint output ({self._n} rows)", xp)
        Y2 = Y.reshape(self._m, -1)
        if xp is not np or self._n * self._levels <= _kernels._ADJOINT_WHOLE_HASHES:
            out = self._transpose_matrix(xp, Y.dtype) @ Y2
        else:
            # On the host a block of columns at a time, as the hashing sketches' adjoint: the
            # hashes and Sᵀ of all n had peaked at 3.4x the result (2^21 columns, 5 levels).
            out = np.empty((self._n, Y2.shape[1]), dtype=Y.dtype)
            for a, b in _kernels._row_blocks(self._n, _kernels._CPU_BLOCK):
                out[a:b] = self._slice(a, b)._transpose_matrix(np, Y.dtype) @ Y2
        return out.reshape((self._n,) + Y.shape[1:])

    def _slice(self, a, b):
        new = object.__new__(type(self))
        SketchOperator.__init__(new, self._m, b - a, self._seed)
        new._set(_r=self._r, _levels=self._levels, _beta=self._beta, _col0=self._col0 + a, _thresh=self._thresh)
        return new

    def _dense(self):
        buckets, signs = self.hashes(np)
        D = np.zeros((self._m, self._n))
        j, t = np.nonzero(signs)
        D[buckets[j, t], j] = signs[j, t]
        return D
