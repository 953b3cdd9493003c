"""Sketch operators: immutable m x n linear maps applied as ``S @ A``.

Every operator is a pure function of its kind, its parameters and its integer
seed: the same seed gives the same sketch on CPU and GPU and in any chunking
(``sum(S[:, a:b] @ A[a:b]) == S @ A``).
"""

from ._base import SketchOperator
from .gaussian import Gaussian
from .hashing import CountSketch, SparseSign
from .kronecker import Kronecker
from .sampling import Sampling
from .srht import SRHT

__all__ = ["SketchOperator", "CountSketch", "SparseSign", "Gaussian", "SRHT", "Sampling", "Kronecker"]
