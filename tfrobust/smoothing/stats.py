"""The two statistics of randomized smoothing: Clopper–Pearson bounds and the binomial test."""

from __future__ import annotations

import numpy as np
from scipy import special, stats

__all__ = ["check_alpha", "clopper_pearson_lower", "clopper_pearson_lower_tf", "binomial_test_two_sided"]

BISECTION_STEPS = 60
"""Halvings of ``[0, 1]`` in :func:`clopper_pearson_lower_tf`: 2^-60, below float64's resolution near 1."""


def check_alpha(alpha) -> float:
    """Returns ``alpha`` as float if ``0 < alpha < 1``, else raises ValueError naming it."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha={alpha!r} must be a number in (0, 1)") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"alpha={alpha!r} must be in (0, 1)")
    return value


def _counts(k, n) -> tuple[np.ndarray, np.ndarray]:
    k, n = np.asarray(k), np.asarray(n)
    if not (np.issubdtype(k.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)):
        raise ValueError(f"counts k={k!r} and n={n!r} must be integers")
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"counts need 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")
    return k.astype(np.float64), n.astype(np.float64)


def clopper_pearson_lower_tf(k, n, alpha: float):
    """:func:`clopper_pearson_lower` in TensorFlow ops, for a served signature (float64).

    TF has the regularised incomplete beta ``I_p(a, b)`` (``tf.math.betainc``) but not its inverse:
    the bound ``L`` solves ``I_L(k, n - k + 1) = alpha`` (``P(Binomial(n, L) >= k) = alpha``), and
    ``I_p`` increases with ``p``, so :data:`BISECTION_STEPS` halvings of ``[0, 1]`` find it; the
    result is the lower end of the last bracket, never above the exact bound.

    Args:
        k: successes, an integer tensor ``[B]``.
        n: trials, a Python int or integer scalar.
        alpha: a float in ``(0, 1)``.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  (the numpy API needs no TF)

    k = tf.cast(k, tf.float64)
    n = tf.cast(n, tf.float64)
    a, b = tf.maximum(k, 1.0), n - k + 1.0
    low, high = tf.zeros_like(k), tf.ones_like(k)
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (low + high)
        above = tf.math.betainc(a, b, mid) > alpha
        low, high = tf.where(above, low, mid), tf.where(above, mid, high)
    return tf.where(k > 0, low, tf.zeros_like(low))


def clopper_pearson_lower(k, n, alpha: float) -> np.ndarray:
    """One-sided Clopper–Pearson lower bound on a binomial proportion, at confidence ``1 - alpha``.

    The ``alpha`` quantile of ``Beta(k, n - k + 1)`` (0 when ``k = 0``): with probability at least
    ``1 - alpha`` over ``k ~ Binomial(n, p)`` the bound is at most ``p``. It is the lower end of
    the two-sided exact interval at level ``1 - 2 alpha`` (statsmodels'
    ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``, as Cohen et al. use it).

    Args:
        k: successes (integers, broadcast with ``n``).
        n: trials, ``n >= 1``.
        alpha: failure probability in (0, 1).

    Returns:
        float64 array of the broadcast shape of ``k`` and ``n``.
    """
    alpha = check_alpha(alpha)
    k, n = _counts(k, n)
    safe_k = np.where(k > 0, k, 1.0)
    return np.where(k > 0, special.betaincinv(safe_k, n - k + 1.0, alpha), 0.0)


def binomial_test_two_sided(k, n) -> np.ndarray:
    """Two-sided p-value of ``k`` successes in ``n`` trials under ``p = 1/2`` (exact).

    ``min(1, 2 P(X <= min(k, n - k)))`` for ``X ~ Binomial(n, 1/2)``, which equals
    ``scipy.stats.binomtest(k, n, 0.5).pvalue`` because the null is symmetric.
    """
    k, n = _counts(k, n)
    return np.minimum(1.0, 2.0 * stats.binom.cdf(np.minimum(k, n - k), n, 0.5))
