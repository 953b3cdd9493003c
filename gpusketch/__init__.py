"""gpusketch: reproducible randomized sketching on CUDA and NumPy.

Importing gpusketch imports NumPy and SciPy only; CuPy is imported on first
use with a CuPy input, and CUDA kernels compile lazily on first launch.
"""

from . import fair, kron, linalg, operators, robust, stream
from .linalg import *  # noqa: F403
from .operators import *  # noqa: F403
from .robust import lewis_weights, lp_regression

__version__ = "0.1.0"

__all__ = (
    [n for n in operators.__all__ if n != "make_sketch"]
    + linalg.__all__
    + ["lewis_weights", "lp_regression", "robust", "kron", "fair", "__version__"]
)
