"""Result object of the robust regression solvers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RobustResult"]


@dataclass(frozen=True)
class RobustResult:
    """Solution of ``min_x Σ_i w_i M((Ax − b)_i)`` or of an ℓp regression.

    Attributes
    ----------
    x : array
        The solution, on the device of the inputs.
    cost : float
        The objective on the full problem (``Σ M(r_i)``, or ``||r||_p`` for ℓp).
    info : dict
        Iterations, restarts, stopping reason, sample sizes, seed, as they apply.
    """

    x: Any
    cost: float
    info: dict = field(default_factory=dict)
