"""Robust loss functions M(a) for regression ``min_x Σ_i w_i M((Ax − b)_i)``, on NumPy or CuPy arrays."""

from __future__ import annotations

import math

import numpy as np

from .._backend import array_namespace, check_dtype, check_positive_real, check_real_in

__all__ = ["TukeyLoss", "ClippedLpLoss", "HuberLoss"]


def _check_tau(tau):
    tau = check_positive_real(tau, "tau")
    # The losses and weights use τ²: past ~1.3e154 it overflows (a raw OverflowError from
    # Python's float power, deep in IRLS), below ~1.5e-154 it underflows (infinite weights).
    if not (math.isfinite(tau * tau) and tau * tau >= np.finfo(np.float64).tiny):
        raise ValueError(f"tau must have a finite, normal square in float64 (1.5e-154 <= tau <= 1.3e154), got {tau!r}")
    return tau


def _check_p(p, lo=1.0, hi=2.0):
    return check_real_in(p, "p", lo, hi)


def _residuals(a):
    """``(a, xp)`` with array-likes (lists, Python numbers) as NumPy arrays, as NumPy ufuncs take them.

    Integer and boolean residuals are upcast to float64 as ufuncs would;
    complex, float16 and object residuals raise ``TypeError`` (a loss of a
    complex number is no real loss, and ``|a|`` would silently change it).
    """
    xp = array_namespace(a)
    a = xp.asarray(a)
    return a.astype(check_dtype(a.dtype, "a"), copy=False), xp


class _Loss:
    """value(a) = M(a) elementwise; weight(a) = M'(a)/a, the IRLS weight (finite at 0)."""

    def __call__(self, a):
        return self.value(a)

    def total(self, r, weights=None):
        """``Σ_i w_i M(r_i)`` as a Python float."""
        v = self.value(r)
        return float((v if weights is None else weights * v).sum())


class TukeyLoss(_Loss):
    """Tukey's biweight, ``M(a) = (τ²/6)(1 − (1 − (a/τ)²)³)`` for ``|a| <= τ``, ``τ²/6`` beyond.

    With ``p != 2`` the loss is ``M(a)^{p/2}`` up to the constant ``6^{p/2−1}``
    (so ``p = 2`` is the biweight itself): ``Θ(|a|^p)`` near 0, constant beyond τ.
    Its IRLS weight ``(p/2)(6M)^{p/2−1}ψ(a)/a`` grows like ``|a|^{p−2}`` near 0
    and is capped at ``|a| = δ = 1e-8·τ``, as for ``ClippedLpLoss``.

    Parameters
    ----------
    tau : float, 1.5e-154 <= tau <= 1.3e154 (τ² finite and normal in float64)
        Threshold where the loss saturates.
    p : float in [1, 2]

    Notes
    -----
    Assumption 1 of Clarkson, Wang & Woodruff holds with this p: symmetric,
    nondecreasing in ``|a|``, ``L|a|^p <= M(a) <= U|a|^p`` for ``|a| <= τ``
    (for p = 2: ``M(a)/a² ∈ [1/6, 1/2]``), and flat beyond τ.  The paper's
    normalisation puts the flat value at ``τ^p``; the biweight's ``τ²/6``
    differs by a constant factor, which changes no minimiser.  IRLS weight
    (p = 2): ``(1 − (a/τ)²)²`` inside, 0 beyond.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch.robust import TukeyLoss
    >>> M = TukeyLoss(2.0)
    >>> M(np.array([0.0, 1.0, 5.0])).round(4)
    array([0.    , 0.3854, 0.6667])
    """

    def __init__(self, tau, p=2):
        self.tau = _check_tau(tau)
        self.p = _check_p(p)

    def __repr__(self):
        return f"TukeyLoss(tau={self.tau:g}, p={self.p:g})"

    def _biweight(self, a, xp):
        u = xp.minimum((a / self.tau) ** 2, 1.0)
        # 1 − (1 − u)³ expanded: in float32 the difference form is 0 for
        # |a| < 1.7e-4·τ and over 10 % off up to 4e-4·τ (in float64, 0 below 1e-8·τ).
        return (self.tau**2 / 6) * (u * (3 - 3 * u + u * u)), u

    def value(self, a):
        a, xp = _residuals(a)
        rho, _ = self._biweight(a, xp)
        return rho if self.p == 2 else (6 * rho) ** (self.p / 2) / 6

    def weight(self, a):
        a, xp = _residuals(a)
        rho, u = self._biweight(a, xp)
        w2 = (1 - u) ** 2  # ψ(a)/a of the biweight
        if self.p == 2:
            return w2
        # d/da (6ρ)^{p/2}/6 = (p/2) (6ρ)^{p/2-1} ψ(a); near 0, (6ρ) ~ 3a².
        # |a| is floored at δ = 1e-8·τ as in ClippedLpLoss, so exact fits get
        # a finite weight in float32 as well as float64.
        six_rho = xp.maximum(6 * rho, 3e-16 * self.tau**2)
        return (self.p / 2) * six_rho ** (self.p / 2 - 1) * w2


