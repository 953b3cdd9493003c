"""Result objects of the socially fair solvers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ColumnSubsetResult", "FairRegressionResult"]


@dataclass(frozen=True)
class ColumnSubsetResult:
    """Columns ``C`` of the shared feature space and per-group mixing matrices.

    Attributes
    ----------
    columns : array of int
        The selected column indices (sorted).
    M : list of arrays
        ``M[i]`` (``len(columns) × d``) so that ``A_i[:, columns] @ M[i] ≈ A_i``.
    cost : float
        ``max_i ||A_i[:, columns] M[i] − A_i||_F``.
    info : dict
    """

    columns: Any
    M: list
    cost: float
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FairRegressionResult:
    """Solution of ``min_x max_i ||A_i x − b_i||``.

    Attributes
    ----------
    x : array
    cost : float
        ``max_i ||A_i x − b_i||`` (the fair objective).
    group_costs : list of float
        ``||A_i x − b_i||`` per group.
    info : dict
        Algorithm, solver status, duality gap (ℓ2) where it applies.
    """

    x: Any
    cost: float
    group_costs: list
    info: dict = field(default_factory=dict)
