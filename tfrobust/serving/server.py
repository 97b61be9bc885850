"""A local server that speaks TF Serving's REST API, for development.

``tfrobust serve`` serves the SavedModels that :mod:`tfrobust.export` writes
(any TF SavedModel with numeric inputs works) under the same URLs, request
and response formats and error envelope as ``tensorflow_model_server``:

* ``GET  /v1/models/{name}[/versions/{v}]``: model status;
* ``GET  /v1/models/{name}[/versions/{v}]/metadata``: signature definitions;
* ``POST /v1/models/{name}[/versions/{v}]:predict`` with ``signature_name``
  and either ``instances`` (row format, answered by ``predictions``) or
  ``inputs`` (columnar format, answered by ``outputs``);
* errors are ``{"error": "..."}`` with HTTP 400 (bad request) or 404 (unknown
  model or version), plus 413 for an oversize body;
* ``GET /openapi.json``: the OpenAPI description of all of the above.

Like TF Serving's default version policy it serves the newest version under
each model's base path and polls the base path, so a version exported while
the server runs is picked up without a restart (the previous one keeps
answering until the new one has loaded). Concurrent requests for the same
model, version and signature are batched into one call when the model is
busy (opportunistic batching: no request waits for a batch to fill).

It binds 127.0.0.1 by default: it is meant for development and tests, not as
an internet-facing service.
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "ServerConfig",
    "ServingError",
    "SignatureInfo",
    "ServedVersion",
    "ModelManager",
    "ModelRegistry",
    "Batcher",
    "parse_predict_request",
    "format_predict_response",
    "create_app",
    "RunningServer",
    "start_server",
    "serve",
    "parse_model_specs",
    "read_model_config_file",
]


log = logging.getLogger("tfrobust.server")

_NAME_PATTERN = r"^[^/:\s]+$"
_VERSION_PATTERN = r"^[0-9]{1,18}$"
_MODEL_NAME_RE = re.compile(_NAME_PATTERN)
_MAX_VERSION = 2**63 - 1
_DTYPES = {  # TF DataType enum name -> numpy dtype, numeric types only
    "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16,
    "DT_INT8": np.int8, "DT_INT16": np.int16, "DT_INT32": np.int32, "DT_INT64": np.int64,
    "DT_UINT8": np.uint8, "DT_UINT16": np.uint16, "DT_UINT32": np.uint32, "DT_UINT64": np.uint64,
}


# -- configuration ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Settings of the local server.

    Attributes:
        models: model name -> base path (folder of integer-named versions).
        host: interface to bind; 127.0.0.1 unless you mean to expose it.
        port: TCP port; 0 picks a free one.
        max_body_bytes: largest request body accepted (HTTP 413 beyond).
        poll_seconds: how often base paths are scanned for new versions.
        batching: batch concurrent requests into one model call.
        max_batch_size: most rows in one batched call.
        batch_timeout_ms: extra time a batch waits to fill (0: never waits).
        num_batch_threads: model calls that may run at the same time.
        input_range: closed range float inputs must lie in, or ``None``.
        limit_concurrency: most open connections before HTTP 503.
    """

    models: Mapping[str, str]
    host: str = "127.0.0.1"
    port: int = 8501
    max_body_bytes: int = 16 * 2**20
    poll_seconds: float = 1.0
    batching: bool = True
    max_batch_size: int = 256
    batch_timeout_ms: float = 0.0
    num_batch_threads: int = 2
    input_range: tuple[float, float] | None = (0.0, 1.0)
    limit_concurrency: int = 512

    def __post_init__(self):
        if not self.models:
            raise ValueError("no model to serve; give --model-base-path or --model NAME=BASE")
        for name in self.models:
            if not _MODEL_NAME_RE.match(name):
                raise ValueError(f"model name {name!r} may not contain '/', ':' or spaces")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in 0..65535")
        for field in ("max_body_bytes", "max_batch_size", "num_batch_threads", "limit_concurrency"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}={getattr(self, field)} must be at least 1")
        if self.poll_seconds <= 0 or self.batch_timeout_ms < 0:
            raise ValueError("poll_seconds must be > 0 and batch_timeout_ms >= 0")
        if self.input_range is not None and not self.input_range[0] <= self.input_range[1]:
            raise ValueError(f"input_range={self.input_range} must be (low, high) with low <= high")


