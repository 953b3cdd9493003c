"""Sketch operators: immutable m x n linear maps applied as ``S @ A``.

Every operator is a pure function of its kind, its parameters and its integer
seed: the same seed gives the same sketch on CPU and GPU and in any chunking
(``sum(S[:, a:b] @ A[a:b]) == S @ A``).
"""

import numpy as np

from ._base import SketchOperator
from .composed import Composed
from .fast_embedding import FastEmbedding
from .gaussian import Gaussian
from .hashing import CountSketch, SparseSign
from .kronecker import Kronecker
from .multilevel import MultiLevelCountSketch
from .sampling import Sampling
from .srht import SRHT

__all__ = [
    "SketchOperator",
    "CountSketch",
    "SparseSign",
    "Gaussian",
    "SRHT",
    "Sampling",
    "Kronecker",
    "FastEmbedding",
    "Composed",
    "MultiLevelCountSketch",
    "make_sketch",
    "row_reduction",
]

_KINDS = {
    "countsketch": CountSketch,
    "sparse_sign": SparseSign,
    "gaussian": Gaussian,
    "srht": SRHT,
    "fast_embedding": FastEmbedding,
}


def _kind(kind, name="sketch"):
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"{name} must be one of {sorted(_KINDS)} or a sketch operator, got {kind!r}")
    return _KINDS[kind]


def make_sketch(kind, m, n, *, seed=None, name="sketch"):
    """An oblivious sketch by name.

    Parameters
    ----------
    kind : {"countsketch", "sparse_sign", "gaussian", "srht", "fast_embedding"} or SketchOperator
        A ``SketchOperator`` is returned as it is after checking its shape is
        ``(m, n)`` (``m=None`` accepts any number of rows).
    m, n : int
        Rows of the sketch and rows of the input it sketches.  An ``"srht"``
        has at most N rows, N the power of two that n is padded to (its rows
        are distinct rows of the N × N Hadamard matrix): a larger m is capped
        at N, and the operator's shape says so.  ``"sparse_sign"`` has
        ``min(8, m)`` nonzeros per column.
    seed : int, optional
    name : str
        The argument the errors name (``"sketch"``, or ``"test_matrix"`` for
        ``randomized_svd``).

    Returns
    -------
    SketchOperator

    Examples
    --------
    >>> from gpusketch.operators import make_sketch
    >>> make_sketch("srht", 100, 50, seed=1).shape   # capped at the padded length 64
    (64, 50)
    >>> make_sketch("sparse_sign", 4, 50, seed=1)
    SparseSign(m=4, n=50, nnz=4, seed=1)
    """
    if isinstance(kind, SketchOperator):
        if kind.shape[1] != n or (m is not None and kind.shape[0] != m):
            raise ValueError(f"{name} has shape {kind.shape}, expected ({m if m is not None else 'm'}, {n})")
        return kind
    cls = _kind(kind, name)
    if cls is SRHT:
        m = min(m, 1 << max(0, (n - 1).bit_length()))
    if cls is SparseSign:
        return SparseSign(m, n, nnz=min(8, m), seed=seed)
    return cls(m, n, seed=seed)


def row_reduction(kind, m, n, *, seed=None):
    """The sketch an algorithm applies to shrink n rows to m: ``make_sketch(kind, m, n)`` while
    ``m < n``, the n × n identity (a ``Sampling`` of every row) from ``m >= n`` on.

    A sketch with as many rows as its input cannot save work, and it loses
    accuracy: a square OSNAP of a matrix with n close to d is badly
    conditioned on its range.  Measured (CPU, 20 seeds): sketched leverage
    scores of 8 × 8 Gaussian matrices off by factors up to e^5.3, ℓ1 Lewis
    weights up to e^9.6; the per-factor sketches of ``kron.low_rank`` at cost
    ratios up to 1.34 for factors of 9-20 rows.  The identity is exact.

    Parameters
    ----------
    kind : {"countsketch", "sparse_sign", "gaussian", "srht", "fast_embedding"}
    m, n : int
        Rows wanted and rows of the input.
    seed : int, optional

    Returns
    -------
    SketchOperator
        Of shape ``(m, n)`` (SRHT: at most n rounded up to a power of two),
        or the ``(n, n)`` identity ``Sampling`` when ``m >= n``.

    Examples
    --------
    >>> from gpusketch.operators import row_reduction
    >>> row_reduction("sparse_sign", 40, 1000, seed=1).shape
    (40, 1000)
    >>> row_reduction("sparse_sign", 40, 30, seed=1)   # no sketch is shorter than 30 rows
    Sampling(m=30, n=30)
    """
    _kind(kind)  # a bad name is an error at any size
    if m >= n:
        return Sampling(np.arange(n), n)
    return make_sketch(kind, m, n, seed=seed)
