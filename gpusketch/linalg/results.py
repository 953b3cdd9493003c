"""Result objects returned by the solvers (named fields, not tuples)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LstsqResult", "LowRankResult", "RowSpaceResult"]


@dataclass(frozen=True)
class LstsqResult:
    """Solution of a least-squares problem ``min_x ||A x - b||_2``.

    Attributes
    ----------
    x : array
        The solution, on the device of the inputs (shape ``(d,)`` or ``(d, k)``).
    cost : float or array
        ``||A x - b||_2`` on the full problem (one value per column of b).
    info : dict
        ``method``, ``sketch``, ``m``, ``iterations``, ``seed``, ``rank_deficient``
        and ``timings`` (seconds per phase), where they apply.
    """

    x: Any
    cost: Any
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LowRankResult:
    """Rank-k factorisation ``A ≈ V X``.

    Attributes
    ----------
    V : (n, k) array with orthonormal columns
    X : (k, d) array
    info : dict
        Sizes of the intermediate sketches and samples, the seed, timings.
    """

    V: Any
    X: Any
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RowSpaceResult:
    """A rank-k row space ``V`` (k × d, orthonormal rows) and its cost.

    Returned by ``kron.low_rank`` and ``fair.low_rank``.

    Attributes
    ----------
    V : (k, d) array with orthonormal rows
    cost : float
        The objective of the projection onto the row space of V on the full
        data: ``||A − A VᵀV||_F`` (``kron``) or the fair cost (``fair``).
    info : dict
        Sizes, seeds, trials, which route ran, as they apply.
    """

    V: Any
    cost: float
    info: dict = field(default_factory=dict)
