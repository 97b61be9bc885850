"""The served models: versions under each base path, loading, hot reload of new versions."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tfrobust.serving.protocol import ServingError, SignatureInfo, bad_request


log = logging.getLogger("tfrobust.server")

__all__ = [
    "ServedVersion",
    "ModelManager",
    "ModelRegistry",
]


def _shape_of(tensor_info: Mapping[str, Any]) -> tuple[int, ...] | None:
    shape = tensor_info.get("tensor_shape", {})
    if shape.get("unknown_rank"):
        return None
    return tuple(int(d.get("size", -1)) for d in shape.get("dim", []))


def _read_signature_defs(version_dir: Path) -> dict[str, Any]:
    """The ``serve`` meta graph's signature defs as TF Serving prints them (proto JSON)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return {key: json_format.MessageToDict(
                        value, preserving_proto_field_name=True,
                        always_print_fields_with_no_presence=True)
                    for key, value in sorted(meta_graph.signature_def.items())}
    raise ValueError(f"{version_dir} has no meta graph tagged 'serve'")


class ServedVersion:
    """One loaded version of a model: its signatures, callable from any thread."""

    def __init__(self, name: str, version: int, path: Path):
        import tensorflow as tf

        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = _read_signature_defs(path)
        self._loaded = tf.saved_model.load(str(path), tags=["serve"])
        self.signatures: dict[str, SignatureInfo] = {}
        self._functions = {}
        for key, sig in self.signature_defs.items():
            if key.startswith("__") or key not in self._loaded.signatures:
                continue
            self.signatures[key] = SignatureInfo(
                key,
                {n: (t.get("dtype", ""), _shape_of(t)) for n, t in sig.get("inputs", {}).items()},
                {n: (t.get("dtype", ""), _shape_of(t)) for n, t in sig.get("outputs", {}).items()})
            self._functions[key] = self._loaded.signatures[key]

    def signature(self, signature_name: str | None) -> SignatureInfo:
        """The signature to run; an empty name means ``serving_default``.

        Raises:
            ServingError: 400 if the signature does not exist, as TF Serving words it.
        """
        key = signature_name or "serving_default"
        if key not in self.signatures:
            raise bad_request(f'Serving signature name: "{key}" not found in signature def')
        return self.signatures[key]

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs a signature on numpy inputs and returns numpy outputs."""
        import tensorflow as tf

        fn = self._functions[signature_name]
        outputs = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}


class ModelManager:
    """Serves the newest loadable version under one base path, reloading as it changes."""

    def __init__(self, name: str, base_path: str | os.PathLike):
        self.name = name
        self.base_path = Path(base_path)
        self._current: ServedVersion | None = None
        self._failed: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def current(self) -> ServedVersion | None:
        """The version being served, or ``None`` while none has loaded."""
        return self._current

    def available_versions(self) -> list[int]:
        """Integer-named folders under the base path that hold a ``saved_model.pb``."""
        from tfrobust.serving.versions import list_versions

        return [v for v in list_versions(self.base_path)
                if (self.base_path / str(v) / "saved_model.pb").is_file()]

    def refresh(self) -> bool:
        """Serves the newest version that loads; returns True on a change.

        A version that fails to load is remembered (and reported by
        :meth:`status`) and the next older one is tried, so a broken export
        never takes a model down.
        """
        with self._lock:
            candidates = [v for v in self.available_versions() if v not in self._failed]
            for version in reversed(candidates):
                if self._current is not None and self._current.version == version:
                    return False
                try:
                    served = ServedVersion(self.name, version, self.base_path / str(version))
                except Exception as err:  # a broken export must not stop the server
                    self._failed[version] = f"{type(err).__name__}: {err}"
                    log.error("model %s: version %d failed to load: %s", self.name, version, err)
                    continue
                old, self._current = self._current, served
                log.info("model %s: serving version %d%s", self.name, version,
                         f" (was {old.version})" if old else "")
                return True
            return False

    def resolve(self, version: int | None) -> ServedVersion:
        """The served version matching a request.

        Raises:
            ServingError: 404 if no version is served or another one is asked for.
        """
        current = self._current
        if version is None:
            if current is None:
                raise ServingError(404, f"Servable not found for request: Latest({self.name})")
            return current
        if current is None or current.version != version:
            raise ServingError(404, f"Servable not found for request: Specific({self.name}, {version})")
        return current

    def status(self, version: int | None) -> list[dict[str, Any]]:
        """``model_version_status`` entries (TF Serving's GetModelStatusResponse)."""
        entries = []
        current = self._current
        if current is not None:
            entries.append({"version": str(current.version), "state": "AVAILABLE",
                            "status": {"error_code": "OK", "error_message": ""}})
        for v, message in sorted(self._failed.items()):
            entries.append({"version": str(v), "state": "END",
                            "status": {"error_code": "UNKNOWN", "error_message": message}})
        if version is not None:
            entries = [e for e in entries if e["version"] == str(version)]
            if not entries:
                raise ServingError(404, f"Could not find version {version} of model {self.name}")
        if not entries:
            raise ServingError(404, f"Could not find any versions of model {self.name}")
        return entries


class ModelRegistry:
    """All served models, with a background thread that polls their base paths."""

    def __init__(self, models: Mapping[str, str], poll_seconds: float = 1.0):
        self.managers = {name: ModelManager(name, base) for name, base in models.items()}
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, name: str) -> ModelManager:
        """The manager of model ``name``.

        Raises:
            ServingError: 404 for an unknown model.
        """
        if name not in self.managers:
            raise ServingError(404, f"Servable not found for request: Latest({name})")
        return self.managers[name]

    def refresh(self) -> None:
        """Scans every base path once."""
        for manager in self.managers.values():
            manager.refresh()

    def start(self) -> None:
        """Loads every model once, then polls in a daemon thread."""
        self.refresh()
        for manager in self.managers.values():
            if manager.current is None:
                log.warning("model %s: no loadable version under %s yet; waiting for one",
                            manager.name, manager.base_path)
        self._thread = threading.Thread(target=self._poll, name="tfrobust-model-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # pragma: no cover - keep polling whatever happens
                log.exception("model poll failed")

    def stop(self) -> None:
        """Stops polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
