"""Certificates from bounds: which predictions are proven at eps, and each input's certified radius."""

from __future__ import annotations

import math

import tensorflow as tf

from tfrobust.bounds.propagate import margin_lower_bounds

__all__ = ["is_verified", "verified", "certified_radius", "bisection_steps"]


def is_verified(bounds: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """True where every margin bound but the label's own is positive: ``bounds`` is ``(B, K)``."""
    own = tf.one_hot(tf.cast(y, tf.int32), tf.shape(bounds)[-1], on_value=True, off_value=False)
    return tf.reduce_all(tf.logical_or(own, bounds > 0), axis=-1)


def verified(model, x, y, eps, *, method: str = "ibp",
             clip: tuple[float, float] | None = (0.0, 1.0)) -> tf.Tensor:
    """Per example, whether the bound proves class ``y`` everywhere in the L∞ ball of radius ``eps``.

    A misclassified example is never verified at eps = 0 or above: its own margin is negative there.
    """
    bounds = margin_lower_bounds(model, x, y, eps, method=method, clip=clip)
    return is_verified(bounds, tf.reshape(tf.cast(y, tf.int32), [-1]))


def bisection_steps(max_eps: float, tolerance: float) -> int:
    """Halvings that shrink ``[0, max_eps]`` to an interval no wider than ``tolerance``."""
    if not tolerance > 0 or not max_eps > 0:
        raise ValueError(f"tolerance={tolerance!r} and max_eps={max_eps!r} must be positive")
    return max(0, math.ceil(math.log2(max_eps / tolerance)))


def certified_radius(model, x, *, method: str = "ibp", clip: tuple[float, float] | None = (0.0, 1.0),
                     max_eps: float = 1.0, tolerance: float = 1.0 / 512) -> tuple[tf.Tensor, tf.Tensor]:
    """The largest L∞ radius at which the bound proves the predicted class, by bisection.

    The returned radius is proven (the bound verifies the prediction at it), and the true
    largest provable radius lies within ``tolerance`` above it (below ``max_eps``). Inputs
    whose prediction the bound cannot prove at any radius tried get 0. Graph-safe and batched.

    Args:
        model: a Sequential or functional classifier that outputs logits.
        x: inputs.
        method: ``"ibp"`` or ``"crown-ibp"``.
        clip: the valid input range (a ball that reaches past it is cut to it).
        max_eps: the largest radius tried (``clip``'s width covers every input in the box).
        tolerance: the width left to bisection.

    Returns:
        ``(radius, predicted)``: per example the certified radius (float32) and the predicted class.
    """
    steps = bisection_steps(max_eps, tolerance)
    x = tf.convert_to_tensor(x)
    logits = tf.cast(model(x, training=False), tf.float32)
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    batch = tf.shape(x)[0]
    low = tf.zeros([batch], tf.float32)
    high = tf.fill([batch], tf.cast(max_eps, tf.float32))
    at_max = verified(model, x, predicted, high, method=method, clip=clip)
    for _ in range(steps):
        mid = (low + high) / 2
        ok = verified(model, x, predicted, mid, method=method, clip=clip)
        low, high = tf.where(ok, mid, low), tf.where(ok, high, mid)
    radius = tf.where(at_max, high, low)
    return radius, predicted
