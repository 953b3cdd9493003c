"""Sketch operators: immutable m x n linear maps applied as ``S @ A``.

Every operator is a pure function of its kind, its parameters and its integer
seed: the same seed gives the same sketch on CPU and GPU and in any chunking
(``sum(S[:, a:b] @ A[a:b]) == S @ A``).
"""

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
]

_KINDS = {
    "countsketch": CountSketch,
    "sparse_sign": SparseSign,
    "gaussian": Gaussian,
    "srht": SRHT,
    "fast_embedding": FastEmbedding,
}


def make_sketch(kind, m, n, *, seed=None):
    """An oblivious sketch by name: ``"countsketch"``, ``"sparse_sign"``, ``"gaussian"``, ``"srht"``
    or ``"fast_embedding"``.

    A ``SketchOperator`` passed as ``kind`` is returned after checking its shape
    is ``(m, n)`` (``m=None`` accepts any number of rows).  An ``"srht"`` has at
    most N rows, N the power of two that n is padded to (its rows are distinct
    rows of the N × N Hadamard matrix): a larger m is capped at N, and the
    operator's shape says so.
    """
    if isinstance(kind, SketchOperator):
        if kind.shape[1] != n or (m is not None and kind.shape[0] != m):
            raise ValueError(f"sketch has shape {kind.shape}, expected ({m if m is not None else 'm'}, {n})")
        return kind
    if kind not in _KINDS:
        raise ValueError(f"sketch must be one of {sorted(_KINDS)} or a sketch operator, got {kind!r}")
    cls = _KINDS[kind]
    if cls is SRHT:
        m = min(m, 1 << max(0, (n - 1).bit_length()))
    if cls is SparseSign:
        return SparseSign(m, n, nnz=min(8, m), seed=seed)
    return cls(m, n, seed=seed)
