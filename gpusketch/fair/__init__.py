"""Socially fair low-rank approximation, column subset selection and regression.

Song, Vakilian, Woodruff and Zhou, "On Socially Fair Low-Rank Approximation
and Column Subset Selection".  Groups are a list of matrices ``A_i``
(``n_i × d``) sharing the d columns; the objective is the worst group's.
"""

from .low_rank import baseline, column_subset, cost, dvoretzky_size, low_rank
from .regression import regression
from .results import ColumnSubsetResult, FairRegressionResult

__all__ = ["cost", "baseline", "low_rank", "column_subset", "regression", "dvoretzky_size",
           "ColumnSubsetResult", "FairRegressionResult"]
