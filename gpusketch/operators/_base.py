"""The sketch-operator protocol shared by every operator.

A sketch operator ``S`` is an immutable m x n linear map.  Subclasses
implement five private methods on already-validated inputs:

``_apply_dense(A, xp)``
    ``S @ A`` for a dense 1-D or 2-D ``A`` with n rows (any strides).
``_apply_sparse(A, xp)``
    ``S @ A`` for CSR ``A``; the default densifies bounded row chunks and
    applies the column slices ``S[:, a:b]``.
``_apply_adjoint(Y, xp)``
    ``S.T @ Y`` for a dense ``Y`` with m rows.
``_slice(a, b)``
    ``S[:, a:b]`` with the same hashes.
``_dense()``
    ``S`` as a NumPy float64 array, computed directly from the hashes (it is
    the independent reference the tests compare ``S @ A`` with).

Everything public (``@``, ``.T``, slicing, ``todense``, the LinearOperator
protocol) is implemented here once.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._backend import array_namespace, as_operand, check_memory, is_sparse
from .._nvtx import annotate

__all__ = ["SketchOperator"]

# Sparse inputs without a native kernel are densified in chunks of about this size.
_DENSIFY_BYTES = 64 << 20

#: Most rows of a hashed or Gaussian sketch: the CUDA kernels index sketch rows (and the
#: hash buckets they come from) with 32-bit ints, and the CPU twins follow them.
MAX_SKETCH_ROWS = 2**31 - 1
ROWS_LIMIT = " (the CUDA kernels index sketch rows with 32-bit ints)"
#: Most columns of any sketch: global column indices (the hash inputs) and SRHT's length
#: padded to a power of two are 64-bit integers (past this, NumPy raised OverflowError).
MAX_SKETCH_COLUMNS = 2**62
COLUMNS_LIMIT = " (column indices and SRHT's padded length are 64-bit integers)"


def _zeros(xp, shape, dtype, what):
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    check_memory(nbytes, what, xp)
    return xp.zeros(shape, dtype=dtype)


class LinearOperatorMethods:
    """``matvec``, ``rmatvec``, ``matmat`` and ``rmatmat`` from ``@`` and ``.T``.

    With ``shape`` and ``dtype`` they make a class a SciPy LinearOperator:
    ``aslinearoperator`` wraps it, and ``lsqr``, ``lsmr`` and ``svds`` take it.
    """

    def matvec(self, x):
        return self @ x

    def rmatvec(self, y):
        return self.T @ y

    def matmat(self, X):
        return self @ X

    def rmatmat(self, Y):
        return self.T @ Y


class SketchOperator(LinearOperatorMethods):
    """Base class of all sketch operators (see module docstring)."""

    # Make ``A @ S`` and ``ndarray @ S.T`` defer to our __rmatmul__ instead of
    # NumPy/CuPy trying to convert the operator to an array.
    __array_ufunc__ = None
    __array_priority__ = 1000
    ndim = 2
    dtype = np.dtype(np.float64)

    def __init__(self, m, n, seed):
        object.__setattr__(self, "_m", int(m))
        object.__setattr__(self, "_n", int(n))
        object.__setattr__(self, "_seed", seed)

    def _set(self, **attrs):
        for k, v in attrs.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    # -- properties ---------------------------------------------------------
    @property
    def shape(self):
        """``(m, n)``: sketch size by input dimension."""
        return (self._m, self._n)

    @property
    def seed(self):
        """The integer seed that determines the operator (``None`` if it has none)."""
        return self._seed

    @property
    def T(self):
        """The adjoint ``S^T`` (n x m), never formed."""
        return _Adjoint(self)

    def __repr__(self):
        # A column slice prints as the operator it was cut from: the slice's own
        # constructor arguments would describe a different operator (its hashes
        # start at column a; an SRHT's transform length is the parent's).
        origin = self.__dict__.get("_slice_of")
        return origin if origin is not None else self._describe()

    def _describe(self):
        return f"{type(self).__name__}(m={self._m}, n={self._n}, seed={self._seed})"

    # -- application --------------------------------------------------------
    def __matmul__(self, A):
        if hasattr(A, "_sketched_by") and not isinstance(A, SketchOperator):
            return A._sketched_by(self)  # structured operands (KroneckerMatrix) sketch themselves
        with annotate(f"gpusketch.{type(self).__name__}.matmul"):
            A, xp = self._operand(A, "A")
            if is_sparse(A):
                return self._apply_sparse(A, xp)
            return self._apply_dense(A, xp)

    def matmul_each(self, *operands):
        """``(S @ A, S @ B, ...)``: one sketch of several operands, S generated once for all.

        Parameters
        ----------
        *operands : arrays or sparse matrices
            Each 1-D or 2-D with n rows, all NumPy (and SciPy sparse) or all
            CuPy (and cupyx sparse); dtypes may differ.

        Returns
        -------
        tuple
            ``S @ X`` for each operand, in order.

        Notes
        -----
        On a CPU, generating S's entries (Philox hashes; Gaussian deviates) is
        most of a thin sketch's cost: ``S @ A`` and then ``S @ b`` generate
        S twice.  Here the hashing and Gaussian sketches generate each block
        of S once for every dense operand on their row-block route (a
        least-squares pair ``(A, b)`` on 2^20 rows with SparseSign(nnz=8):
        one hashing pass instead of two); on a GPU the Gaussian shares its
        filled blocks too, while the hashing kernels, which hash in registers
        as they read, run once per operand.  Other operators and sparse
        operands are sketched one by one.  Results equal ``S @ X`` to round-off: with
        several operands the CPU's thread split follows their total size.
        All operands are checked before any is sketched.

        Examples
        --------
        >>> import numpy as np
        >>> from gpusketch import SparseSign
        >>> rng = np.random.default_rng(0)
        >>> A, b = rng.standard_normal((1000, 5)), rng.standard_normal(1000)
        >>> S = SparseSign(40, 1000, seed=1)
        >>> SA, Sb = S.matmul_each(A, b)
        >>> bool(np.allclose(SA, S @ A) and np.allclose(Sb, S @ b))
        True
        """
        if not operands:
            raise TypeError("matmul_each needs at least one operand")
        structured = [hasattr(X, "_sketched_by") and not isinstance(X, SketchOperator) for X in operands]
        checked = [X if structured[i] else self._operand(X, f"operands[{i}]")[0] for i, X in enumerate(operands)]
        xp = array_namespace(*[X for i, X in enumerate(checked) if not structured[i]])  # mixed: TypeError
        with annotate(f"gpusketch.{type(self).__name__}.matmul_each"):
            out = [None] * len(checked)
            dense = [i for i, X in enumerate(checked) if not structured[i] and not is_sparse(X)]
            if dense:
                for i, Y in zip(dense, self._apply_dense_each([checked[i] for i in dense], xp)):
                    out[i] = Y
            for i, X in enumerate(checked):
                if structured[i]:
                    out[i] = X._sketched_by(self)
                elif is_sparse(X):
                    out[i] = self._apply_sparse(X, xp)
            return tuple(out)

    def _operand(self, A, name):
        """``(A, xp)`` for ``S @ A``: ``as_operand``'s checks, and n rows."""
        if isinstance(A, SketchOperator):
            raise TypeError(
                f"cannot compose {_kind(self)} @ {_kind(A)}: apply them in turn, S1 @ (S2 @ A)"
            )
        if isinstance(A, numbers.Number):
            raise TypeError(f"{type(self).__name__} @ scalar is not defined; {name} must be a 1-D or 2-D array")
        A, xp = as_operand(A, name)
        if A.shape[0] != self._n:
            raise ValueError(
                f"{name} has {A.shape[0]} rows but {type(self).__name__} has {self._n} columns: "
                f"shapes {self.shape} and {tuple(A.shape)} are not aligned"
            )
        return A, xp

    def _apply_dense_each(self, As, xp):
        """``[S @ A for A in As]`` for dense operands; operators that generate S override it."""
        return [self._apply_dense(A, xp) for A in As]

    def __rmatmul__(self, X):
        """``X @ S`` = ``(S^T @ X^T)^T``; with ``S.T`` this is the right sketch ``A @ S.T``."""
        if isinstance(X, numbers.Number):
            raise TypeError(f"scalar @ {type(self).__name__} is not defined; X must be a 1-D or 2-D array")
        X, _ = as_operand(X, "X")
        if X.shape[-1] != self._m:
            raise ValueError(
                f"X has {X.shape[-1]} columns but {type(self).__name__} has {self._m} rows: "
                f"shapes {tuple(X.shape)} and {self.shape} are not aligned"
            )
        return (self.T @ X.T).T

    def _apply_sparse(self, A, xp):
        n, d = A.shape
        out = _zeros(xp, (self._m, d), A.dtype, f"sketch output ({self._m} x {d})")
        rows = max(1, _DENSIFY_BYTES // max(1, d * A.dtype.itemsize))
        for a in range(0, n, rows):
            b = min(n, a + rows)
            out += self._slice(a, b)._apply_dense(A[a:b].toarray(), xp)
        return out

    # -- slicing and materialisation ---------------------------------------
    def __getitem__(self, key):
        if not (
            isinstance(key, tuple)
            and len(key) == 2
            and key[0] == slice(None)
            and isinstance(key[1], slice)
        ):
            raise TypeError(f"{type(self).__name__} supports only column slices S[:, a:b], got {key!r}")
        a, b, step = key[1].indices(self._n)
        if step != 1:
            raise ValueError(f"column slice step must be 1, got {step}")
        if b <= a:
            raise ValueError(f"column slice [{key[1].start}:{key[1].stop}] of {self._n} columns is empty")
        if (a, b) == (0, self._n):
            return self
        new = self._slice(a, b)
        object.__setattr__(new, "_slice_of", f"{self!r}[:, {a}:{b}]")
        return new

    def todense(self, xp=np):
        """The operator as an explicit m x n float64 array on ``xp`` (NumPy by default)."""
        check_memory(self._m * self._n * 8, f"todense() of a {self._m} x {self._n} operator", np)
        D = self._dense()
        return D if xp is np else xp.asarray(D)


def _kind(op):
    """``"CountSketch"``, or ``"CountSketch.T"`` for its adjoint: the operator as users wrote it."""
    return f"{_kind(op._op)}.T" if isinstance(op, _Adjoint) else type(op).__name__


class _Adjoint(SketchOperator):
    """``S^T``, optionally restricted to columns ``r0:r1`` (rows of ``S``).

    A column slice of an adjoint pads its input with zeros to the sketch size
    m; that is cheap because m is the small side of a sketch.
    """

    def __init__(self, op, rows=None):
        r0, r1 = rows if rows is not None else (0, op.shape[0])
        super().__init__(op.shape[1], r1 - r0, op.seed)
        self._set(_op=op, _rows=rows)

    @property
    def T(self):
        return self._op if self._rows is None else _Adjoint(self)

    def _describe(self):
        return f"{self._op!r}.T" + ("" if self._rows is None else f"[:, {self._rows[0]}:{self._rows[1]}]")

    def _padded(self, Y, xp):
        if self._rows is None:
            return Y
        r0, r1 = self._rows
        Z = _zeros(xp, (self._op.shape[0],) + Y.shape[1:], Y.dtype, "padded adjoint input")
        Z[r0:r1] = Y
        return Z

    def _apply_dense(self, Y, xp):
        return self._op._apply_adjoint(self._padded(Y, xp), xp)

    def _apply_sparse(self, Y, xp):
        return self._apply_dense(Y.toarray(), xp)

    def _apply_adjoint(self, A, xp):
        Y = self._op._apply_dense(A, xp)
        return Y if self._rows is None else Y[self._rows[0] : self._rows[1]]

    def _slice(self, a, b):
        r0 = 0 if self._rows is None else self._rows[0]
        return _Adjoint(self._op, (r0 + a, r0 + b))

    def _dense(self):
        D = self._op._dense()
        if self._rows is not None:
            D = D[self._rows[0] : self._rows[1]]
        return np.ascontiguousarray(D.T)

