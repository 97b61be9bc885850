"""Minimal-norm attacks: FAB (Croce & Hein 2020) and FMN (Pintor et al. 2021).

A bounded attack answers "is there an adversarial input within eps?"; these
answer "how far is the nearest adversarial input?". Both return the closest
adversarial point they found and its distance per example (``inf`` where they
found none, ``0`` where the input is misclassified already), so one run gives
robust accuracy at every eps at once (:mod:`tfrobust.evaluation.curve`).
"""

from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks.base import (
    check_fraction,
    check_number,
    check_static_int,
    clip_to_range,
    prepare_inputs,
    ranked_class,
    resolve_labels,
)

__all__ = ["project_onto_hyperplane", "fab", "fmn"]

_BISECTIONS = 40


def project_onto_hyperplane(w: tf.Tensor, r: tf.Tensor, low: tf.Tensor | None, high: tf.Tensor | None,
                            norm: str) -> tf.Tensor:
    """The smallest step ``delta`` with ``w . delta = r`` and ``low <= delta <= high``, per row.

    The minimiser is ``delta_i = sign(w_i) min(t a_i, cap_i)`` (with ``r >= 0``;
    a negative ``r`` flips ``w``), where ``cap_i`` is how far coordinate ``i``
    can move in its helpful direction, ``a_i = 1`` for L∞ (every coordinate
    moves by the same ``t`` until it hits the box) and ``a_i = |w_i|`` for L2
    (the KKT point ``clip(t w, low, high)``). ``w . delta`` grows monotonically
    with ``t``, so ``t`` is found by bisection between the unconstrained
    solution and the point where every coordinate is capped. Where the box
    makes the plane unreachable the result is the capped step (the most
    progress towards it).

    Args:
        w: normals, shape ``[batch, d]``.
        r: required ``w . delta``, shape ``[batch]``.
        low, high: box bounds on ``delta`` (``low <= 0 <= high``), shape ``[batch, d]``,
            or ``None`` for no box (closed form).
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        ``delta``, shape ``[batch, d]``.
    """
    norms.validate_norm(norm)
    sign = tf.where(r < 0, -tf.ones_like(r), tf.ones_like(r))[:, None]
    w = w * sign
    r = tf.abs(r)
    mag = tf.abs(w)
    a = tf.ones_like(w) if norm == "linf" else mag
    t_free = r / tf.maximum(tf.reduce_sum(mag * a, -1), norms.TINY)
    direction = tf.sign(w)
    if low is None:
        return direction * a * t_free[:, None]
    cap = tf.where(w > 0, high, tf.where(w < 0, -low, tf.zeros_like(w)))
    cap = tf.maximum(cap, 0.0)
    moving = a > 0
    t_cap = tf.reduce_max(tf.where(moving, cap / tf.where(moving, a, 1.0), tf.zeros_like(a)), -1)
    lo_t = tf.minimum(t_free, t_cap)
    hi_t = t_cap

    def progress(t):
        return tf.reduce_sum(mag * tf.minimum(t[:, None] * a, cap), -1)

    for _ in range(_BISECTIONS):  # static: a fixed number of halvings, graph-friendly
        mid = 0.5 * (lo_t + hi_t)
        enough = progress(mid) >= r
        hi_t = tf.where(enough, mid, hi_t)
        lo_t = tf.where(enough, lo_t, mid)
    return direction * tf.minimum(hi_t[:, None] * a, cap)


def _flat(t: tf.Tensor) -> tf.Tensor:
    return tf.reshape(t, [tf.shape(t)[0], -1])


def _bounds(x_flat: tf.Tensor, clip):
    if clip is None:
        return None, None
    return tf.cast(clip[0], x_flat.dtype) - x_flat, tf.cast(clip[1], x_flat.dtype) - x_flat


def _check_fab_settings(steps: int, eta: float, beta: float, alpha_max: float) -> None:
    """Raises ValueError naming the first bad FAB setting."""
    check_static_int("steps", steps)
    for name, value in (("eta", eta), ("beta", beta)):
        check_number(name, value, positive=True)
    check_fraction("alpha_max", alpha_max)
    check_fraction("beta", beta)


