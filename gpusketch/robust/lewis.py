"""ℓp Lewis weights by the Cohen–Peng fixed-point iteration."""

from __future__ import annotations

import math

import numpy as np

from .._backend import (
    array_namespace,
    as_matrix,
    check_positive_int,
    check_real_in,
    check_seed,
    device_block_rows,
    is_sparse,
)
from .._nvtx import annotate
from .._random import derive_seed
from ..linalg import leverage_scores
from ..linalg.leverage import RowSlices, jl_columns, streamed_leverage_scores

__all__ = ["lewis_weights"]


def _scaled_rows(A, s, b):
    """``diag(s) A``, or ``diag(s) [A b]`` for a dense A and a given b, as one matrix
    (``s=None``: unscaled; A itself, or a view of it, when b is None too)."""
    if is_sparse(A):  # b is None: lp_regression stacks a sparse b into A
        return A if s is None else A.multiply(s[:, None]).tocsr()
    return RowSlices(A, s, b)[0 : A.shape[0]]


#: Dense host A from this size on: the scaled matrix of each step is read a row block at a time
#: (``streamed_leverage_scores``).  Below it, one scaled copy is formed: faster (the streamed
#: steps took 1.05-1.27x the time at 65536 × 256, 10⁶ × 20 and 20000 × 10 exact), and small.
_STREAM_MIN_BYTES = 256 << 20


def _stream(A, b, xp):
    """Whether to stream ``diag(s) [A b]`` rather than form it: on the host from
    ``_STREAM_MIN_BYTES`` of A; on a GPU when the scaled copy and the work of its scores
    (CholeskyQR2's two n × d' arrays, or the n × t JL product) would take more than half
    the free device memory."""
    if xp is np:
        return A.nbytes >= _STREAM_MIN_BYTES
    n, width = A.shape[0], A.shape[1] + (b is not None)
    itemsize = np.result_type(A.dtype, *([] if b is None else [b.dtype])).itemsize
    return device_block_rows(n, (3 * width + jl_columns(n)) * itemsize, xp) < n


def _scaled_leverage(A, s, b, exact, seed, xp):
    """Leverage scores of ``diag(s) [A b]``.  For a dense A that ``_stream`` picks the scaled
    matrix is never formed (``streamed_leverage_scores``: same sketch, same scores to
    round-off); otherwise it lives only inside this call, so the fixed-point loop holds
    one scaled copy at a time."""
    if not is_sparse(A) and (s is not None or b is not None) and _stream(A, b, xp):
        return streamed_leverage_scores(RowSlices(A, s, b), exact=exact, seed=seed)
    return leverage_scores(_scaled_rows(A, s, b), exact=exact, seed=seed)


