"""Split-conformal calibration of the served ``estimated_radius``: a factor times a served statistic
that understates the distance a minimal-norm attack finds, on a chosen share of inputs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from tfrobust import norms
from tfrobust.serving.signatures import RADIUS_STATISTICS, robustness_outputs

__all__ = [
    "conformal_factor",
    "choose_statistic",
    "calibrate_radius",
]


def conformal_factor(distance, statistic, coverage: float) -> float:
    """The largest ``c`` such that ``distance >= c * statistic`` for at least ``coverage`` of the
    examples, with the split-conformal correction: the ``floor((n + 1)(1 - coverage))``-th smallest
    ratio ``distance / statistic`` (the smallest if that index is 0). Distances of ``inf`` (nothing
    adversarial found) count as infinitely far.

    On fresh examples exchangeable with these, ``distance >= c * statistic`` then holds with
    probability at least ``coverage`` (Vovk et al.; Angelopoulos & Bates 2021, split conformal).
    """
    _check_coverage(coverage)
    d = np.asarray(distance, float)
    ratio = np.sort(d / np.maximum(np.asarray(statistic, float), norms.TINY))
    if len(ratio) == 0:
        raise ValueError("conformal_factor needs at least one calibration example")
    k = int(np.floor((len(ratio) + 1) * (1.0 - coverage) + 1e-9))  # 1e-9: 1 - 0.9 is 0.0999...
    return float(ratio[max(k, 1) - 1])


def _check_coverage(coverage) -> None:
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 < coverage < 1:
        raise ValueError(f"coverage={coverage!r} must be a number strictly between 0 and 1")


def choose_statistic(distance, statistics: dict, coverage: float) -> str:
    """The statistic whose conformal radius is tightest: the largest median ``radius / distance``
    (over the inputs where a distance was found) among ``statistics`` (name -> values)."""
    d = np.asarray(distance, float)
    found = np.isfinite(d) & (d > 0)
    if not found.any():
        return next(iter(statistics))
    score = {}
    for name, values in statistics.items():
        v = np.asarray(values, float)
        score[name] = float(np.median(conformal_factor(d, v, coverage) * v[found] / d[found]))
    return max(score, key=score.__getitem__)


def calibrate_radius(model: Callable, x, *, norm: str, coverage: float = 0.9, attack: str = "fmn+fab",
                     steps: int = 100, batch_size: int = 250, statistic: str = "auto",
                     progress: bool = False) -> dict:
    """Fits ``estimated_radius = factor * statistic`` on calibration inputs ``x``.

    Per input, the minimal-norm ``attack`` (:func:`tfrobust.evaluation.minimal_distances`) finds
    the distance to the nearest input of another predicted class; ``factor`` is
    :func:`conformal_factor` of those distances over the served statistic (``effective_margin``
    or ``margin``). The radius then understates the distance found for at least ``coverage`` of
    fresh inputs like these. ``statistic="auto"`` picks the statistic on the first half of ``x``
    (:func:`choose_statistic`: the score study found the raw margin tighter on robust models) and
    fits the factor on the second half, so the choice does not bias the coverage. The attack's
    distance is itself an upper bound on the true one, so the radius is a calibrated estimate,
    not a certificate. Use inputs the model did not train on (the recipes hold out the last
    5,000 training images).

    Returns:
        The ``calibration`` dict :func:`export_saved_model` takes and writes to the metadata.

    Raises:
        ValueError: naming a bad coverage, norm, statistic or attack, or an empty calibration set.
    """
    from tfrobust.attacks import Budget  # pylint: disable=import-outside-toplevel
    from tfrobust.evaluation import minimal_distances  # pylint: disable=import-outside-toplevel

    norms.validate_norm(norm)
    _check_coverage(coverage)
    if statistic != "auto" and statistic not in RADIUS_STATISTICS:
        raise ValueError(f"statistic={statistic!r} must be 'auto' or one of {RADIUS_STATISTICS}")
    x = np.asarray(x, np.float32)
    if len(x) < (2 if statistic == "auto" else 1):
        raise ValueError(f"calibrate_radius needs at least {2 if statistic == 'auto' else 1} calibration "
                         f"inputs, got {len(x)}")
    fn = tf.function(lambda t: robustness_outputs(model, t, norm))
    parts = [fn(tf.constant(x[s:s + batch_size])) for s in range(0, len(x), batch_size)]
    stats = {k: np.concatenate([p[k].numpy() for p in parts]) for k in RADIUS_STATISTICS}
    pred = np.concatenate([p["predicted_class"].numpy() for p in parts])
    budget = Budget(norm=norm, fab_steps=steps, fmn_steps=steps)
    dist = minimal_distances(model, x, pred, attack, budget, batch_size=batch_size, progress=progress)
    fit = np.arange(len(x))
    if statistic == "auto":
        half = len(x) // 2
        statistic = choose_statistic(dist[:half], {k: v[:half] for k, v in stats.items()}, coverage)
        fit = fit[half:]
    factor = conformal_factor(dist[fit], stats[statistic][fit], coverage)
    return {"factor": factor, "statistic": statistic, "coverage": float(coverage), "n": int(len(fit)),
            "n_choice": int(len(x) - len(fit)), "norm": norm, "attack": attack, "steps": int(steps),
            "found": float(np.isfinite(dist).mean()),
            "calibration_coverage": float((dist[fit] >= factor * stats[statistic][fit]).mean()),
            "meaning": f"estimated_radius = factor * {statistic}: the {attack} distance to another predicted "
                       f"class exceeded it on {coverage:.0%} of calibration inputs (split conformal)"}
