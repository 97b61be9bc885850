"""Helpers shared by the analysis modules: models, labels, batching, validation."""

from __future__ import annotations

import numbers
import os
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

__all__ = [
    "as_classifier",
    "load_classifier",
    "resolve_labels",
    "batches",
    "check_positive_int",
    "check_positive",
    "check_choice",
    "progress",
]


def as_classifier(model):
    """The logits model to analyse: ``model.classifier`` for a RobustModel, else ``model``."""
    inner = getattr(model, "classifier", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner
    return model


def load_classifier(path: str | os.PathLike):
    """Loads a ``.keras`` model and returns the classifier inside it (logits).

    Raises:
        FileNotFoundError: naming the missing path.
        ValueError: if the file is not a ``.keras`` model.
    """
    import keras  # pylint: disable=import-outside-toplevel

    import tfrobust.models  # noqa: F401  (registers RobustModel)  pylint: disable=import-outside-toplevel,unused-import

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model={path!r} does not exist")
    if not path.endswith(".keras"):
        raise ValueError(f"model={path!r} is not a .keras file")
    model = keras.models.load_model(path, compile=False)
    return as_classifier(model)


def resolve_labels(model: Callable, x: tf.Tensor, y) -> tf.Tensor:
    """Integer labels ``[N]``: ``y`` as given (one-hot reduced by argmax), else the prediction."""
    if y is None:
        return tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32)
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2 and y.shape[-1] != 1:
        y = tf.argmax(y, axis=-1)
    return tf.cast(tf.reshape(y, [-1]), tf.int32)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices ``[i, i + batch_size)`` covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def progress(iterable, *, enabled: bool, total: int | None = None, desc: str = ""):
    """Wraps ``iterable`` in a tqdm progress bar when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

    return tqdm(iterable, total=total, desc=desc, leave=False)


def check_positive_int(name: str, value) -> int:
    """Returns ``value`` if it is a positive integer, else raises ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """Returns ``value`` as float if it is a positive (or non-negative) number."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating)) or value != value:
        raise ValueError(f"{name}={value!r} must be a number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r} must be {'non-negative' if allow_zero else 'positive'}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    """Returns ``value`` if it is one of ``choices``, else raises ValueError naming it."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {tuple(choices)}")
    return value
