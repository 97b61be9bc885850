"""Norm maths for attacks and penalties, in one place.

Attacks never branch on the threat norm: they call :func:`steepest_step`,
:func:`project` and :func:`random_start`, which dispatch here (docs/architecture.md).
Every function works on a batch: the first axis indexes examples and the norm
is taken over all remaining axes.
"""

from __future__ import annotations

import tensorflow as tf

from tfrobust import keyed_random
from tfrobust.names import NORMS

__all__ = [
    "NORMS",
    "validate_norm",
    "per_example_norm",
    "expand_like",
    "dual_of",
    "dual_norm",
    "steepest_step",
    "project",
    "random_start",
    "TINY",
    "safe_ratio",
]


TINY = 1e-12
"""The floor under a norm (or a probability) before dividing by it (or taking its log), so that a
zero gradient gives a large finite value, not inf or NaN; the one such constant of the library."""


def validate_norm(norm: str) -> str:
    """Returns ``norm`` if it is a supported threat norm.

    Raises:
        ValueError: naming the bad value.
    """
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not supported; choose one of {NORMS}")
    return norm


def _reduce_axes(t: tf.Tensor) -> tf.Tensor:
    return tf.range(1, tf.rank(t))


def expand_like(v: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    """Reshapes a per-example vector ``[batch]`` to broadcast against ``t`` (``[batch, ...]``)."""
    shape = tf.concat([tf.shape(v), tf.ones([tf.rank(t) - 1], tf.int32)], 0)
    return tf.reshape(v, shape)


def per_example_norm(t: tf.Tensor, norm: str) -> tf.Tensor:
    """The ``norm`` of each example of ``t`` (``l1``, ``l2`` or ``linf``)."""
    axes = _reduce_axes(t)
    if norm == "linf":
        return tf.reduce_max(tf.abs(t), axis=axes)
    if norm == "l2":
        return tf.sqrt(tf.reduce_sum(tf.square(t), axis=axes))
    if norm == "l1":
        return tf.reduce_sum(tf.abs(t), axis=axes)
    raise ValueError(f"norm={norm!r} is not supported; choose one of ('l1', 'l2', 'linf')")


def dual_of(norm: str) -> str:
    """Name of the dual norm of the threat ``norm``: ``"l1"`` for L∞, ``"l2"`` for L2.

    Raises:
        ValueError: if ``norm`` is not a threat norm.
    """
    validate_norm(norm)
    return "l1" if norm == "linf" else "l2"


def dual_norm(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """Dual norm of ``grad`` for the threat ``norm`` (L1 for L∞, L2 for L2).

    For a locally linear function f, ``f(x + δ) - f(x) ≈ ∇f·δ`` is at most
    ``eps * dual_norm(∇f)`` over the eps ball of ``norm``.
    """
    return per_example_norm(grad, dual_of(norm))


def safe_ratio(numerator: tf.Tensor, denominator: tf.Tensor) -> tf.Tensor:
    """``numerator / max(denominator, TINY)``, in ``denominator``'s dtype: a margin over a gradient norm."""
    return numerator / tf.maximum(denominator, tf.cast(TINY, denominator.dtype))


def steepest_step(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """Unit-size steepest-ascent direction for ``grad`` under ``norm``.

    L∞: ``sign(grad)``. L2: ``grad / ||grad||_2`` per example (zero stays zero).
    """
    validate_norm(norm)
    if norm == "linf":
        return tf.sign(grad)
    n = per_example_norm(grad, "l2")
    return grad / expand_like(tf.maximum(n, TINY), grad)


def project(delta: tf.Tensor, eps: float | tf.Tensor, norm: str) -> tf.Tensor:
    """Projects each example of ``delta`` onto the ``norm`` ball of radius ``eps``.

    ``eps`` is a scalar or one radius per example (shape ``[batch]``).
    """
    validate_norm(norm)
    eps = tf.cast(eps, delta.dtype)
    if norm == "linf":
        if eps.shape.rank == 1:
            eps = expand_like(eps, delta)
        return tf.clip_by_value(delta, -eps, eps)
    n = per_example_norm(delta, "l2")
    scale = tf.minimum(tf.ones_like(n), eps / tf.maximum(n, TINY))
    return delta * expand_like(scale, delta)


def _stateless_seed(seed: int, stream: int) -> tf.Tensor:
    """The ``[2]`` seed of a stateless draw for ``seed`` and a stream number."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(stream, tf.int64)])


def random_start(
    shape: tf.TensorShape | tf.Tensor,
    eps: float | tf.Tensor,
    norm: str,
    dtype: tf.DType = tf.float32,
    seed: int | None = None,
    keys: tf.Tensor | None = None,
    stream: int = 0,
) -> tf.Tensor:
    """A random point in the ``norm`` ball of radius ``eps``, per example.

    L∞: uniform in the cube. L2: uniform in the ball (Gaussian direction,
    radius ``eps * u ** (1 / dim)``). With ``keys`` (one ``uint32`` per example, see
    :func:`tfrobust.keyed_random.example_keys`) each example's point depends only on its key
    and ``stream``, never on its batch; ``seed`` is then unused. Without keys, an integer ``seed``
    makes the point a pure function of ``(seed, stream, shape)`` (stateless draws: the same on every
    call, eager or traced); ``seed=None`` draws from the global generator.
    """
    validate_norm(norm)
    eps = tf.cast(eps, dtype)
    if keys is not None:
        uniform = lambda s, n: keyed_random.keyed_uniform(keys, s, n, dtype=dtype)  # noqa: E731
        normal = lambda s, n: keyed_random.keyed_normal(keys, s, n, dtype=dtype)  # noqa: E731
    elif seed is not None:
        uniform = lambda s, n: tf.random.stateless_uniform(s, _stateless_seed(seed, n), dtype=dtype)  # noqa: E731
        normal = lambda s, n: tf.random.stateless_normal(s, _stateless_seed(seed, n), dtype=dtype)  # noqa: E731
    else:
        uniform = lambda s, n: tf.random.uniform(s, dtype=dtype)  # noqa: E731
        normal = lambda s, n: tf.random.normal(s, dtype=dtype)  # noqa: E731
    if norm == "linf":
        return (2.0 * uniform(shape, stream) - 1.0) * eps
    direction = steepest_step(normal(shape, stream), "l2")
    dim = tf.cast(tf.reduce_prod(shape[1:]), dtype)
    u = uniform(tf.shape(direction)[:1], keyed_random.stream_id(stream, "radius"))
    radius = eps * tf.pow(u, 1.0 / dim)
    return direction * expand_like(radius, direction)
