"""``tf.data`` pipelines over numpy arrays."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["make_dataset"]


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Wraps arrays in a batched ``tf.data.Dataset`` of ``(x, y)``.

    Each pass over the data (epoch) sees every example exactly once; the last
    batch of a pass may be smaller than ``batch_size``.

    Args:
        x: inputs, first axis indexes examples.
        y: labels, as many as ``x``.
        batch_size: examples per batch, positive.
        shuffle: reshuffle the examples every pass, from ``seed``.
        seed: shuffle seed.
        repeat: repeat the passes forever.

    Returns:
        The dataset, prefetching.

    Raises:
        ValueError: ``batch_size`` not positive or ``x`` and ``y`` of different lengths.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size))
    if repeat:
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)
