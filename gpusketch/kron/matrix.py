"""``KroneckerMatrix``: the implicit product ``A_1 ⊗ ... ⊗ A_q``."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _kernels
from .._backend import array_namespace, as_operand, check_finite, check_memory, is_sparse, to_dense
from ..operators._base import LinearOperatorMethods

__all__ = ["KroneckerMatrix", "as_kronecker"]


def _mode_apply(mats, X, xp):
    """``(M_1 ⊗ ... ⊗ M_q) @ X`` for dense ``X`` of shape ``(∏ cols, k)``.

    X is reshaped to a ``c_1 × ... × c_q × k`` tensor and ``M_t`` is applied
    along mode t (numpy.kron / C order), the factor-wise reshape trick: the
    cost is ``Σ_t (∏_{s<t} r_s)(∏_{s>=t} c_s) r_t k`` flops, never the full product.
    """
    k = X.shape[1]
    T = X.reshape(tuple(M.shape[1] for M in mats) + (k,))
    for t, M in enumerate(mats):
        Tt = xp.moveaxis(T, t, 0)
        rest = Tt.shape[1:]
        Y = M @ Tt.reshape(Tt.shape[0], math.prod(rest))  # sizes, not -1: k may be 0
        T = xp.moveaxis(to_dense(Y).reshape((M.shape[0],) + rest), 0, t)
    return T.reshape(math.prod(M.shape[0] for M in mats), k)


class KroneckerMatrix(LinearOperatorMethods):
    """Implicit Kronecker product ``A = A_1 ⊗ ... ⊗ A_q``, never formed.

    Rows and columns follow ``numpy.kron`` order: row ``i`` of A has the
    multi-index ``(i_1, ..., i_q) = unravel_index(i, (n_1, ..., n_q))`` and
    ``A[i, j] = ∏_t A_t[i_t, j_t]``.

    Parameters
    ----------
    factors : list or tuple of 2-D arrays or sparse matrices
        ``A_t`` of shape ``(n_t, d_t)``; NumPy or CuPy arrays, or SciPy or
        cupyx sparse matrices (kept sparse, in CSR), all on one device.
        Integer and boolean factors are upcast to float64; if any factor is
        float64 all are, else all are float32.

    Attributes
    ----------
    factors : tuple of arrays or CSR matrices
    shape : ``(∏ n_t, ∏ d_t)``
    dtype, ndim

    Notes
    -----
    ``A @ x`` reshapes x to a ``d_1 × ... × d_q`` tensor and multiplies each
    mode by its factor; ``A.T`` is ``KroneckerMatrix([A_t.T])``.  ``matvec``,
    ``rmatvec``, ``matmat`` and ``rmatmat`` make A a SciPy LinearOperator
    (``aslinearoperator(A)``, or A passed to ``lsqr`` directly).  ``rows(idx)``
    gathers selected rows (a CUDA kernel on CuPy factors, a NumPy twin
    otherwise).  Sparse factors cost ``O(nnz(A_t))`` per mode product; the
    products, ``rows`` and ``todense`` return dense arrays.  ``S @ A`` with
    ``S = Kronecker([S_1, ..., S_q])`` whose factor shapes match returns
    ``KroneckerMatrix([S_1 @ A_1, ..., S_q @ A_q])``, the sketch formed only
    at sketch size.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch.kron import KroneckerMatrix
    >>> A1, A2 = np.arange(6.0).reshape(3, 2), np.arange(4.0).reshape(2, 2) + 1
    >>> A = KroneckerMatrix([A1, A2])
    >>> A.shape
    (6, 4)
    >>> x = np.ones(4)
    >>> np.allclose(A @ x, np.kron(A1, A2) @ x), np.allclose(A.rows([5, 0]), np.kron(A1, A2)[[5, 0]])
    (True, True)
    """

    __array_ufunc__ = None
    __array_priority__ = 1000
    ndim = 2

    def __init__(self, factors):
        if isinstance(factors, KroneckerMatrix):
            factors = factors.factors
        if not isinstance(factors, (list, tuple)):
            raise TypeError(f"factors must be a list or tuple of 2-D arrays, got {type(factors).__name__}")
        if not 1 <= len(factors) <= 8:
            raise ValueError(f"factors must contain between 1 and 8 matrices, got {len(factors)}")
        mats = []
        for t, F in enumerate(factors):
            F, _ = as_operand(F, f"factors[{t}]", ndim=(2,))
            if 0 in F.shape:
                raise ValueError(f"factors[{t}] is empty (shape {tuple(F.shape)})")
            if is_sparse(F) and not F.has_canonical_format:
                F = F.copy()  # (the caller's matrix is left as it was)
                F.sum_duplicates()  # so that F.data holds each entry once: fro_norm2, the zero test
            mats.append(F)
        xp = array_namespace(*mats)
        dtype = np.result_type(*[F.dtype for F in mats])
        self._factors = tuple(F if F.dtype == dtype else F.astype(dtype) for F in mats)
        self._xp = xp
        self.dtype = np.dtype(dtype)

    # -- structure ----------------------------------------------------------
    @property
    def factors(self):
        return self._factors

    @property
    def xp(self):
        """The array module of the factors (numpy or cupy)."""
        return self._xp

    @property
    def row_dims(self):
        return tuple(F.shape[0] for F in self._factors)

    @property
    def col_dims(self):
        return tuple(F.shape[1] for F in self._factors)

    @property
    def shape(self):
        return (math.prod(self.row_dims), math.prod(self.col_dims))

    @property
    def T(self):
        """``A_1ᵀ ⊗ ... ⊗ A_qᵀ``."""
        return KroneckerMatrix([F.T for F in self._factors])

    def __reduce__(self):
        # Pickled as its factors (the array module is found again on loading), so that
        # a KroneckerMatrix travels to Dask or multiprocessing workers like the operators.
        return (KroneckerMatrix, (list(self._factors),))

    def __repr__(self):
        dims = " ⊗ ".join(f"{F.shape[0]}x{F.shape[1]}" for F in self._factors)
        return f"KroneckerMatrix({dims}, dtype={self.dtype})"

    # -- products -----------------------------------------------------------
    def __matmul__(self, x):
        if isinstance(x, numbers.Number):
            raise TypeError("KroneckerMatrix @ scalar is not defined; x must be a 1-D or 2-D array")
        x, xp = as_operand(x, "x")
        array_namespace(x, self._factors[0])  # refuses x and the factors on different devices
        if x.shape[0] != self.shape[1]:
            raise ValueError(f"x has {x.shape[0]} rows but the KroneckerMatrix has {self.shape[1]} columns")
        X = to_dense(x)
        Y = _mode_apply(self._factors, X.reshape(X.shape[0], math.prod(X.shape[1:])), xp)
        return Y.reshape((Y.shape[0],) + X.shape[1:])

    def __rmatmul__(self, y):
        """``y @ A = (Aᵀ @ yᵀ)ᵀ`` for arrays y."""
        if isinstance(y, numbers.Number):
            raise TypeError("scalar @ KroneckerMatrix is not defined")
        return (self.T @ y.T).T

    def _sketched_by(self, S):
        """``S @ A`` for a sketch operator S (called by ``SketchOperator.__matmul__``).

        ``(S_1 ⊗ ... ⊗ S_q)(A_1 ⊗ ... ⊗ A_q) = (S_1 A_1) ⊗ ... ⊗ (S_q A_q)``: the
        sketch is formed only at sketch size.  Other operators would need A
        explicitly and are refused.
        """
        from ..operators import Kronecker

        if (
            isinstance(S, Kronecker)
            and S._full()
            and len(S.factors) == len(self._factors)
            and all(Sf.shape[1] == F.shape[0] for Sf, F in zip(S.factors, self._factors))
        ):
            return KroneckerMatrix([Sf @ F for Sf, F in zip(S.factors, self._factors)])
        raise TypeError(
            f"{type(S).__name__} @ KroneckerMatrix would form A: use a Kronecker sketch whose factor "
            f"column counts are {self.row_dims}, or S @ A.todense() for small cases"
        )

    # -- rows and dense form -------------------------------------------------
    def rows(self, idx):
        """Rows ``idx`` of A as a dense ``(len(idx), ∏ d_t)`` array on the factors' device.

        Row index → multi-index → Kronecker product of the factor rows; a
        gather kernel on the GPU.  A sparse factor contributes only the rows
        that ``idx`` reaches, densified (``_gather_operands``).
        """
        xp = self._xp
        idx = xp.asarray(idx)
        if idx.ndim != 1:
            raise ValueError(f"idx must be 1-D, got shape {tuple(idx.shape)}")
        if idx.size == 0:  # [] arrives as float64
            return xp.empty((0, self.shape[1]), dtype=self.dtype)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"idx must hold integers, got dtype {idx.dtype}")
        N, D = self.shape
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= N):
            raise ValueError(f"idx must lie in [0, {N}), got values in [{int(idx.min())}, {int(idx.max())}]")
        check_memory(idx.size * D * self.dtype.itemsize, f"rows() output ({idx.size} x {D})", xp)
        return _kernels.call("kron_rows", xp, *_gather_operands(self._factors, idx.astype(xp.int64), xp))

    def todense(self):
        """``A`` as an explicit array (small cases only: refuses what does not fit in memory)."""
        N, D = self.shape
        xp = self._xp
        check_memory(N * D * self.dtype.itemsize, f"todense() of a {N} x {D} KroneckerMatrix", xp)
        out = to_dense(self._factors[0])
        for F in self._factors[1:]:
            out = xp.kron(out, to_dense(F))
        return out

    def fro_norm2(self):
        """``||A||_F² = ∏_t ||A_t||_F²`` (as a float)."""
        return math.prod(float((F.data * F.data).sum() if is_sparse(F) else (F * F).sum()) for F in self._factors)


def _gather_operands(factors, idx, xp):
    """``(factors, idx)`` for the ``kron_rows`` gather, with every sparse factor replaced by the
    distinct rows that ``idx`` reaches in it, densified, and idx renumbered to match.

    The kernels read dense factors; a sparse one is gathered in ``O(nnz)`` of
    those rows, at most ``len(idx) × d_t``, never the whole factor.
    """
    if not any(is_sparse(F) for F in factors):
        return factors, idx
    multi = xp.unravel_index(idx, tuple(F.shape[0] for F in factors))
    mats, sub = [], []
    for F, it in zip(factors, multi):
        if is_sparse(F):
            reached, it = xp.unique(it, return_inverse=True)
            F = F[reached].toarray()
        mats.append(F)
        sub.append(it.reshape(-1))
    return mats, xp.ravel_multi_index(tuple(sub), tuple(F.shape[0] for F in mats)).astype(xp.int64)


def as_kronecker(factors, name="factors", *, min_factors=2):
    """Validate the factor list of a Kronecker solver (dense or sparse factors, finite) and
    return a ``KroneckerMatrix``."""
    if isinstance(factors, KroneckerMatrix):
        K = factors
    else:
        if not isinstance(factors, (list, tuple)):
            raise TypeError(f"{name} must be a list of 2-D arrays or a KroneckerMatrix, got {type(factors).__name__}")
        K = KroneckerMatrix(list(factors))
    if len(K.factors) < min_factors:
        raise ValueError(f"{name} must hold at least {min_factors} matrices, got {len(K.factors)}")
    for t, F in enumerate(K.factors):
        check_finite(F, f"{name}[{t}]")
    return K
