"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

import os
import platform

import tensorflow as tf

__all__ = ["hardware"]


def hardware() -> str:
    """CPU model, visible core count and GPUs, for the JSON of every benchmark."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    dev = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
    return f"{cpu}, {os.cpu_count()} logical CPU cores visible, {dev}"
