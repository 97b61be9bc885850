"""Clients for TF Serving (or ``tfrobust serve``): REST and gRPC.

:class:`RestClient` needs only numpy and the standard library and talks to
TF Serving's REST port (8501) or the local server. :class:`GrpcClient` talks
to TF Serving's gRPC port (8500) through ``tensorflow-serving-api``.
Both return the signature's outputs as numpy arrays keyed by output name.

Example (the quickstart's last step)::

    client = RestClient("http://127.0.0.1:8501", "tfrobust")
    scores = client.robustness(x_test[:10])
    print(format_scores(scores, labels=y_test[:10]))

Command line: ``tfrobust client --url http://127.0.0.1:8501 --model tfrobust --n 10``
scores the first test images of the dataset matching the model's input shape and
prints margin scores next to the predictions.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import urllib.parse
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "RestError",
    "RestClient",
    "GrpcClient",
    "score_images",
    "format_scores",
]

INPUT_NAME = "inputs"
"""Input name of the signatures :mod:`tfrobust.serving.export` writes."""


class RestError(RuntimeError):
    """An error answer from the server: HTTP ``status`` and its ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _as_arrays(value: Any) -> dict[str, np.ndarray]:
    if isinstance(value, dict):
        return {k: np.asarray(v) for k, v in value.items()}
    return {"outputs": np.asarray(value)}


def _rows_to_arrays(predictions: list) -> dict[str, np.ndarray]:
    if predictions and isinstance(predictions[0], dict):
        return {k: np.asarray([row[k] for row in predictions]) for k in predictions[0]}
    return {"outputs": np.asarray(predictions)}


