"""TF Serving's gRPC API on the local server, with ``tensorflow-serving-api``'s own protos.

Services, as ``tensorflow_model_server`` offers them on its gRPC port (8500):

* ``tensorflow.serving.PredictionService``: ``Predict`` and ``GetModelMetadata``
  (``Classify``, ``Regress`` and ``MultiInference`` answer ``UNIMPLEMENTED``: they
  need ``tf.Example`` signatures, which :mod:`tfrobust.serving.export` does not write);
* ``tensorflow.serving.ModelService``: ``GetModelStatus``.

Requests go through the same :class:`~tfrobust.serving.core.ServingCore` as the REST
routes: the same models and versions, the same input checks (shape, finite values, the
input range) and the same batchers. Status codes are TF Serving's: ``INVALID_ARGUMENT``
for a bad or missing input, a missing model spec or a version label (this server has
none); ``NOT_FOUND`` for an unknown model or a version that is not served;
``FAILED_PRECONDITION`` for an unknown signature (TF Serving's ``Serving signature key
"..." not found.``); ``RESOURCE_EXHAUSTED`` over the message limit. Any other failure
is logged and answered ``INTERNAL``; no request stops the server.

This module imports ``grpc`` and ``tensorflow_serving``; :mod:`.server` imports it only
when the gRPC port is on.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Awaitable

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from tfrobust.serving.config import ServerConfig
from tfrobust.serving.core import ServingCore
from tfrobust.serving.protocol import ServingError, check_input, check_shape, numpy_dtype
from tfrobust.serving.registry import ServedVersion

log = logging.getLogger("tfrobust.server")

__all__ = [
    "PredictionServicer",
    "ModelServicer",
    "grpc_address",
    "start_grpc_server",
    "status_code",
]

_BY_HTTP_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                   413: grpc.StatusCode.RESOURCE_EXHAUSTED}

_OFFLOAD_VALUES = 65536
"""Tensors with more values than this are decoded in a worker thread, off the event loop."""


class _RpcError(Exception):
    """A gRPC-only error: ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def status_code(err: ServingError) -> grpc.StatusCode:
    """The gRPC status of a :class:`ServingError` (its HTTP status: 400, 404, 413)."""
    return _BY_HTTP_STATUS.get(err.status, grpc.StatusCode.INTERNAL)


def grpc_address(host: str, port: int) -> str:
    """``HOST:PORT`` as gRPC writes it (``[::1]:8500`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _answer(context, work: Awaitable[Any]):
    """Awaits ``work``; any error becomes the matching status instead of a crash."""
    try:
        return await work
    except _RpcError as err:
        code, message = err.code, err.message
    except ServingError as err:
        code, message = status_code(err), err.message
    except Exception as err:  # noqa: BLE001 - a bug if reached; never take the server down
        log.exception("internal error in a gRPC call")
        code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}"
    await context.abort(code, message)


def _spec_version(request) -> tuple[str, int | None]:
    """Model name and version (``None``: the newest) of a request's ``model_spec``."""
    if not request.HasField("model_spec"):
        raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"Unrecognized servable version label: {spec.version_label}")
    return spec.name, spec.version.value if choice == "version" else None


