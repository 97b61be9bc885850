"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tfrobust.utils import atomic_write_text, hardware, source_commit

__all__ = ["hardware", "write_result"]


def write_result(path: str | os.PathLike, result: dict, command: str) -> None:
    """Prints the reproducing command and writes the JSON (temp file + rename, never half-written)."""
    print(f"reproduce: {command}")
    result = {**result, "commit": result.get("commit") or source_commit(Path(__file__))}
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
