"""Test set-up: two logical CPU devices (for MirroredStrategy tests), quiet TF, fixed seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
except RuntimeError:  # devices already initialised by an earlier import
    pass


@pytest.fixture
def no_random_start(monkeypatch):
    """Random starts at the centre: ``norms.random_start`` returns zeros, whatever its keywords.

    One-step comparisons (float16 vs float32, jit vs plain, 1 vs 2 devices) need the same start on
    both sides; the attacks' own keywords (``seed``, ``keys``, ``stream``) are accepted and ignored.
    """
    from tfrobust import norms

    monkeypatch.setattr(norms, "random_start", lambda shape, eps, norm, dtype=tf.float32, **_: tf.zeros(shape, dtype))


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Reports how many generated calls the property-based suite made (tests/test_properties.py)."""
    calls = getattr(config, "tfrobust_property_calls", None)
    if calls is not None:
        terminalreporter.write_line(f"property-based API tests: {calls} generated calls")
