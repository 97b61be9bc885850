"""Small helpers shared across the library (the bottom layer, beside :mod:`tfrobust.norms`)."""

from __future__ import annotations

import tensorflow as tf

__all__ = []

def _scalar(value, dtype: tf.DType) -> tf.Tensor:
    """A Python number (or tensor) as a scalar of ``dtype``, without a float32 round trip."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype)