def lewis_weights(A, p, *, exact=False, iters=None, seed=None):
    """ℓp Lewis weights of the rows of A, for ``0 < p < 4``.

    The weights are the fixed point of ``w_i = (a_iᵀ (Aᵀ W^{1−2/p} A)⁻¹ a_i)^{p/2}``;
    they sum to rank(A), and for p = 2 they are the leverage scores.

    Parameters
    ----------
    A : (n, d) array or sparse matrix, n >= d
    p : float in (0, 4)
    exact : bool
        Quadratic forms from exact leverage scores (QR) instead of the
        sketched estimates of ``leverage_scores`` (the default, ``O(nnz(A))``
        per iteration up to the ``O(log n)`` JL columns).
    iters : int, optional
        Fixed-point iterations.  The map contracts ``log w`` by
        ``c = |1 − p/2|`` per step (Cohen & Peng, p < 4), starting from
        ``w = 1`` (an error of 3-4 in ``log w`` measured on coherent 3000 × 10
        matrices; ``ln n`` is taken as its size).  Default: 1 for p = 2; with sketched
        scores, the ``k`` with ``c^k ln n <= 0.05``, below their JL noise
        (9 steps for p = 1 at n = 10⁶; past it the error stayed at the noise
        level, 0.3-0.8 in ``log w`` for p in [0.5, 1.5], measured); exact,
        until no weight moves by more than 500 ε of the largest (1.1e-13 in
        float64), at most 1000.
    seed : int, optional

    Returns
    -------
    array of shape (n,), on the device of A

    Notes
    -----
    Iteration: with ``s_i = w_i^{1/2 − 1/p}``, the leverage score ``τ_i`` of
    row i of ``diag(s) A`` equals ``s_i² a_iᵀ(AᵀW^{1−2/p}A)⁻¹a_i``, so the update is
    ``w_i ← (τ_i w_i^{2/p − 1})^{p/2}``.  With sketched leverage scores each
    iterate carries their constant-factor error; the weights are then
    approximate Lewis weights (good for sampling, Cohen & Peng §4).

    Memory: each step takes the leverage scores of ``diag(s) A``.  Below
    256 MiB (and for sparse or device arrays) that matrix is formed, one at a
    time; for a larger dense host A it is read a row block at a time and
    never formed (``streamed_leverage_scores``): the iteration then adds a
    few n-vectors and 64 MiB row blocks, not a copy of A (0.49x A in all at
    2·10⁶ × 20).

    References
    ----------
    Cohen, M. B. and Peng, R. "ℓp row sampling by Lewis weights", STOC 2015.

    Examples
    --------
    >>> import numpy as np, gpusketch
    >>> A = np.random.default_rng(0).standard_normal((400, 6))
    >>> w = gpusketch.lewis_weights(A, 1, exact=True)
    >>> round(float(w.sum()), 6)
    6.0
    """
    with annotate("gpusketch.lewis_weights"):
        A, xp = as_matrix(A)
        p = check_real_in(p, "p", 0, 4, closed="()")
        n, d = A.shape
        if n < d:
            raise ValueError(f"Lewis weights need n >= d, got A of shape {A.shape}")
        until_converged = iters is None and exact and p != 2
        iters = default_iters(p, n, exact) if iters is None else check_positive_int(iters, "iters")
        return _fixed_point(A, None, p, exact, iters, until_converged, check_seed(seed), xp)


def stacked_lewis_weights(A, b, p, *, seed):
    """Sketched Lewis weights of ``[A b]`` for a validated dense A (n > d) and b,
    without holding ``[A b]`` beside the scaled copy each step forms (``lp_regression``)."""
    return _fixed_point(A, b, p, False, default_iters(p, A.shape[0], False), False, seed, array_namespace(A))


def _fixed_point(A, b, p, exact, iters, until_converged, seed, xp):
    """The iteration of ``lewis_weights`` on ``[A b]`` (A alone when b is None)."""
    w = xp.ones(A.shape[0], dtype=A.dtype if b is None else xp.result_type(A.dtype, b.dtype))
    settled = 500 * np.finfo(w.dtype).eps  # 1.1e-13 in float64, 6e-5 in float32
    for t in range(iters):
        w_prev, w = w, lewis_step(w, p, lambda s: _scaled_leverage(A, s, b, exact, derive_seed(seed, t), xp))
        if until_converged and float(xp.abs(w - w_prev).max()) <= settled * float(w.max()):
            break
    return w


def lewis_step(w, p, scores):
    """One fixed-point step ``w_i ← (τ_i w_i^{2/p − 1})^{p/2}``, with ``τ = scores(s)`` the
    leverage scores of ``diag(s) A`` for ``s = w^{1/2 − 1/p}`` (``s`` None at p = 2: A itself).
    Elementwise only, so w may be a NumPy, CuPy or Dask vector."""
    # Zero rows have weight 0 and keep it: their scale is 0, not 0^(1/2 − 1/p).  (A floor
    # at the dtype's tiny overflowed for p < 2/3: tiny^(−1.5) = inf, times a zero row NaN.)
    # (Masks multiply rather than xp.where with a Python float: w keeps its dtype on CuPy too.)
    live = w > 0
    wc = w + ~live  # 1 on the zero rows, so every power below is finite
    tau = scores(None if p == 2 else wc ** (0.5 - 1 / p) * live)
    return (tau * wc ** (2 / p - 1)) ** (p / 2) * live


def default_iters(p, n, exact):
    """Fixed-point steps (see ``iters``): 1 at p = 2; sketched, ``c^k ln n <= 0.05``;
    exact, a cap of 1000 (the loop stops once the weights settle)."""
    if p == 2:
        return 1
    if exact:
        return 1000
    c = abs(1 - p / 2)
    return max(1, math.ceil(math.log(0.05 / max(1.0, math.log(n))) / math.log(c)))
