"""Small models, data and checks shared by several test files (not a test module)."""

import importlib.util
from pathlib import Path

import keras
import numpy as np


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
