"""The datasets :func:`tfrobust.data.load` knows: their names, splits, shapes, sizes and class counts,
where they are stored, and the error raised when one can not be had here.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["DATASETS", "SPLITS", "SHAPES", "NUM_CLASSES", "SPLIT_SIZES", "Arrays", "DatasetUnavailableError",
           "dataset_info", "default_data_dir", "check_name"]

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "digits", "cifar10", "synthetic")
"""Names :func:`tfrobust.data.load` accepts."""

SPLITS: tuple[str, ...] = ("train", "test")
"""Splits :func:`tfrobust.data.load` accepts."""

SHAPES: dict[str, tuple[int, ...]] = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "digits": (8, 8, 1),
    "cifar10": (32, 32, 3),
    "synthetic": (28, 28, 1),
}
"""Example shape ``(H, W, C)`` of each dataset (for ``synthetic``, the default)."""

NUM_CLASSES = 10
"""Class count of every dataset (for ``synthetic``, the default)."""

SPLIT_SIZES: dict[str, dict[str, int]] = {
    "mnist": {"train": 60000, "test": 10000},
    "fashion_mnist": {"train": 60000, "test": 10000},
    "digits": {"train": 1437, "test": 360},
    "cifar10": {"train": 50000, "test": 10000},
}
"""Examples in each split of the real datasets (``synthetic`` has any number)."""

Arrays = tuple[np.ndarray, np.ndarray]
"""``(x, y)``: a split's images and labels."""


class DatasetUnavailableError(RuntimeError):
    """A dataset can not be had here; the message says how to get it."""


def default_data_dir() -> str:
    """Returns ``$TFROBUST_DATA_DIR``, else ``~/.cache/tfrobust/tensorflow_datasets``."""
    env = os.environ.get("TFROBUST_DATA_DIR")
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".cache", "tfrobust", "tensorflow_datasets")


def dataset_info(name: str) -> dict:
    """Returns the example shape and class count of a dataset.

    Args:
        name: one of :data:`DATASETS`. For ``"synthetic"`` the defaults of
            :func:`tfrobust.data.load` are returned.

    Returns:
        ``{"shape": (H, W, C), "num_classes": K}``.

    Raises:
        ValueError: naming the bad value if ``name`` is unknown.
    """
    check_name(name)
    return {"shape": SHAPES[name], "num_classes": NUM_CLASSES}


def check_name(name: str) -> None:
    """Checks that ``name`` is one of :data:`DATASETS`.

    Args:
        name: a dataset name.

    Raises:
        ValueError: naming ``name`` and listing the valid ones.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