class ServingError(Exception):
    """A request error, answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(message: str) -> ServingError:
    return ServingError(400, message)


# -- loaded models -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """Inputs and outputs of one signature: name -> (TF dtype name, shape with -1 unknown)."""

    name: str
    inputs: Mapping[str, tuple[str, tuple[int, ...] | None]]
    outputs: Mapping[str, tuple[str, tuple[int, ...] | None]]


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
            raise _bad(f'Serving signature name: "{key}" not found in signature def')
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
        from tfrobust.serving.export import list_versions

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


# -- request parsing and response formatting (pure functions) ------------------------


def _describe(value: Any) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, (bytes, bytearray)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _to_array(value: Any, name: str, dtype_name: str, shape: tuple[int, ...] | None,
              input_range: tuple[float, float] | None) -> np.ndarray:
    """Validates one input tensor from JSON and converts it to numpy."""
    if dtype_name not in _DTYPES:
        raise _bad(f"input {name!r} has dtype {dtype_name}, which this server does not support")
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError, RecursionError, OverflowError):
        raise _bad(f"input {name!r}: nested lists are ragged or malformed; "
                   "every row must have the same shape") from None
    want = np.dtype(_DTYPES[dtype_name])
    allowed = "fiu" if want.kind == "f" else "iu"
    if raw.dtype.kind not in allowed:
        found = {"b": "booleans", "U": "strings", "S": "bytes", "O": "null, mixed types or integers too large"}.get(
            raw.dtype.kind, str(raw.dtype))
        expected = "numbers" if want.kind == "f" else "integers"
        raise _bad(f"input {name!r}: expected {expected} of type {want.name} but found {found}")
    if shape is not None:
        got = tuple(raw.shape)
        if len(got) != len(shape) or any(w != -1 and w != g for w, g in zip(shape, got)):
            raise _bad(f"input {name!r}: expected shape {list(shape)} (-1: any) but got {list(got)}")
    if raw.ndim == 0 or raw.shape[0] == 0:
        raise _bad(f"input {name!r}: the batch is empty")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = raw.astype(want, copy=False)
    if want.kind == "f":
        if not np.isfinite(arr).all():
            bad = "NaN" if np.isnan(arr).any() else "Inf (or a value too large for " + want.name + ")"
            raise _bad(f"input {name!r}: values must be finite; found {bad}")
        if input_range is not None:
            lo, hi = input_range
            vmin, vmax = float(arr.min()), float(arr.max())
            if vmin < lo or vmax > hi:
                raise _bad(f"input {name!r}: values must lie in [{lo:g}, {hi:g}]; "
                           f"found min {vmin:g}, max {vmax:g}")
    elif raw.dtype.kind in "iu" and (raw.min() < np.iinfo(want).min or raw.max() > np.iinfo(want).max):
        raise _bad(f"input {name!r}: integer out of range for {want.name}")
    return arr


def _rows_of(instances: list, signature: SignatureInfo) -> dict[str, Any]:
    """Row format: splits ``instances`` into one batched value per input name."""
    names = sorted(signature.inputs)
    if isinstance(instances[0], dict):
        columns: dict[str, list] = {n: [] for n in names}
        for i, row in enumerate(instances):
            if not isinstance(row, dict):
                raise _bad(f"Expecting object but got list at item {i} of input list")
            if set(row) != set(names):
                raise _bad(f"Failed to process element: {i} of 'instances' list. JSON object: "
                           f"{_describe(row)} must only have keys: {','.join(names)}")
            for n in names:
                columns[n].append(row[n])
        return columns
    if len(names) > 1:
        raise _bad("instances is a plain list, but expecting list of objects as multiple "
                   "input tensors required as per tensorinfo_map")
    for i, row in enumerate(instances):
        if isinstance(row, dict):
            raise _bad(f"Expecting value/list but got object at item {i} of input list")
    return {names[0]: instances}


def _columns_of(inputs: Any, signature: SignatureInfo) -> dict[str, Any]:
    """Columnar format: one value per input name."""
    names = sorted(signature.inputs)
    if not isinstance(inputs, dict):
        if len(names) > 1:
            raise _bad("inputs is a plain value/list, but expecting an object as multiple "
                       "input tensors required as per tensorinfo_map")
        return {names[0]: inputs}
    for n in names:
        if n not in inputs:
            raise _bad(f"Missing named input: {n} in 'inputs' object.")
    extra = sorted(set(inputs) - set(names))
    if extra:
        raise _bad(f"unknown named input(s) {extra}; the signature takes {names}")
    return {n: inputs[n] for n in names}


def parse_predict_request(
    body: bytes,
    resolve_signature,
    input_range: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[str, str, dict[str, np.ndarray]]:
    """Parses and validates a ``:predict`` body.

    Args:
        body: the raw request body.
        resolve_signature: ``signature_name -> SignatureInfo``; raises
            :class:`ServingError` for an unknown one.
        input_range: range float inputs must lie in, or ``None``.

    Returns:
        ``(signature_name, "row" | "columnar", inputs)`` with inputs batched numpy arrays.

    Raises:
        ServingError: 400 with TF Serving's wording where it has one.
    """
    if not body or not body.strip():
        raise _bad("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except RecursionError:
        raise _bad("JSON Parse error: the document is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, too many int digits
        raise _bad(f"JSON Parse error: {err}") from None
    if not isinstance(doc, dict):
        raise _bad(f"JSON Value: {_describe(doc)} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _bad(f"'signature_name' key must be a string value. JSON given: {_describe(signature_name)}")
    signature = resolve_signature(signature_name)
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise _bad("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _bad("Excepting 'instances' to be an list/array")
        if not instances:
            raise _bad("No values in 'instances' array")
        values, fmt = _rows_of(instances, signature), "row"
    elif has_inputs:
        values, fmt = _columns_of(doc["inputs"], signature), "columnar"
    else:
        raise _bad("Missing 'inputs' or 'instances' key")
    arrays = {n: _to_array(v, n, *signature.inputs[n], input_range) for n, v in values.items()}
    batch = {a.shape[0] for a in arrays.values()}
    if len(batch) > 1:
        raise _bad(f"inputs have different batch sizes {sorted(batch)}")
    return signature.name, fmt, arrays


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype.kind == "f":
        return array.astype(np.float64).tolist()
    return array.tolist()


def format_predict_response(outputs: Mapping[str, np.ndarray], fmt: str) -> dict[str, Any]:
    """TF Serving's predict response: ``predictions`` (row) or ``outputs`` (columnar).

    With several outputs, row format gives one object per example and columnar
    format one entry per output; with a single output, the bare values.
    """
    names = sorted(outputs)
    if fmt == "columnar":
        if len(names) == 1:
            return {"outputs": _jsonable(outputs[names[0]])}
        return {"outputs": {n: _jsonable(outputs[n]) for n in names}}
    columns = {n: _jsonable(outputs[n]) for n in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    size = len(columns[names[0]])
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(size)]}


# -- batching ----------------------------------------------------------------------------


class Batcher:
    """Opportunistic batching of concurrent calls to one signature of one version.

    Requests queue while the model is busy; each free worker takes as many
    queued requests as fit in ``max_batch_size`` rows, runs them as one call in
    a thread and splits the outputs. A lone request runs at once unless
    ``timeout_s`` asks it to wait for company.
    """

    def __init__(self, served: ServedVersion, signature: str,
                 executor: concurrent.futures.Executor, max_batch_size: int,
                 timeout_s: float, workers: int):
        self.served = served
        self.signature = signature
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.workers = workers
        self._pending: collections.deque = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._running = 0
        self.calls = 0
        self.requests = 0

    async def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queues one request; returns its outputs."""
        loop = asyncio.get_running_loop()
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._tasks = [loop.create_task(self._worker()) for _ in range(self.workers)]
        future = loop.create_future()
        rows = next(iter(inputs.values())).shape[0]
        self._pending.append((inputs, rows, future))
        self._wakeup.set()
        return await future

    def _take(self) -> list:
        batch = [self._pending.popleft()]
        rows = batch[0][1]
        while self._pending and rows + self._pending[0][1] <= self.max_batch_size:
            item = self._pending.popleft()
            batch.append(item)
            rows += item[1]
        return batch

    def _run(self, batch: list) -> dict[str, np.ndarray]:
        if len(batch) == 1:
            return self.served.run(self.signature, batch[0][0])
        names = batch[0][0].keys()
        joined = {n: np.concatenate([item[0][n] for item in batch], axis=0) for n in names}
        return self.served.run(self.signature, joined)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.timeout_s > 0 and sum(i[1] for i in self._pending) < self.max_batch_size:
                await asyncio.sleep(self.timeout_s)
                if not self._pending:
                    continue
            batch = self._take()
            batch = [item for item in batch if not item[2].done()]  # drop cancelled requests
            if not batch:
                continue
            self.calls += 1
            self.requests += len(batch)
            self._running += 1
            try:
                outputs = await loop.run_in_executor(self.executor, self._run, batch)
            except Exception as err:  # noqa: BLE001 - handed to each waiting request
                for item in batch:
                    if not item[2].done():
                        item[2].set_exception(err)
                continue
            finally:
                self._running -= 1
            start = 0
            for inputs, rows, future in batch:
                if not future.done():
                    future.set_result({k: v[start:start + rows] for k, v in outputs.items()})
                start += rows

    @property
    def idle(self) -> bool:
        """True when nothing is queued or running."""
        return not self._pending and self._running == 0

    def close(self) -> None:
        """Cancels the workers (call when :attr:`idle`)."""
        for task in self._tasks:
            task.cancel()


