"""Row sampling with rescaling: ``(S @ A)[i] = scale[i] · A[indices[i]]``."""

from __future__ import annotations

import numbers

import numpy as np

from .. import _kernels
from .._backend import array_namespace, check_memory, check_positive_int, to_host
from ._base import COLUMNS_LIMIT, MAX_SKETCH_COLUMNS, SketchOperator, _zeros

__all__ = ["Sampling"]


class Sampling(SketchOperator):
    """Row-sampling operator: row i of S is ``scale[i] · e_{indices[i]}ᵀ``.

    The building block of leverage-score and Lewis-weight sampling: with
    ``indices`` drawn i.i.d. from probabilities ``p`` and
    ``scale = 1/sqrt(m·p[indices])``, ``E[SᵀS] = I``.

    Parameters
    ----------
    indices : array_like of int, shape (m,)
        Sampled row indices in ``[0, n)``; repeats are allowed.
    n : int
        Input dimension (rows of the matrices it is applied to).
    scale : array_like of float, shape (m,), optional
        Row scales; all ones by default.

    Notes
    -----
    The operator is deterministic: ``seed`` is ``None``.  Indices and scales
    are kept on the host (they are m numbers) and copied to the device of the
    input when applied.  ``S[:, a:b]`` keeps all m rows; rows whose index
    falls outside ``[a, b)`` become zero rows, so chunked sums add up to
    ``S @ A``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import Sampling
    >>> A = np.arange(8.0).reshape(4, 2)
    >>> Sampling([3, 0], 4, scale=[2.0, 1.0]) @ A
    array([[12., 14.],
           [ 0.,  1.]])
    """

    def __init__(self, indices, n, *, scale=None, _trusted=False):
        n = check_positive_int(n, "n", maximum=MAX_SKETCH_COLUMNS, why=COLUMNS_LIMIT)
        if not _trusted:
            array_namespace(indices, scale)  # refuses mixed host/device inputs
            idx = to_host(indices)
            if idx.ndim != 1 or idx.size == 0:
                raise ValueError(f"indices must be a non-empty 1-D array, got shape {idx.shape}")
            if idx.dtype.kind not in "iu":
                raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
            idx = idx.astype(np.int64)
            if idx.min() < 0 or idx.max() >= n:
                raise ValueError(f"indices must lie in [0, n={n}), got range [{idx.min()}, {idx.max()}]")
            if scale is None:
                sc = np.ones(idx.size)
            else:
                if isinstance(scale, numbers.Number):
                    raise TypeError("scale must be an array of length m (one per sampled row), not a scalar")
                sc = to_host(scale)
                if sc.dtype.kind not in "biuf":
                    raise TypeError(f"scale must be real numbers, got dtype {sc.dtype}")
                sc = sc.astype(np.float64)
                if sc.shape != idx.shape:
                    raise ValueError(f"scale must have shape {idx.shape} like indices, got {sc.shape}")
                if not np.all(np.isfinite(sc)):
                    raise ValueError("scale must be finite")
            idx.setflags(write=False)
            sc.setflags(write=False)
        else:
            idx, sc = indices, scale
        super().__init__(idx.size, n, None)
        self._set(_idx=idx, _scale=sc)

    @property
    def indices(self):
        """Sampled row indices (read-only; -1 marks rows outside a column slice)."""
        return self._idx

    @property
    def scale(self):
        """Row scales (read-only)."""
        return self._scale

    def _describe(self):
        return f"Sampling(m={self._m}, n={self._n})"

    def _valid(self, xp):
        keep = np.flatnonzero(self._idx >= 0)
        return xp.asarray(keep), xp.asarray(self._idx[keep]), self._scale[keep]

    def _apply_dense(self, A, xp):
        if self._idx.size and self._idx.min() >= 0:
            # Every row sampled (no column slice cut one out): one gather into a fresh array
            # and the scales in place, not zeros, a gathered copy, its scaled copy and a
            # scatter (20000 x 2000: 0.07 s against 0.24 s on the 2-core CPU).
            check_memory(self._m * int(np.prod(A.shape[1:], dtype=np.int64)) * A.dtype.itemsize,
                         f"sketch output {(self._m,) + A.shape[1:]}", xp)
            out = _kernels._take_rows(A, xp.asarray(self._idx), xp)  # (a Fortran-order A not copied whole)
            if not bool((self._scale == 1.0).all()):
                out *= xp.asarray(self._scale, dtype=A.dtype).reshape((-1,) + (1,) * (A.ndim - 1))
            return out
        out = _zeros(xp, (self._m,) + A.shape[1:], A.dtype, f"sketch output {(self._m,) + A.shape[1:]}")
        rows, idx, sc = self._valid(xp)
        sc = xp.asarray(sc, dtype=A.dtype).reshape((-1,) + (1,) * (A.ndim - 1))
        out[rows] = A[idx] * sc
        return out

    def _apply_sparse(self, A, xp):
        out = _zeros(xp, (self._m, A.shape[1]), A.dtype, f"sketch output ({self._m}, {A.shape[1]})")
        rows, idx, sc = self._valid(xp)
        out[rows] = A[idx].toarray() * xp.asarray(sc, dtype=A.dtype)[:, None]
        return out

    def _apply_adjoint(self, Y, xp):
        out = _zeros(xp, (self._n,) + Y.shape[1:], Y.dtype, f"adjoint output ({self._n} rows)")
        rows, idx, sc = self._valid(xp)
        if idx.size == 0:  # a column slice that no sampled row falls in
            return out
        V = Y[rows] * xp.asarray(sc, dtype=Y.dtype).reshape((-1,) + (1,) * (Y.ndim - 1))
        return _kernels.call("scatter_add_rows", xp, out, idx, V)

    def _slice(self, a, b):
        idx = self._idx - a
        idx[(self._idx < a) | (self._idx >= b)] = -1
        idx.setflags(write=False)
        return Sampling(idx, b - a, scale=self._scale, _trusted=True)

    def _dense(self):
        D = np.zeros((self._m, self._n))
        keep = np.flatnonzero(self._idx >= 0)
        np.add.at(D, (keep, self._idx[keep]), self._scale[keep])
        return D
