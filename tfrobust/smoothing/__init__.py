"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): certify, predict, attack.

The smoothed classifier ``g(x) = argmax_c P(f(x + N(0, σ² I)) = c)`` of a base classifier ``f``
is constant within the L2 radius ``σ Φ⁻¹(p_A)`` around ``x``, where ``p_A`` is the probability of
its top class. :func:`certify` estimates a lower confidence bound on ``p_A`` by Monte Carlo
(Clopper–Pearson) and returns the radius it proves; :func:`predict` returns ``g(x)`` or abstains
(:data:`ABSTAIN`) by a two-sided binomial test on the top-2 counts. :func:`sample_counts` draws the
noise in-graph from stateless seeds, so counts depend on ``seed`` and not on ``batch_size``.
:func:`smooth_adv_pgd` attacks ``g`` itself (Salman et al. 2019). Training for smoothing lives in
:mod:`tfrobust.objectives` (``GaussianNoise``, ``Consistency``).
"""

from tfrobust.smoothing.attack import smooth_adv_pgd, smoothed_log_probability
from tfrobust.smoothing.core import (ABSTAIN, certified_accuracy, certify, predict, sample_counts,
                                     smoothed_radius)
from tfrobust.smoothing.stats import binomial_test_two_sided, clopper_pearson_lower

__all__ = [
    "ABSTAIN",
    "clopper_pearson_lower",
    "binomial_test_two_sided",
    "sample_counts",
    "predict",
    "certify",
    "smoothed_radius",
    "certified_accuracy",
    "smoothed_log_probability",
    "smooth_adv_pgd",
]