# -- the ASGI application ------------------------------------------------------------------

_ERROR_SCHEMA = {"type": "object", "required": ["error"],
                 "properties": {"error": {"type": "string"}}}
_STATUS_SCHEMA = {
    "type": "object", "required": ["model_version_status"],
    "properties": {"model_version_status": {"type": "array", "items": {
        "type": "object", "required": ["version", "state", "status"],
        "properties": {
            "version": {"type": "string", "pattern": "^[0-9]+$"},
            "state": {"type": "string", "enum": ["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
            "status": {"type": "object", "properties": {
                "error_code": {"type": "string"}, "error_message": {"type": "string"}}}}}}}}
_METADATA_SCHEMA = {
    "type": "object", "required": ["model_spec", "metadata"],
    "properties": {
        "model_spec": {"type": "object", "properties": {
            "name": {"type": "string"}, "signature_name": {"type": "string"},
            "version": {"type": "string"}}},
        "metadata": {"type": "object", "required": ["signature_def"], "properties": {
            "signature_def": {"type": "object", "required": ["signature_def"], "properties": {
                "signature_def": {"type": "object", "additionalProperties": {"type": "object"}}}}}}}}
_PREDICT_REQUEST_SCHEMA = {
    "type": "object",
    "description": "Exactly one of `instances` (row format) or `inputs` (columnar format). "
                   "Tensors are nested JSON lists of numbers; float inputs must be finite "
                   "(and inside the server's input range, [0, 1] by default).",
    "properties": {
        "signature_name": {"type": "string", "example": "robustness",
                           "description": "signature to run; default serving_default"},
        "instances": {"type": "array", "minItems": 1,
                      "description": "one entry per example (or an object per example, "
                                     "keyed by input name)", "items": {}},
        "inputs": {"description": "the batched tensor, or an object keyed by input name"},
    },
}
_PREDICT_RESPONSE_SCHEMA = {
    "type": "object",
    "description": "`predictions` for row-format requests, `outputs` for columnar ones.",
    "properties": {"predictions": {"type": "array"}, "outputs": {}},
}


def _responses(ok_schema: dict, *codes: int) -> dict:
    out = {"200": {"description": "OK", "content": {"application/json": {"schema": ok_schema}}}}
    names = {400: "Bad request", 404: "Unknown model or version", 413: "Request body too large",
             405: "Method not allowed"}
    for code in codes:
        out[str(code)] = {"description": names[code],
                          "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    return out


def _json_response(content: Any, status: int = 200):
    from starlette.responses import Response

    body = json.dumps(content, allow_nan=True, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json")


def _parse_version(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise _bad(f"Malformed request: version {text!r} is not an integer")
    version = int(text)
    if version > _MAX_VERSION:
        raise _bad(f"Failed to convert version: {text} to numeric.")
    return version


class _BodyLimit:
    """ASGI wrapper: HTTP 413 for a body over ``max_bytes`` (declared or streamed).

    An oversize body is read and discarded (up to ``drain_factor`` times the
    limit) before the 413 goes out, so an ordinary client that sends the
    whole body before reading the answer gets the answer, not a reset
    connection. Bodies beyond that are cut off.
    """

    drain_factor = 16

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self._reply(send, 400, "invalid Content-Length header")
            if int(declared) > self.max_bytes:
                if int(declared) <= self.drain_factor * self.max_bytes:
                    await self._drain(receive)
                return await self._reply(send, 413, self._message())
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body", False):
                        await self._drain(receive)
                    raise ServingError(413, self._message())
            return message

        return await self.app(scope, limited_receive, send)

    async def _drain(self, receive) -> None:
        seen = 0
        while seen <= self.drain_factor * self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _message(self) -> str:
        return f"request body exceeds the limit of {self.max_bytes} bytes"

    @staticmethod
    async def _reply(send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(registry: ModelRegistry, config: ServerConfig):
    """Builds the ASGI application (FastAPI) serving ``registry``.

    Returns:
        An ASGI callable; its FastAPI app is at ``.app`` (with ``.state.batchers``).
    """
    from fastapi import FastAPI, Request
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    import tfrobust

    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=config.num_batch_threads, thread_name_prefix="tfrobust-model")
    batchers: dict[tuple, Batcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for batcher in batchers.values():
            batcher.close()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        lifespan=lifespan,
        title="tfrobust local model server",
        version=tfrobust.__version__,
        description="TF Serving's REST API (predict, status, metadata) for SavedModels exported "
                    "by `tfrobust export`. Errors are `{\"error\": \"...\"}`.",
        docs_url=None, redoc_url=None)
    app.state.batchers = batchers
    app.state.executor = executor

    @app.exception_handler(ServingError)
    async def _serving_error(request, err: ServingError):
        return _json_response({"error": err.message}, err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err: StarletteHTTPException):
        message = err.detail if isinstance(err.detail, str) else str(err.detail)
        if err.status_code == 404:
            message = f"Malformed request: {request.method} {request.url.path}"
        return _json_response({"error": message}, err.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                             for e in err.errors()[:3])
        return _json_response({"error": f"Malformed request: {problems}"}, 400)

    @app.exception_handler(Exception)
    async def _internal_error(request, err: Exception):  # pragma: no cover - a bug if reached
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _json_response({"error": f"internal error: {type(err).__name__}"}, 500)

    NAME = PathParam(pattern=_NAME_PATTERN, description="model name")
    VERSION = PathParam(pattern=_VERSION_PATTERN, description="model version (an integer)")

    def check_name(name: str) -> None:
        if not _MODEL_NAME_RE.match(name):
            raise _bad(f"Malformed request: model name {name!r}")

    def status_body(name: str, version: int | None) -> dict:
        check_name(name)
        return {"model_version_status": registry.get(name).status(version)}

    def metadata_body(name: str, version: int | None) -> dict:
        check_name(name)
        served = registry.get(name).resolve(version)
        return {"model_spec": {"name": name, "signature_name": "", "version": str(served.version)},
                "metadata": {"signature_def": {"signature_def": served.signature_defs}}}

    @app.get("/v1/models/{name}", responses=_responses(_STATUS_SCHEMA, 400, 404),
             summary="Model status (all versions)")
    async def model_status(name: str = NAME):
        return _json_response(status_body(name, None))

    @app.get("/v1/models/{name}/versions/{version}", responses=_responses(_STATUS_SCHEMA, 400, 404),
             summary="Model status (one version)")
    async def model_version_status(name: str = NAME, version: str = VERSION):
        return _json_response(status_body(name, _parse_version(version)))

    @app.get("/v1/models/{name}/metadata", responses=_responses(_METADATA_SCHEMA, 400, 404),
             summary="Model metadata (signature definitions) of the served version")
    async def model_metadata(name: str = NAME):
        return _json_response(metadata_body(name, None))

    @app.get("/v1/models/{name}/versions/{version}/metadata",
             responses=_responses(_METADATA_SCHEMA, 400, 404),
             summary="Model metadata of one version")
    async def model_version_metadata(name: str = NAME, version: str = VERSION):
        return _json_response(metadata_body(name, _parse_version(version)))

    async def predict(request: Request, name: str, version: int | None):
        served = registry.get(name).resolve(version)
        body = await request.body()
        if len(body) > 65536:
            parsed = await run_in_threadpool(
                parse_predict_request, body, served.signature, config.input_range)
        else:
            parsed = parse_predict_request(body, served.signature, config.input_range)
        signature, fmt, inputs = parsed
        try:
            outputs = await _execute(served, signature, inputs)
        except ServingError:
            raise
        except Exception as err:  # TF rejects what validation let through
            import tensorflow as tf

            if isinstance(err, (tf.errors.InvalidArgumentError, ValueError, TypeError)):
                raise _bad(f"the model rejected the input: {str(err).splitlines()[0][:300]}") from None
            raise
        return _json_response(format_predict_response(outputs, fmt))

    async def _execute(served: ServedVersion, signature: str, inputs: dict[str, np.ndarray]):
        if not config.batching:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, served.run, signature, inputs)
        row_shapes = tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(inputs.items()))
        key = (served.name, served.version, id(served), signature, row_shapes)
        batcher = batchers.get(key)
        if batcher is None:
            for old_key in [k for k in batchers if k[0] == served.name and k[2] != id(served)
                            and batchers[k].idle]:
                batchers.pop(old_key).close()
            batcher = batchers[key] = Batcher(
                served, signature, executor, config.max_batch_size,
                config.batch_timeout_ms / 1000.0, config.num_batch_threads)
        return await batcher.submit(inputs)

    predict_extra = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _PREDICT_REQUEST_SCHEMA}}}}

    @app.post("/v1/models/{name}:predict", openapi_extra=predict_extra,
              responses=_responses(_PREDICT_RESPONSE_SCHEMA, 400, 404, 413),
              summary="Predict with the newest version")
    async def model_predict(request: Request, name: str = NAME):
        return await predict(request, name, None)

    @app.post("/v1/models/{name}/versions/{version}:predict", openapi_extra=predict_extra,
              responses=_responses(_PREDICT_RESPONSE_SCHEMA, 400, 404, 413),
              summary="Predict with one version")
    async def model_version_predict(request: Request, name: str = NAME, version: str = VERSION):
        return await predict(request, name, _parse_version(version))

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            if "components" in schema and not components:
                schema.pop("components")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.post("/v1/models/{name}:{method}", include_in_schema=False)
    @app.post("/v1/models/{name}/versions/{version}:{method}", include_in_schema=False)
    async def other_method(request: Request, name: str, method: str, version: str = ""):
        if method.lower() in ("classify", "regress"):
            raise _bad(f":{method} is not supported by this server (Example-based signatures); "
                       "use :predict")
        raise ServingError(404, f"Malformed request: POST {request.url.path}")

    return _BodyLimit(app, config.max_body_bytes)


