"""Dense Gaussian sketch with entries N(0, 1/m), generated from Philox."""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from .._backend import check_positive_int, check_seed
from .._random import STREAM_GAUSSIAN
from ._base import COLUMNS_LIMIT, MAX_SKETCH_COLUMNS, MAX_SKETCH_ROWS, ROWS_LIMIT, SketchOperator, _zeros

__all__ = ["Gaussian"]

class Gaussian(SketchOperator):
    """Gaussian sketch: i.i.d. entries ``N(0, 1/m)``.

    Entry ``(i, j)`` is a Box–Muller normal from the Philox counter built from
    ``j`` and ``i // 4`` (layout in ``gpusketch._random``), so CPU and GPU give
    the same matrix up to the last bits of ``log``/``cos`` (the CPU takes cos and
    sin from tables, the GPU from CUDA's math library: within about 3e-15).  S is never stored:
    ``S @ A`` generates column blocks of S and multiplies them with BLAS
    (cuBLAS on the GPU), ``O(m · n · d)`` work in all; a sparse A takes
    sparse–dense products instead, ``O(m · nnz(A))``.  On a CPU generating the
    ``m · n`` entries (Philox plus Box–Muller in NumPy, about 15 ns each) costs
    more than the product; prefer ``SparseSign`` or ``SRHT`` there.

    Parameters
    ----------
    m, n : int
        Sketch size and input dimension.
    seed : int, optional
        64-bit seed; ``None`` draws one from OS entropy.

    References
    ----------
    Johnson, W. and Lindenstrauss, J. "Extensions of Lipschitz mappings into a
    Hilbert space", 1984; Sarlós, T. "Improved approximation algorithms for
    large matrices via random projections", FOCS 2006.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import Gaussian
    >>> S = Gaussian(200, 5, seed=0)
    >>> G = S.todense()
    >>> bool(abs(G.var() * 200 - 1) < 0.1)
    True
    """

    def __init__(self, m, n, *, seed=None, _col0=0):
        m = check_positive_int(m, "m", maximum=MAX_SKETCH_ROWS, why=ROWS_LIMIT)
        n = check_positive_int(n, "n", maximum=MAX_SKETCH_COLUMNS, why=COLUMNS_LIMIT)
        super().__init__(m, n, check_seed(seed))
        self._set(_col0=_col0, _scale=1.0 / math.sqrt(m))

    def _apply_dense(self, A, xp):
        return self._apply_dense_each([A], xp)[0]

    def _apply_dense_each(self, As, xp):
        outs = [_zeros(xp, (self._m,) + A.shape[1:], A.dtype, f"sketch output {(self._m,) + A.shape[1:]}")
                for A in As]
        return _kernels.call("gaussian_sketch", xp, As, outs, self._col0, self._m, self._scale, self._seed,
                             STREAM_GAUSSIAN)

    def _apply_sparse(self, A, xp):
        out = _zeros(xp, (self._m, A.shape[1]), A.dtype, f"sketch output ({self._m} x {A.shape[1]})")
        return _kernels.call("gaussian_sketch_sparse", xp, A.tocsr(), out, self._col0, self._m, self._scale,
                             self._seed, STREAM_GAUSSIAN)

    def _apply_adjoint(self, Y, xp):
        out = _zeros(xp, (self._n,) + Y.shape[1:], Y.dtype, f"adjoint output ({self._n} rows)")
        return _kernels.call("gaussian_adjoint", xp, Y, out, self._col0, self._scale, self._seed, STREAM_GAUSSIAN)

    def _slice(self, a, b):
        return Gaussian(self._m, b - a, seed=self._seed, _col0=self._col0 + a)

    def _dense(self):
        return _kernels.call(
            "gaussian_block", np, self._m, self._col0, self._n, self._scale, self._seed, STREAM_GAUSSIAN, np.float64
        )
