"""Helpers shared by the whole library: the bottom layer, beside :mod:`tfrobust.norms`.

The input contract of every public entry point lives here (:func:`as_labels`,
:func:`check_inputs`), with atomic writes, batching, argument checks and the
hardware line that every result file records (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import numbers
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfrobust.checks import check_choice, check_positive, check_positive_int  # noqa: F401  (re-exported)

__all__ = [
    "scalar",
    "batches",
    "progress",
    "check_positive_int",
    "check_positive",
    "check_choice",
    "atomic_path",
    "atomic_write",
    "atomic_write_text",
    "hardware",
    "parse_named_paths",
    "set_threads",
    "parse_settings",
    "source_commit",
    "as_labels",
    "check_range",
    "as_arrays",
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside ``path`` that becomes ``path`` only if the ``with`` block succeeds.

    The block writes the temporary file (by any means: ``open``, ``np.savez``, ``model.save``); on
    success it is fsync'ed and renamed over ``path``, so ``path`` is never seen half-written; on an
    exception it is removed and ``path`` keeps its old contents. The one atomic writer of the library.

    Args:
        path: the final file; its folder is created.
        suffix: the temporary name's ending (``".keras"`` for ``model.save``, which checks it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, content: str | bytes | os.PathLike) -> None:
    """Writes text or bytes (or copies a file) to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if isinstance(content, str):
            f.write(content.encode())
        elif isinstance(content, bytes):
            f.write(content)
        else:
            with open(content, "rb") as src:
                shutil.copyfileobj(src, f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a string."""
    atomic_write(path, text)


def source_commit(path: str | os.PathLike | None = None) -> str:
    """The git commit of the checkout holding ``path`` (default: this library), ``+dirty`` if it has
    uncommitted changes, or ``"unknown"`` outside a checkout: the commit every result records."""
    import subprocess  # pylint: disable=import-outside-toplevel

    where = Path(path or __file__).resolve()
    where = where if where.is_dir() else where.parent

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "HEAD")
    if not head:
        return "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def set_threads(n: int, *, inter: bool = True) -> None:
    """Limits TensorFlow to ``n`` intra-op threads (and inter-op ones if ``inter``); 0 keeps TF's default.

    For the drivers' ``--threads``: one job per core. Call before TensorFlow runs an op.

    Raises:
        ValueError: if ``n`` is negative.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"threads={n!r} must be a non-negative integer")
    if n:
        tf.config.threading.set_intra_op_parallelism_threads(int(n))
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(int(n))


def parse_settings(text: str, defaults: Mapping[str, Any], *, text_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """``"c=0.01,k=3"`` -> a copy of ``defaults`` with those keys set, each cast to its default's type.

    For the studies' ``--run key=value,...``; keys in ``text_keys`` stay strings; empty items are skipped.

    Raises:
        ValueError: naming an unknown key or a value that does not cast.
    """
    settings = dict(defaults)
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"run key {key!r} is unknown; choose from {sorted(defaults)}")
        kind = str if key in text_keys else type(defaults[key])
        try:
            settings[key] = kind(value)
        except ValueError:
            raise ValueError(f"run {key}={value!r} is not a valid {kind.__name__}") from None
    return settings


def parse_named_paths(items: Sequence[str]) -> list[tuple[str, str]]:
    """``["a=runs/a", ...]`` as ``[("a", "runs/a"), ...]``, the study drivers' positional arguments.

    Raises:
        ValueError: naming an item without ``=``.
    """
    pairs = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{item!r} must be NAME=PATH")
        pairs.append((name, path))
    return pairs


def hardware() -> str:
    """CPU model, visible cores, memory, GPUs, OS and library versions: the line every result records."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
        with open("/proc/meminfo") as f:
            kib = next((int(line.split()[1]) for line in f if line.startswith("MemTotal:")), None)
        if kib:
            memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    gpus = tf.config.list_physical_devices("GPU")
    dev = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
    return (f"{cpu}, {os.cpu_count()} logical CPU cores visible{memory}, {dev}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, TF {tf.__version__}")


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


def check_range(x, clip, *, name: str = "inputs") -> None:
    """Raises ValueError naming the observed and the expected range when ``x`` leaves ``clip``.

    Eager only: inside a graph (a ``train_step``, a ``tf.function``) it checks nothing, so it
    costs nothing there. ``clip=None`` opts out (no clipping, no check); so does a clip range
    that matches your data, e.g. ``clip=(0, 255)`` for pixels in [0, 255].
    """
    if clip is None or not tf.executing_eagerly():
        return
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating or tf.size(x) == 0:
        return
    lo, hi = float(tf.reduce_min(x)), float(tf.reduce_max(x))
    tol = 1e-6 * max(1.0, abs(float(clip[1]) - float(clip[0])))
    if lo < float(clip[0]) - tol or hi > float(clip[1]) + tol or lo != lo or hi != hi:
        raise ValueError(f"{name} lie in [{lo:g}, {hi:g}] but the clip range is "
                         f"[{float(clip[0]):g}, {float(clip[1]):g}]; pass clip=(low, high) matching your "
                         f"data (e.g. clip=(0, 255)), or clip=None to skip clipping and this check")


def as_arrays(x, y=None, *, n: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x, y)`` as numpy arrays: from arrays, tensors or a ``tf.data.Dataset`` of ``(x, y)`` batches.

    Labels follow :func:`as_labels`. ``n`` keeps the first ``n`` examples.

    Raises:
        ValueError: naming a mismatch of sizes or a Dataset given with separate labels.
    """
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("pass labels inside the tf.data.Dataset of (x, y), not as y as well")
        xs, ys = [], []
        count = 0
        for item in x:
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise ValueError("a tf.data.Dataset must yield (x, y) pairs")
            xb = tf.convert_to_tensor(item[0])
            xs.append(xb.numpy() if xb.shape.rank and xb.shape.rank > 0 else xb.numpy()[None])
            ys.append(as_labels(item[1]).numpy())
            count += len(ys[-1])
            if n is not None and count >= n:
                break
        if not xs:
            raise ValueError("the tf.data.Dataset is empty")
        x, y = np.concatenate(xs), np.concatenate(ys)
    else:
        x = np.asarray(x.numpy() if isinstance(x, tf.Tensor) else x)
        if y is not None:
            y = as_labels(y, num_examples=len(x)).numpy()
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"inputs of dtype {x.dtype} are not numbers")
    if n is not None:
        x = x[:n]
        y = None if y is None else y[:n]
    return x, y
