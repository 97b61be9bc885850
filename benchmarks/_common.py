"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import tensorflow as tf

__all__ = ["hardware", "write_result"]


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


def write_result(path: str | os.PathLike, result: dict, command: str) -> None:
    """Prints the reproducing command and writes the JSON (temp file + rename, never half-written)."""
    print(f"reproduce: {command}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
