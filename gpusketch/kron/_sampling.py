"""Sampling rows of a Kronecker product from a product distribution, factor by factor."""

from __future__ import annotations

from .. import _kernels
from .._backend import array_namespace
from .._random import derive_seed


def categorical(p, count, seed, xp):
    """``count`` i.i.d. draws from the distribution ``p`` (inverse CDF of Philox uniforms).

    The same seed draws the same indices on NumPy and CuPy (up to ties at
    CDF boundaries within round-off).
    """
    cdf = xp.cumsum(p)
    cdf /= cdf[-1]  # in place: one array of p's size, not two (p is ∏ n_t long in stage 2)
    u = _kernels.uniforms(count, seed, xp)
    return xp.minimum(_kernels.call("inverse_cdf", xp, cdf, u), p.size - 1)


def product_sample(probs, count, seed, xp):
    """Draw ``count`` row indices of ``A_1 ⊗ ... ⊗ A_q`` with probability ``∏_t p_t(i_t)``.

    Each factor index is drawn independently from its own distribution, so
    the ``∏ n_t`` joint probabilities are never formed.  Returns the flat
    indices (numpy.kron order) and their joint probabilities.
    """
    dims = tuple(int(p.size) for p in probs)
    flat = xp.zeros(count, dtype=xp.int64)
    joint = xp.ones(count, dtype=probs[0].dtype)
    for t, p in enumerate(probs):
        p = p / p.sum()
        it = categorical(p, count, derive_seed(seed, 100 + t), xp)
        flat = flat * dims[t] + it
        joint = joint * p[it]
    return flat, joint


def merge(idx, prob, count):
    """Merge repeated draws of an i.i.d. sample of size ``count``.

    Returns the distinct indices (sorted) and their importance weights
    ``w_i = c_i / (count · p_i)`` (``c_i`` = times drawn), so that
    ``Σ_distinct w_i f(i)`` is the usual unbiased estimate of ``Σ_i f(i)``.
    """
    xp = array_namespace(idx)
    order = xp.argsort(idx)
    idx, prob = idx[order], prob[order]
    first = xp.concatenate([xp.ones(1, dtype=bool), idx[1:] != idx[:-1]])
    starts = xp.flatnonzero(first)
    counts = xp.diff(xp.concatenate([starts, xp.asarray([idx.size], dtype=starts.dtype)]))
    return idx[starts], counts / (count * prob[starts])
