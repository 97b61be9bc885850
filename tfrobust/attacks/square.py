"""The score-based black-box Square attack (Andriushchenko et al. 2020), L∞."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tfrobust import keyed_random, losses
from tfrobust.attacks.base import (
    check_fraction,
    check_number,
    check_static_int,
    clip_to_range,
    prepare_inputs,
    resolve_labels,
)

__all__ = [
    "square",
    "square_p_schedule",
]


_SQUARE_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p_schedule(p_init, i, queries) -> tf.Tensor:
    """Fraction of pixels the Square attack changes at iteration ``i`` of ``queries``.

    The published L∞ schedule, written for 10,000 queries and rescaled to the
    budget: with ``it = floor(10000 * i / queries)``, ``p_init`` is halved
    after ``it`` = 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.

    Args:
        p_init: initial fraction.
        i: iteration index (0-based; Python int or integer tensor).
        queries: the query budget.

    Returns:
        A float32 scalar tensor.
    """
    it = (tf.cast(i, tf.int64) * 10000) // tf.maximum(tf.cast(queries, tf.int64), 1)
    halvings = tf.reduce_sum(tf.cast(it > tf.constant(_SQUARE_BOUNDS, tf.int64), tf.int32))
    return tf.cast(p_init, tf.float32) / tf.pow(2.0, tf.cast(halvings, tf.float32))


def _image_view(x: tf.Tensor) -> tuple[int, int, int]:
    """Static ``(height, width, channels)`` of inputs viewed as NHWC images.

    Rank 2 ``[batch, d]`` is one row of ``d`` pixels, rank 3 is single-channel.
    """
    dims = x.shape[1:]
    if not dims.is_fully_defined():
        raise ValueError(f"square needs inputs of fully known shape, got {x.shape}")
    dims = dims.as_list()
    if len(dims) == 1:
        return 1, dims[0], 1
    if len(dims) == 2:
        return dims[0], dims[1], 1
    if len(dims) == 3:
        return dims[0], dims[1], dims[2]
    raise ValueError(f"square supports inputs of rank 2 to 4, got shape {x.shape}")


def _check_square_settings(eps: float, queries: int, p_init: float, retries: int, norm: str) -> None:
    """Raises ValueError naming the first bad Square setting."""
    check_number("eps", eps)
    check_static_int("queries", queries)
    check_fraction("p_init", p_init)
    check_number("retries", retries, integer=True)
    if norm != "linf":
        raise ValueError(f"norm={norm!r}: square supports only 'linf'")


def _base_seed(seed: int | tf.Tensor | None) -> tf.Tensor:
    """The stateless seed pair of the draws: from ``seed``, or drawn at random when ``None``."""
    if seed is None:
        return tf.random.uniform([2], 0, 2 ** 31 - 1, dtype=tf.int64)
    return tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5EED, tf.int64)])


def _draw(keys: tf.Tensor | None, base: tf.Tensor, key, i, j, draw_shape, maxval) -> tf.Tensor:
    """Integers in ``[0, maxval)`` of ``draw_shape`` for draw ``(key, i, j)``: from the per-example
    ``keys``, else from the seed pair ``base``."""
    if keys is not None:
        return keyed_random.keyed_integers(keys, draw_shape, keyed_random.combine(key, i, j), maxval)
    s = base
    for data in (key, i, j):
        s = tf.random.experimental.stateless_fold_in(s, tf.cast(data, tf.int64))
    return tf.random.stateless_uniform(draw_shape, seed=s, minval=0, maxval=maxval, dtype=tf.int32)


def _query(model: Callable, z4: tf.Tensor, shape: tf.Tensor, labels: tf.Tensor, *, targeted: bool, training: bool,
           dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
    """The margin to minimise and the success of the images ``z4`` (reshaped to ``shape``), per example."""
    logits = losses.logits_of(model, tf.reshape(z4, shape), training)
    margin = tf.cast(losses.decision_margin(logits, labels), dtype)
    pred = tf.argmax(logits, -1, output_type=tf.int32)
    if targeted:
        return -margin, tf.equal(pred, labels)
    return margin, tf.not_equal(pred, labels)


def _window_side(i, p_init: float, queries: int, height: int, width: int) -> tf.Tensor:
    """The side of query ``i``'s square window: ``sqrt(p * area)`` (``p * length`` for one-pixel-wide
    inputs) for the scheduled fraction ``p``, rounded, between 1 and the smaller side less one."""
    one_d = min(height, width) == 1
    length = max(height, width)
    side_max = max((length if one_d else min(height, width)) - 1, 1)
    p = tf.cast(square_p_schedule(p_init, i, queries), tf.float64)
    area = p * length if one_d else tf.sqrt(p * height * width)
    return tf.clip_by_value(tf.cast(tf.round(area), tf.int32), 1, side_max)


def _window_mask(side: tf.Tensor, draw_corner: Callable, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """A ``[batch, height, width, 1]`` mask of one square window of ``side`` (1 along a one-pixel
    dimension) per example, its top-left corner drawn by ``draw_corner(key, maxval)`` (key 1: row, 2: column)."""
    height, width = rows.shape[1], cols.shape[2]
    side_h = 1 if height == 1 else side
    side_w = 1 if width == 1 else side
    top = draw_corner(1, height - side_h + 1)
    left = draw_corner(2, width - side_w + 1)
    return ((rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w))[..., None]


def _accept(x_new: tf.Tensor, queried: tuple[tf.Tensor, tf.Tensor], x_best: tf.Tensor, m_best: tf.Tensor,
            fooled: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(x_best, m_best, fooled)`` after keeping each proposal that lowers the margin of an example
    not fooled yet; ``queried`` is the proposals' ``(margin, success)``."""
    m_new, success = queried
    accept = tf.logical_and(m_new < m_best, tf.logical_not(fooled))
    x_best = tf.where(accept[:, None, None, None], x_new, x_best)
    m_best = tf.where(accept, m_new, m_best)
    fooled = tf.logical_or(fooled, tf.logical_and(accept, success))
    return x_best, m_best, fooled


