"""gpusketch: reproducible randomized sketching on CUDA and NumPy.

Importing gpusketch imports NumPy and SciPy only; CuPy is imported on first
use with a CuPy input, and CUDA kernels compile lazily on first launch.
"""

from .linalg import (
    LowRankResult,
    LstsqResult,
    RankDeficientWarning,
    independent_rows,
    leverage_sample,
    leverage_scores,
    low_rank,
    lstsq,
    randomized_svd,
    rank,
)
from .operators import (
    SRHT,
    CountSketch,
    FastEmbedding,
    Gaussian,
    Kronecker,
    Sampling,
    SketchOperator,
    SparseSign,
)

__version__ = "0.1.0"

__all__ = [
    "SketchOperator",
    "CountSketch",
    "SparseSign",
    "Gaussian",
    "SRHT",
    "Sampling",
    "Kronecker",
    "FastEmbedding",
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
    "__version__",
]