def _fab_linearise(model: Callable, z: tf.Tensor, shape: tf.Tensor, labels: tf.Tensor, target: tf.Tensor | None,
                   num_classes: int | None, norm: str, training: bool,
                   dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
    """``f_j - f_y`` at the flat points ``z`` (of image ``shape``) and its flat gradient, for the class
    ``j`` whose linearised boundary is nearest in the ``norm`` (or the ``target``), as ``dtype``."""
    zi = tf.reshape(z, shape)
    if target is not None:
        with tf.GradientTape() as tape:
            tape.watch(zi)
            logits = losses.logits_of(model, zi, training)
            f = tf.gather(logits, target, batch_dims=1) - tf.gather(logits, labels, batch_dims=1)
        return tf.cast(f, dtype), _flat(tape.gradient(f, zi))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(zi)
        logits = losses.logits_of(model, zi, training)
        columns = tf.unstack(logits, num=num_classes, axis=1)
    # One gradient per class (not batch_jacobian: its pfor retraces on every eager call).
    jac = tf.stack([_flat(tape.gradient(c, zi)) for c in columns], 1)
    del tape
    diff_f = logits - tf.gather(logits, labels, batch_dims=1)[:, None]
    diff_w = jac - tf.gather(jac, labels, batch_dims=1)[:, None, :]
    dist = tf.abs(diff_f) / tf.maximum(_dual_rows(diff_w, norm), norms.TINY)
    dist = tf.where(tf.one_hot(labels, tf.shape(logits)[1]) > 0, tf.cast(math.inf, dist.dtype), dist)
    j = tf.argmin(dist, -1, output_type=tf.int32)
    return tf.cast(tf.gather(diff_f, j, batch_dims=1), dtype), tf.gather(diff_w, j, batch_dims=1)


def _fab_move(z: tf.Tensor, x0: tf.Tensor, f: tf.Tensor, w: tf.Tensor, bounds0: tuple, clip, norm: str,
              eta: tf.Tensor, alpha_max: tf.Tensor) -> tf.Tensor:
    """One FAB step from the flat points ``z``: the mix of the projections of ``z`` and of the
    original ``x0`` onto the plane ``f + w.(. - z) = 0`` (inside the clip box; ``bounds0`` is the box
    around ``x0``), extrapolated by ``eta``, weighted towards ``x0`` by at most ``alpha_max``, clipped."""
    low0, high0 = bounds0
    low, high = _bounds(z, clip)
    d_cur = project_onto_hyperplane(w, -f, low, high, norm)
    d_orig = project_onto_hyperplane(w, -(f + tf.reduce_sum(w * (x0 - z), -1)), low0, high0, norm)
    n_cur = norms.per_example_norm(d_cur, norm)
    n_orig = norms.per_example_norm(d_orig, norm)
    alpha = tf.minimum(n_cur / tf.maximum(n_cur + n_orig, norms.TINY), alpha_max)[:, None]
    z_new = (1.0 - alpha) * (z + eta * d_cur) + alpha * (x0 + eta * d_orig)
    return clip_to_range(z_new, clip)


def fab(
    model: Callable,
    x,
    y=None,
    *,
    norm: str = "linf",
    steps: int = 100,
    target_rank: int | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
    eta: float = 1.05,
    beta: float = 0.9,
    alpha_max: float = 0.1,
    training: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Fast Adaptive Boundary attack (Croce & Hein 2020, Algorithm 1), L∞ or L2.

    Each step linearises the model at the current point, picks the class ``j``
    whose linearised boundary ``f_j - f_y = 0`` is nearest (in the threat's norm;
    FAB-T: the fixed target), and moves to a biased mix of the projections of
    the current point and of the original input onto that plane inside the
    clip box (:func:`project_onto_hyperplane`), extrapolated by ``eta``. The
    weight of the original is ``min(|d_cur| / (|d_cur| + |d_orig|), alpha_max)``.
    Once a point is adversarial it is recorded if it is the closest so far,
    and the search steps back towards the original: ``x0 + beta (x - x0)``.
    One run from the original input, no random restarts (AutoAttack's FAB-T).

    Args:
        model: callable mapping inputs to logits.
        x: batch of inputs.
        y: labels (``(N,)``, ``(N, 1)`` or one-hot); ``None`` attacks the prediction.
        norm: ``"linf"`` or ``"l2"``.
        steps: iterations, a Python int.
        target_rank: FAB-T: aim at the boundary of the class with the
            ``target_rank``-th largest clean logit (2 = the runner-up); any
            misclassification still counts. ``None``: untargeted (the full
            input Jacobian each step, one gradient per class).
        clip: valid input range, or ``None``.
        eta: overshoot of each projection (1.05 in the paper).
        beta: backward step towards the original after a success (0.9).
        alpha_max: largest weight of the original's projection (0.1).
        training: the ``training`` flag passed to the model.

    Returns:
        ``(x_adv, distance)``: the closest adversarial point found (``x`` where
        none was) and its ``norm`` distance from ``x`` (``inf`` where none was found).

    Raises:
        ValueError: naming a bad argument.
    """
    _check_fab_settings(steps, eta, beta, alpha_max)
    x = prepare_inputs(model, x, clip=clip, norm=norm)
    dtype = x.dtype
    labels = resolve_labels(model, x, y, targeted=False, training=training)
    clean_logits = losses.logits_of(model, x, training)
    target = None if target_rank is None else ranked_class(clean_logits, target_rank)
    x0 = _flat(x)
    shape = tf.shape(x)
    low0, high0 = _bounds(x0, clip)

    num_classes = clean_logits.shape[-1]
    if target is None and num_classes is None:
        raise ValueError("untargeted fab needs a model with a static number of classes")

    def linearise(z):
        return _fab_linearise(model, z, shape, labels, target, num_classes, norm, training, dtype)

    def fooled(z):
        pred = tf.argmax(losses.logits_of(model, tf.reshape(z, shape), training), -1, output_type=tf.int32)
        return tf.not_equal(pred, labels)

    eta_t, beta_t, alpha_t = (tf.cast(v, dtype) for v in (eta, beta, alpha_max))
    start_fooled = fooled(x0)
    inf = tf.cast(math.inf, dtype)
    best_d = tf.where(start_fooled, tf.zeros_like(start_fooled, dtype), tf.fill(tf.shape(start_fooled), inf))
    best_x = x0

    def body(i, z, best_x, best_d):
        f, w = linearise(z)
        z_new = _fab_move(z, x0, f, w, (low0, high0), clip, norm, eta_t, alpha_t)
        adv = fooled(z_new)
        dist = norms.per_example_norm(z_new - x0, norm)
        better = tf.logical_and(adv, dist < best_d)
        best_x = tf.where(better[:, None], z_new, best_x)
        best_d = tf.where(better, dist, best_d)
        z_new = tf.where(adv[:, None], x0 + beta_t * (z_new - x0), z_new)
        return i + 1, z_new, best_x, best_d

    _, _, best_x, best_d = tf.while_loop(
        lambda i, *_: i < steps, body, (tf.constant(0), x0, best_x, best_d))
    return tf.stop_gradient(tf.reshape(best_x, shape)), tf.stop_gradient(best_d)


def _dual_rows(diff_w: tf.Tensor, norm: str) -> tf.Tensor:
    """Dual norm of each ``[batch, classes, d]`` row along ``d``."""
    if norm == "linf":
        return tf.reduce_sum(tf.abs(diff_w), -1)
    return tf.sqrt(tf.reduce_sum(tf.square(diff_w), -1))


def _cosine(start: float, end: float, k: tf.Tensor, steps: int) -> tf.Tensor:
    return end + 0.5 * (start - end) * (1.0 + tf.cos(math.pi * tf.cast(k, tf.float32) / max(steps, 1)))


def fmn(
    model: Callable,
    x,
    y=None,
    *,
    norm: str = "linf",
    steps: int = 100,
    gamma: float = 0.05,
    gamma_final: float = 0.001,
    alpha: float = 1.0,
    alpha_final: float = 0.01,
    clip: tuple[float, float] | None = (0.0, 1.0),
    training: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Fast Minimum-Norm attack (Pintor et al. 2021, Algorithm 1), L∞ or L2.

    A descent on the logit margin ``L = z_y - max_{j != y} z_j`` inside a ball
    whose radius ``eps`` adapts per example: before anything adversarial is
    found, ``eps`` is the first-order distance ``||delta|| + L / ||grad L||_dual``
    times ``1 + gamma_k`` (the overshoot keeps a linear model from landing exactly on its
    boundary for ever);
    after, it shrinks by ``1 - gamma_k`` (and never exceeds the best distance)
    while the point is adversarial and grows by ``1 + gamma_k`` while it is
    not. Each step moves ``alpha_k * eps`` along the threat's steepest
    descent direction, then projects onto the ball and the clip box; ``gamma_k``
    and ``alpha_k`` anneal with a cosine. Our step is scaled by the current
    radius (the paper uses a fixed L2-normalised step): one setting serves
    L∞ and L2 and inputs of any scale.

    Args:
        model: callable mapping inputs to logits.
        x: batch of inputs.
        y: labels; ``None`` attacks the prediction.
        norm: ``"linf"`` or ``"l2"``.
        steps: iterations, a Python int.
        gamma, gamma_final: radius change factor, start and end of the cosine.
        alpha, alpha_final: step as a fraction of the radius, start and end.
        clip: valid input range, or ``None``.
        training: the ``training`` flag passed to the model.

    Returns:
        ``(x_adv, distance)`` as :func:`fab`.

    Raises:
        ValueError: naming a bad argument.
    """
    check_static_int("steps", steps)
    for name, value in (("gamma", gamma), ("gamma_final", gamma_final)):
        check_fraction(name, value)
    for name, value in (("alpha", alpha), ("alpha_final", alpha_final)):
        check_number(name, value, positive=True)
    x = prepare_inputs(model, x, clip=clip, norm=norm)
    dtype = x.dtype
    labels = resolve_labels(model, x, y, targeted=False, training=training)
    inf = tf.cast(math.inf, dtype)
    batch = tf.shape(x)[0]

    def margin_and_grad(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            logits = losses.logits_of(model, z, training)
            margin = tf.cast(losses.decision_margin(logits, labels), dtype)
        grad = tape.gradient(margin, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        pred = tf.argmax(logits, -1, output_type=tf.int32)
        return margin, grad, tf.not_equal(pred, labels)

    def body(k, delta, eps, best_x, best_d):
        z = x + delta
        margin, grad, adv = margin_and_grad(z)
        size = norms.per_example_norm(delta, norm)
        better = tf.logical_and(adv, size < best_d)
        best_x = tf.where(norms.expand_like(better, x), z, best_x)
        best_d = tf.where(better, size, best_d)
        g = tf.cast(_cosine(gamma, gamma_final, k, steps), dtype)
        first_order = size + margin / tf.maximum(norms.dual_norm(grad, norm), norms.TINY)
        eps = tf.where(adv, tf.minimum(eps * (1.0 - g), best_d),
                       (1.0 + g) * tf.where(tf.math.is_finite(best_d), eps, first_order))
        step = tf.cast(_cosine(alpha, alpha_final, k, steps), dtype) * eps
        delta = delta - norms.steepest_step(grad, norm) * norms.expand_like(step, x)
        delta = norms.project(delta, eps, norm)
        delta = clip_to_range(x + delta, clip) - x
        return k + 1, delta, eps, best_x, best_d

    state = (tf.constant(0), tf.zeros_like(x), tf.zeros([batch], dtype), x, tf.fill([batch], inf))
    _, delta, _, best_x, best_d = tf.while_loop(lambda k, *_: k < steps, body, state)
    _, _, adv = margin_and_grad(x + delta)  # the last step's point
    size = norms.per_example_norm(delta, norm)
    better = tf.logical_and(adv, size < best_d)
    best_x = tf.where(norms.expand_like(better, x), x + delta, best_x)
    best_d = tf.where(better, size, best_d)
    return tf.stop_gradient(best_x), tf.stop_gradient(best_d)