def _decode(name: str, proto, dtype_name: str, shape, max_bytes: int) -> np.ndarray:
    """One request tensor as numpy, checked against the signature before it is expanded."""
    want = numpy_dtype(dtype_name)
    if want is None:
        raise ServingError(400, f"input {name!r} has dtype {dtype_name}, which this server does not support")
    got = types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() else str(proto.dtype)
    if got != dtype_name:
        raise ServingError(400, f"input {name!r}: expected dtype {dtype_name} but got {got}")
    dims = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise ServingError(400, f"input {name!r}: the tensor's shape {list(dims)} must be fully known")
    check_shape(dims, name, shape)
    if int(np.prod(dims, dtype=np.float64)) * want.itemsize > max_bytes:
        raise _RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"input {name!r}: shape {list(dims)} exceeds the limit of {max_bytes} bytes")
    try:
        return tf.make_ndarray(proto)
    except (ValueError, TypeError) as err:
        raise ServingError(400, f"tensor parsing error: {name}: {str(err).splitlines()[0][:200]}") from None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``PredictionService`` over a :class:`ServingCore`."""

    def __init__(self, core: ServingCore, config: ServerConfig):
        self.core = core
        self.config = config
        self._signature_maps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def Predict(self, request, context):  # noqa: N802 - the proto's name
        return await _answer(context, self._predict(request))

    async def GetModelMetadata(self, request, context):  # noqa: N802
        return await _answer(context, self._metadata(request))

    async def Classify(self, request, context):  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not supported by this server "
                            "(tf.Example signatures); use Predict")

    async def Regress(self, request, context):  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by this server "
                            "(tf.Example signatures); use Predict")

    async def MultiInference(self, request, context):  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by this "
                            "server (tf.Example signatures); use Predict")

    async def _predict(self, request) -> predict_pb2.PredictResponse:
        name, version = _spec_version(request)
        served = self.core.resolve(name, version)
        key = request.model_spec.signature_name or "serving_default"
        if key not in served.signatures:
            raise _RpcError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        signature = served.signatures[key]
        _check_input_names(request, signature.inputs)
        outputs = _output_names(request, signature.outputs)
        size = sum(len(p.tensor_content) // 4 + len(p.float_val) for p in request.inputs.values())
        if size > _OFFLOAD_VALUES:
            inputs = await asyncio.get_running_loop().run_in_executor(None, self._inputs, request, signature)
        else:
            inputs = self._inputs(request, signature)
        results = await self.core.run(served, key, inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.signature_name = key
        response.model_spec.version.value = served.version
        for out in outputs:
            response.outputs[out].CopyFrom(tf.make_tensor_proto(results[out]))
        return response

    def _inputs(self, request, signature) -> dict[str, np.ndarray]:
        arrays = {}
        for n, proto in request.inputs.items():
            dtype_name, shape = signature.inputs[n]
            arrays[n] = _decode(n, proto, dtype_name, shape, self.config.max_body_bytes)
            check_input(arrays[n], n, shape, self.config.input_range)
        batch = {a.shape[0] for a in arrays.values()}
        if len(batch) > 1:
            raise ServingError(400, f"inputs have different batch sizes {sorted(batch)}")
        return arrays

    async def _metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        name, version = _spec_version(request)
        if not request.metadata_field:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                            "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
        served = self.core.resolve(name, version)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = served.version
        response.metadata["signature_def"].Pack(self._signature_map(served))
        return response

    def _signature_map(self, served: ServedVersion) -> get_model_metadata_pb2.SignatureDefMap:
        found = self._signature_maps.get(served)
        if found is None:
            found = json_format.ParseDict({"signature_def": served.signature_defs},
                                          get_model_metadata_pb2.SignatureDefMap())
            self._signature_maps[served] = found
        return found


def _check_input_names(request, names) -> None:
    """TF Serving's check: the request names exactly the signature's inputs."""
    sent, wanted = set(request.inputs), set(names)
    if sent != wanted:
        join = ",".join
        raise ServingError(400, f"input size does not match signature: {len(sent)}!={len(wanted)} "
                                f"len({{{join(sorted(sent))}}}) != len({{{join(sorted(wanted))}}}). "
                                f"Sent extra: {{{join(sorted(sent - wanted))}}}. "
                                f"Missing but required: {{{join(sorted(wanted - sent))}}}.")


def _output_names(request, outputs) -> list[str]:
    """The outputs to return: ``output_filter``, checked as TF Serving does, or all of them."""
    if not request.output_filter:
        return sorted(outputs)
    seen: list[str] = []
    for alias in request.output_filter:
        if alias not in outputs:
            raise ServingError(400, f"output tensor alias not found in signature: {alias} Outputs "
                                    f"expected to be in the set {{{','.join(sorted(outputs))}}}.")
        if alias in seen:
            raise ServingError(400, f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``ModelService.GetModelStatus`` over a :class:`ServingCore` (config reload: UNIMPLEMENTED)."""

    def __init__(self, core: ServingCore):
        self.core = core

    async def GetModelStatus(self, request, context):  # noqa: N802
        return await _answer(context, self._status(request))

    async def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "config reload is not supported by this server")

    async def _status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        name, version = _spec_version(request)
        response = get_model_status_pb2.GetModelStatusResponse()
        codes = get_model_status_pb2.ModelVersionStatus.DESCRIPTOR.fields_by_name["status"].message_type \
            .fields_by_name["error_code"].enum_type.values_by_name
        for entry in self.core.status(name, version):
            status = response.model_version_status.add()
            status.version = int(entry["version"])
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(entry["state"])
            status.status.error_code = codes[entry["status"]["error_code"]].number
            status.status.error_message = entry["status"]["error_message"]
        return response


async def start_grpc_server(core: ServingCore, config: ServerConfig) -> tuple[grpc.aio.Server, int]:
    """Starts the gRPC services on ``config.host``:``config.grpc_port`` in the running event loop.

    Returns:
        The server (stop it with ``await server.stop(grace)``) and its port.

    Raises:
        ValueError: if ``config.grpc_port`` is ``None`` or the address cannot be bound (it is
            never shared with another server).
    """
    if config.grpc_port is None:
        raise ValueError("config.grpc_port is None: no gRPC port to listen on")
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", config.max_body_bytes),
                 ("grpc.max_send_message_length", -1)],
        maximum_concurrent_rpcs=config.limit_concurrency)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(core, config), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    address = grpc_address(config.host, config.grpc_port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:
        raise ValueError(f"cannot bind {address} for gRPC: {err}") from None
    if not port:
        raise ValueError(f"cannot bind {address} for gRPC")
    await server.start()
    return server, port
