"""Kronecker-product regression and low-rank approximation (Diao, Jayaram, Song, Sun, Woodruff).

``A = A_1 ⊗ ... ⊗ A_q`` is never formed: ``KroneckerMatrix`` applies it
factor by factor and gathers selected rows; the solvers sample rows by
factor-wise distributions or sketch each factor.
"""

from .low_rank import low_rank
from .matrix import KroneckerMatrix
from .rank_regression import all_pairs_cost, rank_regression
from .regression import lp_regression, lstsq

__all__ = ["KroneckerMatrix", "lstsq", "lp_regression", "rank_regression", "all_pairs_cost", "low_rank"]
