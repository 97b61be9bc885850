"""The signatures of an exported version: their outputs and settings, as pure TensorFlow functions.

:func:`tfrobust.serving.export.export_saved_model` registers them (docs/architecture.md):

* ``serving_default``: ``logits`` and ``probabilities``;
* ``robustness``: ``logits``, ``probabilities``, ``predicted_class``,
  ``margin`` (top-1 minus top-2 logit), ``grad_norm`` (dual norm of the
  margin's input gradient for the threat norm chosen at export time) and
  ``effective_margin`` (``margin / grad_norm``: a first-order estimate of the
  distance to the decision boundary, in input units); optionally
  ``estimated_radius`` (:mod:`tfrobust.serving.calibration`) and ``certified_radius``
  (:func:`certify_settings`);
* ``smoothed`` (optional, :func:`smoothing_settings`): the randomized-smoothing classifier.

All take one float32 tensor named ``inputs`` of shape ``[None, H, W, C]``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from tfrobust import bounds, losses, norms
from tfrobust.attacks.base import check_clip
from tfrobust.models import unwrap
from tfrobust.smoothing import core as smoothing_core
from tfrobust.smoothing.stats import check_alpha
from tfrobust.utils import check_positive, check_positive_int

__all__ = [
    "INPUT_NAME",
    "SERVING_OUTPUTS",
    "ROBUSTNESS_OUTPUTS",
    "SIGNATURES",
    "SMOOTHED_OUTPUTS",
    "RADIUS_STATISTICS",
    "serving_outputs",
    "robustness_outputs",
    "certify_settings",
    "smoothing_settings",
    "smoothed_outputs",
]


INPUT_NAME = "inputs"
"""Name of the single input of both signatures."""

SERVING_OUTPUTS = ("logits", "probabilities")
"""Outputs of ``serving_default``."""

ROBUSTNESS_OUTPUTS = (
    "logits", "probabilities", "predicted_class", "margin", "grad_norm", "effective_margin")
"""Outputs of ``robustness`` (docs/architecture.md)."""

SIGNATURES = ("serving_default", "robustness")
"""Signature names, in registration order (plain prediction first, docs/architecture.md); an
export with ``smoothing`` adds ``smoothed``."""

SMOOTHED_OUTPUTS = ("smoothed_class", "certified_radius_l2", "p_a_lower")
"""Outputs of ``smoothed``: the smoothed classifier's class (-1 = abstain), its certified L2 radius
and the lower confidence bound on the top class's probability (Cohen et al.'s CERTIFY)."""


def _logits(model: Callable, x: tf.Tensor) -> tf.Tensor:
    return tf.cast(model(x, training=False), tf.float32)


def serving_outputs(model: Callable, x: tf.Tensor) -> dict[str, tf.Tensor]:
    """Outputs of the ``serving_default`` signature.

    Args:
        model: a Keras classifier returning logits ``[batch, classes]``.
        x: float32 inputs ``[batch, H, W, C]``.

    Returns:
        ``{"logits": [batch, classes], "probabilities": [batch, classes]}``.
    """
    logits = _logits(model, x)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}


RADIUS_STATISTICS = ("effective_margin", "margin")
"""Served statistics an ``estimated_radius`` can scale."""


def robustness_outputs(model: Callable, x: tf.Tensor, norm: str = "l2",
                       radius_factor: float | None = None,
                       radius_statistic: str = "effective_margin",
                       certify: dict | None = None) -> dict[str, tf.Tensor]:
    """Outputs of the ``robustness`` signature, one value per example.

    The margin is ``top2_margin`` of the logits (the decision margin of the
    predicted class). Its input gradient is taken for the *sum* of the
    per-example margins, which equals the per-example gradient because the
    model runs in inference mode (no coupling between examples).

    Args:
        model: a Keras classifier returning logits ``[batch, classes]``.
        x: inputs ``[batch, ...]``.
        norm: threat norm; ``grad_norm`` is its dual norm (L1 for ``"linf"``,
            L2 for ``"l2"``).
        radius_factor: if given, also ``estimated_radius = radius_factor *
            <radius_statistic>``, the calibrated radius of :func:`calibrate_radius`.
        radius_statistic: one of :data:`RADIUS_STATISTICS`.
        certify: if given (from :func:`certify_settings`), also ``certified_radius``: the
            largest L∞ radius at which bound propagation proves ``predicted_class``, found by
            bisection to ``tolerance`` below the true provable radius, 0 where none is proven.

    Returns:
        A dict with float32 ``logits``, ``probabilities`` ``[batch, classes]``,
        int64 ``predicted_class`` and float32 ``margin``, ``grad_norm``,
        ``effective_margin`` ``[batch]``. ``effective_margin`` divides by
        ``max(grad_norm, tfrobust.norms.TINY)`` (1e-12), so a flat model gives a large finite value.

    Raises:
        ValueError: for an unsupported ``norm``.
    """
    norms.validate_norm(norm)
    x = tf.convert_to_tensor(x, tf.float32)
    logits, margin, grad_norm = losses.margin_and_gradient_norm(model, x, norm=norm, dtype=tf.float32)
    out = {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits, axis=-1),
        "predicted_class": tf.argmax(logits, axis=-1, output_type=tf.int64),
        "margin": margin,
        "grad_norm": grad_norm,
        "effective_margin": norms.safe_ratio(margin, grad_norm),
    }
    if radius_factor is not None:
        out["estimated_radius"] = tf.constant(float(radius_factor), tf.float32) * out[radius_statistic]
    if certify is not None:
        radius, _ = bounds.certified_radius(
            unwrap(model), x, method=certify["method"], clip=tuple(certify["clip"]),
            max_eps=certify["max_eps"], tolerance=certify["tolerance"])
        out["certified_radius"] = radius
    return out


def certify_settings(method: str, clip: Sequence[float] = (0.0, 1.0), tolerance: float = 1.0 / 512,
                     max_eps: float | None = None) -> dict:
    """Checked settings of a served ``certified_radius``, as written to the version's metadata.

    Args:
        method: ``"ibp"`` or ``"crown-ibp"``.
        clip: the valid input range (the ball is cut to it).
        tolerance: the bisection's width: the served radius is proven, and the largest
            provable one lies less than ``tolerance`` above it.
        max_eps: the largest radius tried; default the clip range's width.

    Raises:
        ValueError: naming a bad method, clip range or tolerance.
    """
    if method not in bounds.BOUND_METHODS:
        raise ValueError(f"certify method={method!r} is unknown; choose one of {list(bounds.BOUND_METHODS)}")
    check_clip(tuple(clip))
    lo, hi = (float(c) for c in clip)
    max_eps = float(hi - lo) if max_eps is None else float(max_eps)
    steps = bounds.bisection_steps(max_eps, float(tolerance))
    return {"method": method, "norm": "linf", "clip": [lo, hi], "max_eps": max_eps,
            "tolerance": float(tolerance), "bisection_steps": steps,
            "meaning": f"the largest L∞ radius (bisection, {steps} steps, tolerance {float(tolerance):.3g}) at "
                       f"which {method} proves predicted_class for every input of the ball within the clip "
                       "range; 0 where it proves none"}


def smoothing_settings(sigma: float, n: int = 1000, alpha: float = 0.001, n0: int = 100,
                       batch_size: int = 1000, seed: int | None = None) -> dict:
    """Checked settings of a served ``smoothed`` signature, as written to the version's metadata.

    Args:
        sigma: the noise level the base classifier was trained for.
        n: estimation draws per example (Cohen et al.'s ``n``).
        alpha: each certificate fails with probability at most ``alpha``.
        n0: selection draws per example.
        batch_size: noisy inputs per forward pass inside the signature.
        seed: ``None`` draws a fresh noise seed per request (the certificate's guarantee is over
            that draw); an integer fixes it, so a request's answer equals
            :func:`tfrobust.smoothing.certify` with that seed.

    Raises:
        ValueError: naming a bad value.
    """
    sigma = check_positive("sigma", sigma)
    n, n0, batch_size = (check_positive_int(k, v) for k, v in (("n", n), ("n0", n0), ("batch_size", batch_size)))
    alpha = check_alpha(alpha)
    if seed is not None:
        seed = smoothing_core.check_seed(seed)
    return {"sigma": sigma, "n": n, "alpha": alpha, "n0": n0, "batch_size": batch_size, "seed": seed,
            "norm": "l2", "noise": "fresh per request" if seed is None else f"fixed seed {seed}",
            "meaning": f"Cohen et al.'s CERTIFY with {n0} selection and {n} estimation draws of "
                       f"N(0, {sigma:g}^2 I): smoothed_class is constant within certified_radius_l2 (L2) "
                       f"with probability at least {1 - alpha:g}; -1 = abstain (radius 0)"}


def smoothed_outputs(model: Callable, x: tf.Tensor, smoothing: dict, num_classes: int) -> dict[str, tf.Tensor]:
    """Outputs of the ``smoothed`` signature (:data:`SMOOTHED_OUTPUTS`), from :func:`smoothing_settings`."""
    seed = smoothing["seed"]
    seed = (tf.random.uniform([], 0, smoothing_core.MAX_SEED, dtype=tf.int64) if seed is None
            else tf.constant(seed, tf.int64))
    return smoothing_core.certify_graph(unwrap(model), tf.convert_to_tensor(x, tf.float32), smoothing["sigma"],
                              smoothing["n0"], smoothing["n"], smoothing["alpha"], smoothing["batch_size"],
                              seed, num_classes)