# -- running -------------------------------------------------------------------------------


class RunningServer:
    """A server started by :func:`start_server`; ``url`` is its base address."""

    def __init__(self, server, thread: threading.Thread, registry: ModelRegistry, url: str,
                 app):
        self._server = server
        self._thread = thread
        self.registry = registry
        self.url = url
        self.app = app

    def stop(self, timeout: float = 10.0) -> None:
        """Shuts the server down and stops polling."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self.registry.stop()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say TCP, and without
    # it Nagle's algorithm and the client's delayed ACK add ~40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot bind {host}:{port}: {err.strerror or err}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app, config: ServerConfig, log_level: str, configure_logging: bool = True):
    import uvicorn

    # Embedded servers (start_server) leave the host program's logging alone: uvicorn's
    # dictConfig would bind handlers to whatever sys.stderr is at that moment.
    extra = {} if configure_logging else {"log_config": None}
    uv_config = uvicorn.Config(
        app, log_level=log_level, access_log=False, lifespan="on", **extra,
        limit_concurrency=config.limit_concurrency, timeout_keep_alive=30,
        h11_max_incomplete_event_size=64 * 1024)
    return uvicorn.Server(uv_config)


def _freeze_heap() -> None:
    """Moves every object alive now (TensorFlow, Keras, the loaded models) out of the
    garbage collector's reach.

    A predict body becomes tens of thousands of lists; the collections they trigger
    would otherwise walk TensorFlow's millions of objects each time, stalling requests
    for 100 ms or more.
    """
    gc.collect()
    gc.freeze()


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def start_server(config: ServerConfig, log_level: str = "warning") -> RunningServer:
    """Starts the server in a background thread (port 0 picks a free port).

    Use as a context manager in tests and notebooks::

        with start_server(ServerConfig({"mnist": "serving/models/mnist"}, port=0)) as s:
            RestClient(s.url, "mnist").predict(images)

    Raises:
        ValueError: if the address cannot be bound.
    """
    registry = ModelRegistry(config.models, config.poll_seconds)
    registry.start()
    sock = _bind(config.host, config.port)
    app = create_app(registry, config)
    server = _uvicorn_server(app, config, log_level, configure_logging=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="tfrobust-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        registry.stop()
        raise RuntimeError("the server did not start")
    return RunningServer(server, thread, registry, _url(sock), app.app)


def serve(config: ServerConfig, log_level: str = "info") -> None:
    """Runs the server in the foreground until interrupted."""
    registry = ModelRegistry(config.models, config.poll_seconds)
    registry.start()
    _freeze_heap()
    sock = _bind(config.host, config.port)
    app = create_app(registry, config)
    print(f"tfrobust serve: listening on {_url(sock)} "
          f"(models: {', '.join(sorted(config.models))}; OpenAPI at /openapi.json)", flush=True)
    try:
        _uvicorn_server(app, config, log_level).run(sockets=[sock])
    finally:
        registry.stop()


# -- command line ----------------------------------------------------------------------------


def parse_model_specs(specs: Sequence[str]) -> dict[str, str]:
    """Parses repeated ``NAME=BASE`` options.

    Raises:
        ValueError: for a malformed or duplicated entry.
    """
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, base = spec.partition("=")
        if not sep or not name or not base:
            raise ValueError(f"--model {spec!r} must look like NAME=BASE_PATH")
        if name in models:
            raise ValueError(f"--model {spec!r}: model {name!r} is given twice")
        models[name] = base
    return models


_CONFIG_ENTRY_RE = re.compile(r"config\s*\{(.*?)\}", re.S)
_CONFIG_FIELD_RE = re.compile(r'(\w+)\s*:\s*"([^"]*)"')


def read_model_config_file(path: str | os.PathLike) -> dict[str, str]:
    """Reads ``name`` and ``base_path`` of each entry of a TF Serving ``models.config``.

    Only the plain ``model_config_list { config { name: "..." base_path: "..." } }``
    form is understood (version policies and labels are ignored). A relative
    base path is taken relative to the config file's folder.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it lists no model or a model without name or base path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config file {str(path)!r} does not exist")
    text = re.sub(r"#[^\n]*", "", path.read_text())
    models: dict[str, str] = {}
    for entry in _CONFIG_ENTRY_RE.findall(text):
        fields = dict(_CONFIG_FIELD_RE.findall(entry))
        if "name" not in fields or "base_path" not in fields:
            raise ValueError(f"{path}: each config entry needs name and base_path")
        base = Path(fields["base_path"])
        models[fields["name"]] = str(base if base.is_absolute() else path.parent / base)
    if not models:
        raise ValueError(f"{path}: no 'config {{ name: ... base_path: ... }}' entry found")
    return models
