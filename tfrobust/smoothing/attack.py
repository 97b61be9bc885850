"""SmoothAdv (Salman et al. 2019): L2 PGD on the soft smoothed classifier."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks.base import (check_number, check_static_int, clip_to_range,
                                   prepare_inputs, resolve_labels)
from tfrobust.smoothing.core import check_seed
from tfrobust.utils import check_positive, check_positive_int, scalar

__all__ = ["smoothed_log_probability", "smooth_adv_pgd"]


def smoothed_log_probability(model: Callable, x: tf.Tensor, y: tf.Tensor, noise: tf.Tensor,
                             training: bool = False) -> tf.Tensor:
    """``log((1/m) Σ_i softmax(f(x + noise_i))_y)`` per example: the soft smoothed classifier.

    Args:
        model: the base classifier (logits).
        x: inputs ``[B, ...]``.
        y: integer labels ``[B]``.
        noise: ``[m, B, ...]``, already scaled by σ.
        training: the model's flag.
    """
    m = tf.shape(noise)[0]
    batch = tf.shape(x)[0]
    noisy = tf.reshape(x[None] + noise, tf.concat([[-1], tf.shape(x)[1:]], 0))
    log_probs = tf.nn.log_softmax(losses.logits_of(model, noisy, training), axis=-1)
    log_probs = tf.reshape(log_probs, tf.stack([m, batch, -1]))
    onehot = tf.one_hot(tf.cast(y, tf.int32), tf.shape(log_probs)[-1], dtype=log_probs.dtype)
    picked = tf.reduce_sum(log_probs * onehot[None], axis=-1)
    return tf.reduce_logsumexp(picked, axis=0) - tf.math.log(tf.cast(m, picked.dtype))


def smooth_adv_pgd(model: Callable, x, y=None, *, sigma: float, eps: float | tf.Tensor, steps: int = 10, m: int = 8,
                   step_size: float | None = None, clip: tuple[float, float] | None = (0.0, 1.0),
                   seed: int = 0) -> tf.Tensor:
    """SmoothAdv's attack on ``g``: L2 PGD maximising the soft smoothed classifier's cross-entropy.

    Maximises ``-log((1/m) Σ_i softmax(f(x' + δ_i))_y)`` over ``‖x' - x‖₂ <= eps`` (and ``clip``),
    with ``m`` noise draws ``δ_i ~ N(0, σ² I)`` drawn once from ``seed`` and kept for every step, as
    Salman et al. do; steepest L2 steps of ``step_size`` (default ``2.5 eps / steps``) from ``x``.
    Graph-safe; the result is under ``stop_gradient``.

    Args:
        model: the base classifier (logits).
        x: inputs inside ``clip``.
        y: labels; ``None`` attacks the base classifier's prediction.
        sigma: the smoothing noise.
        eps: L2 radius, a scalar or one per example ``[B]``.
        steps: PGD steps (a Python int).
        m: noise draws per step (a Python int).
        step_size: L2 length of each step.
        clip: the valid input range; ``None`` leaves inputs unclipped.
        seed: seed of the noise draws.

    Returns:
        Adversarial inputs, same shape and dtype as ``x``.
    """
    sigma = check_positive("sigma", sigma)
    check_number("eps", eps)
    check_static_int("steps", steps)
    m, seed = check_positive_int("m", m), check_seed(seed)
    x = prepare_inputs(model, x, clip=clip, norm="l2")
    y = resolve_labels(model, x, y, targeted=False)
    eps = tf.cast(eps, x.dtype)
    step = eps * (2.5 / max(steps, 1)) if step_size is None else tf.cast(step_size, x.dtype)
    ones = tf.ones([x.shape.rank - step.shape.rank], tf.int32)
    step = tf.reshape(step, tf.concat([tf.shape(step), ones], 0))  # one step per example
    noise = scalar(sigma, x.dtype) * tf.random.stateless_normal(tf.concat([[m], tf.shape(x)], 0),
                                                                 [seed, 0], dtype=x.dtype)

    def body(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = -tf.reduce_sum(smoothed_log_probability(model, x_adv, y, noise))
        x_adv = x_adv + step * norms.steepest_step(tape.gradient(loss, x_adv), "l2")
        return i + 1, clip_to_range(x + norms.project(x_adv - x, eps, "l2"), clip)

    _, x_adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), x))
    return tf.stop_gradient(x_adv)