class _HTTPConnection(http.client.HTTPConnection):
    """http.client sends headers and body in two writes; without TCP_NODELAY, Nagle's
    algorithm and the server's delayed ACK add about 40 ms to every small request."""

    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class RestClient:
    """A client of TF Serving's REST API for one model.

    One keep-alive connection per thread, so an instance can be shared by the
    threads of a load test.

    Args:
        url: server address, e.g. ``http://127.0.0.1:8501``.
        model: model name.
        version: a fixed version, or ``None`` for the newest.
        timeout: seconds per request.
    """

    def __init__(self, url: str = "http://127.0.0.1:8501", model: str = "tfrobust", *,
                 version: int | None = None, timeout: float = 60.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url={url!r} must look like http://HOST:PORT")
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.timeout = timeout
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._local = threading.local()

    # -- transport ------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = _HTTPSConnection if self._scheme == "https" else _HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Closes this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Sends one request on the keep-alive connection; returns ``(status, body)``.

        Retries once (on a fresh connection) if the connection fails, e.g. because
        the server closed it while idle; predict requests are safe to repeat.
        """
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except TimeoutError:
                self.close()
                raise
            except (http.client.HTTPException, OSError):  # e.g. an idle connection the server closed
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        status, raw = self.request(method, path, body)
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"error": raw[:200].decode(errors="replace")}
        if status != 200:
            message = doc.get("error", str(doc)) if isinstance(doc, dict) else str(doc)
            raise RestError(status, message)
        return doc

    def _model_path(self) -> str:
        name = urllib.parse.quote(self.model, safe="")
        path = f"/v1/models/{name}"
        return path if self.version is None else f"{path}/versions/{self.version}"

    # -- API ------------------------------------------------------------------------

    def status(self) -> dict:
        """``GET /v1/models/{name}``: the version status list."""
        return self._json("GET", self._model_path())

    def metadata(self) -> dict:
        """``GET /v1/models/{name}/metadata``: the signature definitions."""
        return self._json("GET", self._model_path() + "/metadata")

    def input_shape(self, signature_name: str = "serving_default") -> tuple[int, ...]:
        """The per-example input shape declared by a signature (from the metadata)."""
        sigs = self.metadata()["metadata"]["signature_def"]["signature_def"]
        if signature_name not in sigs:
            raise KeyError(f"signature {signature_name!r} not in {sorted(sigs)}")
        (info,) = sigs[signature_name]["inputs"].values()
        return tuple(int(d["size"]) for d in info["tensor_shape"]["dim"][1:])

    def predict(self, x: Any, *, signature_name: str = "serving_default",
                row_format: bool = False) -> dict[str, np.ndarray]:
        """``POST :predict``; returns outputs by name.

        Args:
            x: a batch ``[N, H, W, C]`` (array or nested lists).
            signature_name: ``"serving_default"`` or ``"robustness"``.
            row_format: send ``instances`` (row format) instead of ``inputs``.

        Raises:
            RestError: the server's answer for a bad request (4xx) or a failure.
        """
        data = np.asarray(x, dtype=np.float32).tolist()
        payload = {"signature_name": signature_name}
        payload["instances" if row_format else "inputs"] = data
        doc = self._json("POST", self._model_path() + ":predict", payload)
        return _rows_to_arrays(doc["predictions"]) if row_format else _as_arrays(doc["outputs"])

    def robustness(self, x: Any, **kwargs) -> dict[str, np.ndarray]:
        """``predict`` with the ``robustness`` signature (margin scores beside predictions)."""
        return self.predict(x, signature_name="robustness", **kwargs)


class GrpcClient:
    """A client of TF Serving's gRPC ``PredictionService`` (needs ``tensorflow-serving-api``).

    Args:
        target: ``HOST:PORT`` of TF Serving's gRPC port, e.g. ``127.0.0.1:8500``.
        model: model name.
        version: a fixed version, or ``None`` for the newest.
        timeout: seconds per call.

    Raises:
        ImportError: if ``tensorflow-serving-api`` is not installed.
    """

    def __init__(self, target: str = "127.0.0.1:8500", model: str = "tfrobust", *,
                 version: int | None = None, timeout: float = 60.0):
        try:
            import grpc
            from tensorflow_serving.apis import prediction_service_pb2_grpc
        except ImportError as err:
            raise ImportError("GrpcClient needs tensorflow-serving-api: "
                              "pip install tensorflow-serving-api") from err
        self.target = target
        self.model = model
        self.version = version
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 64 * 2**20),
            ("grpc.max_receive_message_length", 64 * 2**20)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _spec(self, spec, signature_name: str) -> None:
        spec.name = self.model
        spec.signature_name = signature_name
        if self.version is not None:
            spec.version.value = self.version

    def predict(self, x: Any, *, signature_name: str = "serving_default") -> dict[str, np.ndarray]:
        """``PredictionService.Predict``; returns outputs by name."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature_name)
        request.inputs[INPUT_NAME].CopyFrom(
            tf.make_tensor_proto(np.asarray(x, dtype=np.float32)))
        response = self._stub.Predict(request, timeout=self.timeout)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def robustness(self, x: Any) -> dict[str, np.ndarray]:
        """``predict`` with the ``robustness`` signature."""
        return self.predict(x, signature_name="robustness")

    def metadata(self) -> Any:
        """``PredictionService.GetModelMetadata`` (signature defs), as the proto response."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request.model_spec, "")
        request.metadata_field.append("signature_def")
        return self._stub.GetModelMetadata(request, timeout=self.timeout)

    def input_shape(self, signature_name: str = "serving_default") -> tuple[int, ...]:
        """The per-example input shape declared by a signature (from the metadata)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        sig_map = get_model_metadata_pb2.SignatureDefMap()
        self.metadata().metadata["signature_def"].Unpack(sig_map)
        if signature_name not in sig_map.signature_def:
            raise KeyError(f"signature {signature_name!r} not in {sorted(sig_map.signature_def)}")
        (info,) = sig_map.signature_def[signature_name].inputs.values()
        return tuple(int(d.size) for d in info.tensor_shape.dim[1:])

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()


def score_images(client: RestClient | GrpcClient, images: np.ndarray,
                 batch_size: int = 64, smoothed: bool = False) -> dict[str, np.ndarray]:
    """Runs the ``robustness`` signature over ``images`` in batches; concatenates outputs.

    With ``smoothed``, the ``smoothed`` signature's outputs (an export with ``--smoothing``) join them.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim < 2 or len(images) == 0:
        raise ValueError(f"images must be a non-empty batch; got shape {images.shape}")
    parts = [client.robustness(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    if smoothed:
        for i, part in zip(range(0, len(images), batch_size), parts):
            part.update(client.predict(images[i:i + batch_size], signature_name="smoothed"))
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def format_scores(scores: Mapping[str, np.ndarray], labels: Sequence[int] | np.ndarray | None = None) -> str:
    """A table: one line per image with its prediction and margin scores.

    Columns: index, predicted class, its probability, true label (when given),
    margin (top-1 minus top-2 logit), grad_norm and effective_margin
    (first-order distance to the decision boundary, in input units), and the
    calibrated ``estimated_radius`` and the proven L∞ ``certified_radius`` when the export has them,
    and the smoothed classifier's class (``abst`` where it abstains) and certified L2 radius when the
    scores hold the ``smoothed`` signature's outputs.
    """
    pred = np.asarray(scores["predicted_class"]).astype(int)
    prob = np.asarray(scores["probabilities"])[np.arange(len(pred)), pred]
    header = f"{'#':>4} {'pred':>4} {'prob':>6}" + (f" {'label':>5}" if labels is not None else "")
    header += f" {'margin':>9} {'grad_norm':>10} {'eff_margin':>11}"
    radius = scores.get("estimated_radius")
    if radius is not None:
        header += f" {'radius':>9}"
    certified = scores.get("certified_radius")
    if certified is not None:
        header += f" {'certified':>9}"
    smooth = scores.get("smoothed_class")
    if smooth is not None:
        header += f" {'smooth':>6} {'l2_radius':>9}"
    lines = [header]
    for i in range(len(pred)):
        line = f"{i:>4} {pred[i]:>4} {prob[i]:>6.3f}"
        if labels is not None:
            mark = "" if int(labels[i]) == pred[i] else "*"
            line += f" {str(int(labels[i])) + mark:>5}"
        line += (f" {float(scores['margin'][i]):>9.4f} {float(scores['grad_norm'][i]):>10.4f}"
                 f" {float(scores['effective_margin'][i]):>11.5f}")
        if radius is not None:
            line += f" {float(radius[i]):>9.5f}"
        if certified is not None:
            line += f" {float(certified[i]):>9.5f}"
        if smooth is not None:
            cls = "abst" if int(smooth[i]) < 0 else str(int(smooth[i]))
            line += f" {cls:>6} {float(scores['certified_radius_l2'][i]):>9.4f}"
        lines.append(line)
    if labels is not None:
        lines.append("(* = misclassified)")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover  (``tfrobust client`` is the documented way)
    from tfrobust.cli import main

    sys.exit(main(["client", *sys.argv[1:]]))
