"""``load``: any dataset split as numpy arrays, the first ``n`` examples in the dataset's original order."""

from __future__ import annotations

import os

import numpy as np

from tfrobust.data.registry import (NUM_CLASSES, SHAPES, SPLIT_SIZES, SPLITS, Arrays, check_name,
                                    default_data_dir)
from tfrobust.data.small import load_digits, load_synthetic
from tfrobust.data.tfds_datasets import load_tfds

__all__ = ["load"]


def load(
    name: str,
    split: str = "test",
    n: int | None = None,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a dataset split as numpy arrays.

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"`` or ``"test"``.
        n: the first ``n`` examples of the split in the dataset's original order;
            ``None`` for all of it (256 examples for ``"synthetic"``).
        data_dir: tensorflow-datasets data directory; defaults to
            :func:`default_data_dir`.
        seed: seed of the ``"synthetic"`` data (the real datasets are fixed).
        shape: example shape of the ``"synthetic"`` data; for a real dataset it
            must be omitted or equal to the dataset's shape.
        num_classes: class count of the ``"synthetic"`` data; for a real dataset
            it must be omitted or equal to the dataset's class count.

    Returns:
        ``(x, y)``: ``x`` float32 ``[N, H, W, C]`` in ``[0, 1]``, ``y`` int64 ``[N]``.

    Raises:
        ValueError: naming the bad value: unknown name or split, ``n <= 0``,
            ``n`` larger than the split, or a shape / class count the dataset
            does not have.
        DatasetUnavailableError: the dataset can not be had offline here and
            downloading it failed; the message says how to get it.
    """
    check_name(name)
    _check_split(split)
    _check_n(n)
    if name == "synthetic":
        return load_synthetic(split, n, seed, shape, num_classes)
    _check_fixed(name, shape, num_classes)
    size = SPLIT_SIZES[name][split]
    if n is not None and n > size:
        raise ValueError(f"n={n} is larger than the {name!r} {split!r} split, which has {size} examples")
    if name == "digits":
        x, y = load_digits(split)
    else:
        x, y = load_tfds(name, split, _resolve_data_dir(data_dir))
    return _finish(x[:n], y[:n])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _check_n(n: int | None) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n={n!r} must be a positive integer or None")


def _check_fixed(name: str, shape: tuple[int, ...] | None, num_classes: int | None) -> None:
    if shape is not None and tuple(shape) != SHAPES[name]:
        raise ValueError(f"shape={tuple(shape)} does not match {name!r}, whose examples are {SHAPES[name]}")
    if num_classes is not None and num_classes != NUM_CLASSES:
        raise ValueError(f"num_classes={num_classes} does not match {name!r}, which has {NUM_CLASSES} classes")


def _resolve_data_dir(data_dir: str | None) -> str:
    return os.path.expanduser(data_dir) if data_dir else default_data_dir()


def _finish(x: np.ndarray, y: np.ndarray) -> Arrays:
    """Converts stored arrays to the public dtypes and range."""
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
