"""Helpers shared by the whole library: the bottom layer, beside :mod:`tfrobust.norms`.

The input contract of every public entry point lives here (:func:`as_labels`,
:func:`check_inputs`), with atomic writes, batching, argument checks and the
hardware line that every result file records (docs/architecture.md).
"""

from __future__ import annotations

import numbers
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow as tf

__all__ = [
    "scalar",
    "batches",
    "progress",
    "check_positive_int",
    "check_positive",
    "check_choice",
    "atomic_write",
    "atomic_write_text",
    "hardware",
    "as_labels",
]


def scalar(value, dtype: tf.DType) -> tf.Tensor:
    """A Python number (or tensor) as a scalar of ``dtype``, without a float32 round trip."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype)


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


def atomic_write(path: str | os.PathLike, content: str | bytes | os.PathLike) -> None:
    """Writes text or bytes (or copies a file) to ``path`` through a temporary file, fsync and a rename.

    The file is never seen half-written, and a crash leaves no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, str):
                f.write(content.encode())
            elif isinstance(content, bytes):
                f.write(content)
            else:
                with open(content, "rb") as src:
                    shutil.copyfileobj(src, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a string."""
    atomic_write(path, text)


def hardware() -> str:
    """CPU model, visible core count and GPUs: the line every result file records."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    dev = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
    return f"{cpu}, {os.cpu_count()} logical CPU cores visible, {dev}"


def as_labels(y, *, num_examples: int | None = None) -> tf.Tensor:
    """Integer class labels of shape ``(N,)``: the one label contract of every entry point.

    Accepts integer labels shaped ``(N,)`` or ``(N, 1)`` (as ``keras.datasets``
    ships CIFAR-10), a scalar for one example, one-hot or probability rows ``(N, C)`` with ``C > 1``
    (reduced by argmax), as numpy arrays, lists or tensors; graph-safe.

    Args:
        y: the labels.
        num_examples: the batch size they must match, when known.

    Raises:
        ValueError: naming the shape or dtype when ``y`` is none of the above.
    """
    y = tf.convert_to_tensor(y)
    rank = y.shape.rank
    if rank == 2 and y.shape[-1] is not None and y.shape[-1] > 1:
        y = tf.argmax(y, axis=-1, output_type=tf.int32)
    elif rank == 2 and y.shape[-1] == 1 or rank in (0, 1):
        if not (y.dtype.is_integer or y.dtype.is_floating):
            raise ValueError(f"labels of dtype {y.dtype.name} are not class indices")
        y = tf.reshape(y, [-1])
    elif rank is not None:
        raise ValueError(f"labels of shape {tuple(y.shape)} are not (N,), (N, 1) or one-hot (N, C)")
    else:
        y = tf.reshape(y, [-1])
    y = tf.cast(y, tf.int32)
    if num_examples is not None and y.shape[0] is not None and y.shape[0] != num_examples:
        raise ValueError(f"{y.shape[0]} labels for {num_examples} inputs")
    return y
