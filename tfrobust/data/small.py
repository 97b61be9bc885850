"""The small datasets, made here without tensorflow-datasets: ``synthetic`` (generated from a seed)
and ``digits`` (scikit-learn's 8x8 digits).
"""

from __future__ import annotations

import math

import numpy as np

from tfrobust.data.registry import NUM_CLASSES, SHAPES, SPLIT_SIZES, SPLITS, Arrays

__all__ = ["load_synthetic", "load_digits"]

_SYNTHETIC_DEFAULT_N = 256

_DIGITS_SEED = 0


def load_synthetic(
    split: str,
    n: int | None,
    seed: int,
    shape: tuple[int, ...] | None,
    num_classes: int | None,
) -> Arrays:
    """Uniform random images labelled by the argmax of a fixed random linear map.

    The map depends on ``seed`` only, so both splits share one labelling
    function, which a linear classifier can learn exactly. The images depend on
    ``seed`` and ``split``; a smaller ``n`` gives a prefix of a larger one.

    Args:
        split: one of :data:`~tfrobust.data.registry.SPLITS` (checked by the caller).
        n: examples; ``None`` for 256.
        seed: seed of the images and of the labelling map.
        shape: example shape; ``None`` for ``(28, 28, 1)``.
        num_classes: class count; ``None`` for 10.

    Returns:
        ``(x, y)``: ``x`` float32 ``[n, *shape]`` in ``[0, 1)``, ``y`` int64 ``[n]``.

    Raises:
        ValueError: a shape with no or non-positive sizes, or fewer than two classes.
    """
    shape = SHAPES["synthetic"] if shape is None else tuple(int(d) for d in shape)
    num_classes = NUM_CLASSES if num_classes is None else num_classes
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"shape={shape} must be a non-empty tuple of positive sizes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2")
    n = _SYNTHETIC_DEFAULT_N if n is None else int(n)
    image_rng = np.random.default_rng([seed, SPLITS.index(split)])
    x = image_rng.random((n, *shape), dtype=np.float32)
    projection = np.random.default_rng([seed, len(SPLITS)]).standard_normal((math.prod(shape), num_classes))
    logits = (x.reshape(n, -1) - np.float32(0.5)) @ projection.astype(np.float32)
    return x, np.argmax(logits, axis=1).astype(np.int64)


def load_digits(split: str) -> Arrays:
    """scikit-learn's 8x8 digits, values 0..16 scaled to [0, 1], fixed 1437/360 split.

    Args:
        split: ``"train"`` (1,437 images) or ``"test"`` (360), a fixed permutation of the 1,797.

    Returns:
        ``(x, y)``: ``x`` float32 ``[N, 8, 8, 1]``, ``y`` int64 ``[N]``.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # pylint: disable=import-outside-toplevel

    bunch = sklearn_digits()
    order = np.random.default_rng(_DIGITS_SEED).permutation(len(bunch.target))
    n_train = SPLIT_SIZES["digits"]["train"]
    idx = order[:n_train] if split == "train" else order[n_train:]
    x = (bunch.images[idx] / 16.0).astype(np.float32)[..., None]
    return x, bunch.target[idx].astype(np.int64)
