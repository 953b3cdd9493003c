"""Robust regression: losses, IRLS, Lewis weights and ℓp regression (Clarkson, Wang, Woodruff)."""

from .irls import irls
from .lewis import lewis_weights
from .losses import ClippedLpLoss, HuberLoss, TukeyLoss
from .lp import lp_regression
from .results import RobustResult
from .tukey import TukeyResult, heavy_coordinates, tukey_regression

__all__ = [
    "TukeyLoss",
    "ClippedLpLoss",
    "HuberLoss",
    "irls",
    "lewis_weights",
    "lp_regression",
    "heavy_coordinates",
    "tukey_regression",
    "RobustResult",
    "TukeyResult",
]