class ClippedLpLoss(_Loss):
    """The Tukey ℓp loss of the paper: ``M(a) = min(|a|, τ)^p``.

    Assumption 1 holds with ``L = U = 1``.  Its IRLS weight ``p|a|^{p−2}``
    (inside τ, 0 beyond) is capped at ``p·δ^{p−2}`` with ``δ = 1e-8·τ`` so that
    exact fits do not divide by zero.

    Parameters
    ----------
    tau : float, 1.5e-154 <= tau <= 1.3e154 (τ² finite and normal in float64)
        Where the loss saturates at ``τ^p``.
    p : float in [1, 2]

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch.robust import ClippedLpLoss
    >>> ClippedLpLoss(1.5, p=1)(np.array([-0.5, 3.0]))
    array([0.5, 1.5])
    """

    def __init__(self, tau, p=2):
        self.tau = _check_tau(tau)
        self.p = _check_p(p)

    def __repr__(self):
        return f"ClippedLpLoss(tau={self.tau:g}, p={self.p:g})"

    def value(self, a):
        a, xp = _residuals(a)
        return xp.minimum(xp.abs(a), self.tau) ** self.p

    def weight(self, a):
        a, xp = _residuals(a)
        b = xp.maximum(xp.abs(a), 1e-8 * self.tau)
        return xp.where(xp.abs(a) <= self.tau, self.p * b ** (self.p - 2), 0.0)


class HuberLoss(_Loss):
    """Huber's loss: ``a²/(2τ)`` for ``|a| <= τ``, ``|a| − τ/2`` beyond (for comparison).

    Not flat beyond τ, so it does not satisfy Assumption 1's condition 5;
    it is convex, which makes it a good start for Tukey IRLS.

    Parameters
    ----------
    tau : float, 1.5e-154 <= tau <= 1.3e154 (τ² finite and normal in float64)
        Where the loss turns from quadratic to linear.

    Examples
    --------
    >>> import numpy as np
    >>> from gpusketch.robust import HuberLoss
    >>> HuberLoss(1.0)(np.array([0.5, 3.0]))
    array([0.125, 2.5  ])
    """

    def __init__(self, tau):
        self.tau = _check_tau(tau)

    def __repr__(self):
        return f"HuberLoss(tau={self.tau:g})"

    def value(self, a):
        a, xp = _residuals(a)
        r = xp.abs(a)
        return xp.where(r <= self.tau, r * r / (2 * self.tau), r - self.tau / 2)

    def weight(self, a):
        a, xp = _residuals(a)
        r = xp.abs(a)
        return xp.where(r <= self.tau, 1.0 / self.tau, 1.0 / xp.maximum(r, self.tau))