def _proposal(x4: tf.Tensor, x_best: tf.Tensor, mask: tf.Tensor, eps: tf.Tensor, clip, retries: int,
              signs_at: Callable) -> tf.Tensor:
    """``x_best`` with the window ``mask`` of its perturbation overwritten by ``eps`` times the signs
    ``signs_at(j)``, clipped; the signs are redrawn (``j = 1 .. retries``) while that changes nothing."""
    delta = x_best - x4

    def propose(s):
        return clip_to_range(x4 + tf.where(mask, eps * s, delta), clip)

    def unchanged(candidate):
        return tf.reduce_all(tf.abs(candidate - x_best) < 1e-7, axis=[1, 2, 3])

    def redraw(j, s):
        again = unchanged(propose(s))[:, None, None, None]
        return j + 1, tf.where(again, signs_at(j), s)

    s0 = signs_at(0)
    _, s = tf.while_loop(
        lambda j, s: tf.logical_and(j <= retries, tf.reduce_any(unchanged(propose(s)))),
        redraw, (tf.constant(1), s0))
    return propose(s)


def square(
    model: Callable,
    x,
    y=None,
    *,
    eps: float,
    queries: int = 5000,
    p_init: float = 0.8,
    norm: str = "linf",
    clip: tuple[float, float] | None = (0.0, 1.0),
    targeted: bool = False,
    training: bool = False,
    seed: int | tf.Tensor | None = None,
    retries: int = 10,
    keys: tf.Tensor | None = None,
) -> tf.Tensor:
    """Square attack, L∞ (Andriushchenko et al. 2020): score-based random search.

    Uses only the model's logits, never its gradient. Starts from vertical
    stripes (one random ``±eps`` per column and channel), then each query
    proposes to overwrite one random square window with one random ``±eps``
    per channel (a proposal that would leave the point unchanged is redrawn, up
    to ``retries`` times) and keeps it only if the margin
    ``z_y - max_{i≠y} z_i`` decreases. The window covers a fraction
    :func:`square_p_schedule` of the pixels (side at least 1 and below the
    image side). An example stops once misclassified; the loop stops once all
    are. ``queries`` counts the start point, as the paper does.

    Inputs are viewed as NHWC images (rank 2 as one row of pixels, where the
    window is an interval). ``p_init=0.8`` is AutoAttack's setting for robust
    models; the paper uses 0.05 on undefended ImageNet models.

    Args:
        model: callable mapping inputs to logits, called as ``model(x, training=...)``.
        x: batch of inputs.
        y: integer or one-hot labels; ``None`` uses the prediction (least-likely class if ``targeted``).
        eps: L∞ radius, in input units.
        queries: query budget per example (forward passes, including the start), a Python int.
        p_init: initial fraction of pixels per window.
        norm: only ``"linf"``.
        clip: valid input range ``(low, high)``, or ``None``.
        targeted: reach class ``y`` (minimises ``max_{i≠y} z_i - z_y``).
        training: the ``training`` flag passed to the model.
        seed: integer (or integer scalar tensor) seed of the stateless random
            draws; ``None`` draws one from TF's global generator.
        retries: redraws of a proposal that would not change the point.
        keys: one ``uint32`` key per example (:func:`tfrobust.keyed_random.example_keys`):
            every draw of an example then depends on its key alone, not on its batch
            (``seed`` is unused).

    Returns:
        Adversarial inputs, same shape and dtype as ``x``, without gradient.

    Raises:
        ValueError: on a bad argument (named in the message) or a model that
            outputs probabilities.
    """
    _check_square_settings(eps, queries, p_init, retries, norm)
    x = prepare_inputs(model, x, clip=clip, norm=norm)
    dtype = x.dtype
    if int(queries) == 0:
        return tf.stop_gradient(clip_to_range(x, clip))
    labels = resolve_labels(model, x, y, targeted=targeted, training=training)
    height, width, channels = _image_view(x)
    shape = tf.shape(x)
    x4 = tf.reshape(x, [-1, height, width, channels])
    batch = tf.shape(x4)[0]
    eps_t = tf.cast(eps, dtype)
    base = _base_seed(seed)

    def draw(key, i, j, draw_shape, maxval):
        return _draw(keys, base, key, i, j, draw_shape, maxval)

    def signs(key, i, j, draw_shape):
        return tf.cast(2 * draw(key, i, j, draw_shape, 2) - 1, dtype)

    def query(z4):
        return _query(model, z4, shape, labels, targeted=targeted, training=training, dtype=dtype)

    # Vertical stripes: one sign per column and channel, the same down each column.
    x_best = clip_to_range(x4 + eps_t * signs(0, 0, 0, [batch, 1, width, channels]), clip)
    m_best, fooled = query(x_best)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]

    def body(i, x_best, m_best, fooled):
        mask = _window_mask(_window_side(i, p_init, queries, height, width), lambda key, maxval: draw(
            key, i, 0, [batch, 1, 1], maxval), rows, cols)
        x_new = _proposal(x4, x_best, mask, eps_t, clip, retries,
                          lambda j: signs(3, i, j, [batch, 1, 1, channels]))
        x_best, m_best, fooled = _accept(x_new, query(x_new), x_best, m_best, fooled)
        # Keep the static batch size (masks drawn with a dynamic batch lose it, which
        # tf.while_loop rejects when the batch is known, e.g. one example left).
        return (i + 1, tf.ensure_shape(x_best, static[0]), tf.ensure_shape(m_best, static[1]),
                tf.ensure_shape(fooled, static[2]))

    static = (x_best.shape, m_best.shape, fooled.shape)
    _, x_best, _, _ = tf.while_loop(
        lambda i, xb, mb, f: tf.logical_and(i < queries - 1, tf.logical_not(tf.reduce_all(f))),
        body, (tf.constant(0), x_best, m_best, fooled))
    return tf.stop_gradient(tf.reshape(x_best, shape))
