"""TRADES' inner maximisation: PGD on the KL divergence, and :func:`KLAttack`."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks.base import clip_to_range, prepare_inputs
from tfrobust.utils import scalar

__all__ = [
    "kl_divergence",
    "gaussian_noise",
    "kl_pgd",
    "KLAttack",
]


def kl_divergence(p_logits: tf.Tensor, q_logits: tf.Tensor) -> tf.Tensor:
    """Per-example ``KL(softmax(p_logits) || softmax(q_logits))``, from logits (stable)."""
    log_p = tf.nn.log_softmax(p_logits, axis=-1)
    log_q = tf.nn.log_softmax(q_logits, axis=-1)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def gaussian_noise(shape, dtype: tf.DType = tf.float32, seed: int | None = None) -> tf.Tensor:
    """Standard normal noise, drawn through :func:`tfrobust.norms.random_start`.

    Box–Muller on two uniform draws ``norms.random_start(shape, 1, "linf")``,
    so that every random start of an attack has one patch point: replacing
    ``norms.random_start`` by zeros (as the distribution tests do) makes this
    the constant ``-sqrt(2 ln 2) ≈ -1.177``, deterministic but non-zero.
    """
    second = None if seed is None else seed + 1
    u1 = 0.5 * (1.0 - norms.random_start(shape, 1.0, "linf", dtype=dtype, seed=seed))  # (0, 1]
    u2 = 0.5 * (1.0 + norms.random_start(shape, 1.0, "linf", dtype=dtype, seed=second))  # [0, 1)
    two_pi = tf.constant(6.283185307179586, dtype)
    return tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(two_pi * u2)


def kl_pgd(model: Callable, x, *, eps: float, steps: int, step_size: float, norm: str = "linf",
           init_std: float = 0.001, clip: tuple[float, float] | None = (0.0, 1.0),
           training: bool = False, seed: int | None = None) -> tf.Tensor:
    """TRADES' inner maximisation: PGD on ``KL(p(x) || p(x'))`` (Zhang et al. 2019).

    Starts at ``x + init_std * N(0, 1)`` (the KL's gradient vanishes at
    ``x' = x``), then ``steps`` steepest-ascent steps of ``step_size`` for
    ``norm``, each projected onto the ``eps`` ball around ``x`` and into
    ``clip``; the result is clipped once more. No labels: ``p(x)`` is the
    model's own (stop-gradient) prediction. Graph-safe and pure like
    :mod:`tfrobust.attacks`.

    Returns:
        Adversarial inputs, same shape and dtype as ``x``, without gradient.
    """
    x = prepare_inputs(model, x, clip=clip, norm=norm)
    clean_logits = tf.stop_gradient(losses.logits_of(model, x, training))
    step_size = scalar(step_size, x.dtype)
    x_adv = x + scalar(init_std, x.dtype) * gaussian_noise(tf.shape(x), x.dtype, seed)

    def body(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            objective = tf.reduce_sum(kl_divergence(clean_logits, losses.logits_of(model, x_adv, training)))
        grad = tape.gradient(objective, x_adv)
        x_adv = x_adv + step_size * norms.steepest_step(grad, norm)
        x_adv = clip_to_range(x + norms.project(x_adv - x, eps, norm), clip)
        return i + 1, x_adv

    _, x_adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), x_adv))
    return tf.stop_gradient(clip_to_range(x_adv, clip))


def KLAttack(eps: float = 0.3, steps: int = 10, step_size: float | None = None, norm: str = "linf",
             init_std: float = 0.001):  # pylint: disable=invalid-name  (it was a class in 0.1)
    """TRADES' training attack: ``AttackConfig(name="kl_pgd", ...)`` (see :func:`kl_pgd`).

    ``y`` is ignored when it runs. TRADES' published settings: MNIST eps 0.3, 40 steps of
    0.01; CIFAR-10 eps 8/255 (0.031), 10 steps of 0.007. ``step_size=None`` means
    ``2.5 * eps / steps``.
    """
    from tfrobust.attacks.registry import AttackConfig  # pylint: disable=import-outside-toplevel
    return AttackConfig(name="kl_pgd", eps=eps, steps=steps, step_size=step_size, norm=norm, init_std=init_std)
