"""Small models, data and checks shared by several test files (not a test module)."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfrobust import attacks

SHAPE = (8, 8, 1)


def load_script(path: Path):
    """Imports a driver script (``training/*.py``, ``benchmarks/*.py``) as a module, by file path."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_cnn(seed=None):
    """conv 3x3 (4) - flatten - dense (10 logits) on 8x8x1 inputs."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(10)])


def images(n=3, seed=1):
    """``n`` uniform random 8x8x1 images in [0, 1]."""
    return np.random.default_rng(seed).uniform(0, 1, (n, *SHAPE)).astype(np.float32)


def assert_ball_and_clip_range(name, norm, graph, eps=0.3, **kwargs):
    """Runs attack ``name`` on 16 images (8 of them on the clip boundary) and checks that the
    result stays in the eps ball and in [0, 1], keeps shape and dtype, and moves."""
    model = small_cnn()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(16, *SHAPE)).astype("float32")
    x[:4] = 0.0
    x[4:8] = 1.0
    fn = lambda x: attacks.get_attack(name)(model, x, eps=eps, norm=norm, **kwargs)  # noqa: E731
    if graph:
        fn = tf.function(fn)
    x_adv = fn(tf.constant(x)).numpy()
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).reshape(16, -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert (size <= eps + 1e-5).all()
    assert size.max() > 0.01  # it did move
