"""Algorithms of Chepurko, Clarkson, Kacham and Woodruff on the sketch operators."""

from .leverage import leverage_sample, leverage_scores
from .low_rank import low_rank
from .lstsq import RankDeficientWarning, lstsq
from .rank import independent_rows, rank
from .results import LowRankResult, LstsqResult, RowSpaceResult
from .svd import randomized_svd

__all__ = [
    "lstsq",
    "LstsqResult",
    "RankDeficientWarning",
    "leverage_scores",
    "leverage_sample",
    "rank",
    "independent_rows",
    "randomized_svd",
    "low_rank",
    "LowRankResult",
    "RowSpaceResult",
]
