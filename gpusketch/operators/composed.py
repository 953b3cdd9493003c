"""Products of sketch operators, ``c · S_q ⋯ S_2 S_1``, applied right to left, never formed."""

from __future__ import annotations

import numbers

from ._base import SketchOperator

__all__ = ["Composed"]


class Composed(SketchOperator):
    """The product ``scale · S_q @ ... @ S_1`` of sketch operators.

    Parameters
    ----------
    operators : sequence of SketchOperator
        ``[S_q, ..., S_1]`` in matrix-product order (the last is applied first);
        adjacent shapes must chain: ``S_{i+1}.shape[1] == S_i.shape[0]``.
    scale : float, default 1

    Notes
    -----
    Only ``S_1`` reads the n-row input, so ``C[:, a:b]`` restricts ``S_1`` and
    chunked sums equal ``C @ A``; sparse inputs go to ``S_1``'s sparse path
    and the (small, dense) intermediate results flow through the others.
    ``.seed`` is the tuple of the factors' seeds.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch import Composed, CountSketch, SparseSign
    >>> C = Composed([CountSketch(10, 40, seed=1), SparseSign(40, 500, nnz=4, seed=2)])
    >>> C.shape
    (10, 500)
    >>> A = np.random.default_rng(0).standard_normal((500, 3))
    >>> bool(np.allclose(C @ A, C.operators[0].todense() @ C.operators[1].todense() @ A))
    True
    """

    def __init__(self, operators, *, scale=1.0):
        if isinstance(operators, SketchOperator) or not isinstance(operators, (list, tuple)) or not operators:
            raise TypeError("operators must be a non-empty list or tuple of sketch operators")
        ops = tuple(operators)
        for i, op in enumerate(ops):
            if not isinstance(op, SketchOperator):
                raise TypeError(f"operators[{i}] must be a sketch operator, got {type(op).__name__}")
        for i in range(len(ops) - 1):
            if ops[i].shape[1] != ops[i + 1].shape[0]:
                raise ValueError(
                    f"operators[{i}] has shape {ops[i].shape} and operators[{i + 1}] has shape "
                    f"{ops[i + 1].shape}: they do not chain"
                )
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
        super().__init__(ops[0].shape[0], ops[-1].shape[1], tuple(op.seed for op in ops))
        self._set(_ops=ops, _scale=float(scale))

    @property
    def operators(self):
        """The factors ``(S_q, ..., S_1)``."""
        return self._ops

    def _describe(self):
        return "Composed([" + ", ".join(repr(op) for op in self._ops) + f"], scale={self._scale})"

    def _finish(self, Y, rest, xp):
        for op in rest:
            Y = op._apply_dense(Y, xp)
        return Y * Y.dtype.type(self._scale) if self._scale != 1.0 else Y

    def _apply_dense(self, A, xp):
        return self._finish(self._ops[-1]._apply_dense(A, xp), reversed(self._ops[:-1]), xp)

    def _apply_dense_each(self, As, xp):  # the first stage, which reads the n rows, shares its blocks
        return [self._finish(Y, reversed(self._ops[:-1]), xp) for Y in self._ops[-1]._apply_dense_each(As, xp)]

    def _apply_sparse(self, A, xp):
        return self._finish(self._ops[-1]._apply_sparse(A, xp), reversed(self._ops[:-1]), xp)

    def _apply_adjoint(self, Y, xp):
        X = Y * Y.dtype.type(self._scale) if self._scale != 1.0 else Y
        for op in self._ops:
            X = op._apply_adjoint(X, xp)
        return X

    def _slice(self, a, b):
        new = object.__new__(type(self))
        Composed.__init__(new, self._ops[:-1] + (self._ops[-1][:, a:b],), scale=self._scale)
        for k, v in self.__dict__.items():  # the seed and subclass parameters carry over
            if k not in ("_m", "_n", "_ops", "_slice_of"):
                object.__setattr__(new, k, v)
        return new

    def _dense(self):
        D = self._ops[-1]._dense()
        for op in reversed(self._ops[:-1]):
            D = op._dense() @ D
        return D * self._scale
