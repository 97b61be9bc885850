"""The HTTP application: TF Serving's REST routes, OpenAPI description, body limits.

No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
at run time, and names imported inside :func:`create_app` are not visible to string annotations.
"""

import contextlib
import json
import logging
from typing import Any

from tfrobust.serving.config import ServerConfig
from tfrobust.serving.core import ServingCore
from tfrobust.serving.protocol import (MODEL_NAME_RE, NAME_PATTERN, VERSION_PATTERN, ServingError, bad_request,
                                       format_predict_response, parse_predict_request, parse_version)
from tfrobust.serving.registry import ModelRegistry


log = logging.getLogger("tfrobust.server")

__all__ = [
    "create_app",
]


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


def _add_error_handlers(app) -> None:
    """Every error as ``{"error": "..."}``: a :class:`ServingError` with its status, Starlette's
    (a 404 as a malformed request), FastAPI's validation errors as 400 and anything else as 500."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

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


def _without_validation_errors(schema: dict) -> dict:
    """The OpenAPI ``schema`` without FastAPI's 422 responses and their components: a request
    that fails validation gets a 400 here (:func:`_add_error_handlers`)."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    if "components" in schema and not components:
        schema.pop("components")
    return schema


def _path_params() -> tuple[Any, Any]:
    """The ``{name}`` and ``{version}`` path parameters of the routes, with their patterns."""
    from fastapi import Path as PathParam

    return (PathParam(pattern=NAME_PATTERN, description="model name"),
            PathParam(pattern=VERSION_PATTERN, description="model version (an integer)"))


def _add_status_routes(app, core: ServingCore) -> None:
    """The GET routes: model status and metadata, of every version or of one."""
    NAME, VERSION = _path_params()

    def check_name(name: str) -> None:
        if not MODEL_NAME_RE.match(name):
            raise bad_request(f"Malformed request: model name {name!r}")

    def status_body(name: str, version: int | None) -> dict:
        check_name(name)
        return {"model_version_status": core.status(name, version)}

    def metadata_body(name: str, version: int | None) -> dict:
        check_name(name)
        return core.metadata(name, version)

    @app.get("/v1/models/{name}", responses=_responses(_STATUS_SCHEMA, 400, 404),
             summary="Model status (all versions)")
    async def model_status(name: str = NAME):
        return _json_response(status_body(name, None))

    @app.get("/v1/models/{name}/versions/{version}", responses=_responses(_STATUS_SCHEMA, 400, 404),
             summary="Model status (one version)")
    async def model_version_status(name: str = NAME, version: str = VERSION):
        return _json_response(status_body(name, parse_version(version)))

    @app.get("/v1/models/{name}/metadata", responses=_responses(_METADATA_SCHEMA, 400, 404),
             summary="Model metadata (signature definitions) of the served version")
    async def model_metadata(name: str = NAME):
        return _json_response(metadata_body(name, None))

    @app.get("/v1/models/{name}/versions/{version}/metadata",
             responses=_responses(_METADATA_SCHEMA, 400, 404),
             summary="Model metadata of one version")
    async def model_version_metadata(name: str = NAME, version: str = VERSION):
        return _json_response(metadata_body(name, parse_version(version)))


def _new_app(registry: ModelRegistry, config: ServerConfig, core: ServingCore | None):
    """The FastAPI app with its title, lifespan and state: ``core``, or a new one that the
    lifespan closes at shutdown (made after FastAPI is imported, so a missing FastAPI leaks none)."""
    from fastapi import FastAPI

    import tfrobust

    owned = core is None
    if core is None:
        core = ServingCore(registry, config)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if owned:
            core.close()

    app = FastAPI(
        lifespan=lifespan,
        title="tfrobust local model server",
        version=tfrobust.__version__,
        description="TF Serving's REST API (predict, status, metadata) for SavedModels exported "
                    "by `tfrobust export`. Errors are `{\"error\": \"...\"}`.",
        docs_url=None, redoc_url=None)
    app.state.core = core
    app.state.batchers = core.batchers
    app.state.executor = core.executor
    return app


def _add_predict_routes(app, core: ServingCore, config: ServerConfig) -> None:
    """The POST ``:predict`` routes, of the newest version or of one."""
    from fastapi import Request
    from starlette.concurrency import run_in_threadpool

    NAME, VERSION = _path_params()

    async def predict(request: Request, name: str, version: int | None):
        served = core.resolve(name, version)
        body = await request.body()
        if len(body) > 65536:
            parsed = await run_in_threadpool(
                parse_predict_request, body, served.signature, config.input_range)
        else:
            parsed = parse_predict_request(body, served.signature, config.input_range)
        signature, fmt, inputs = parsed
        outputs = await core.run(served, signature, inputs)
        return _json_response(format_predict_response(outputs, fmt))

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
        return await predict(request, name, parse_version(version))


def _set_openapi(app) -> None:
    """Replaces ``app.openapi`` by one whose schema lacks FastAPI's validation errors (built once)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = _without_validation_errors(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # how FastAPI documents extending the schema


def _add_other_method_route(app) -> None:
    """The undocumented catch-all POST route: ``:classify``/``:regress`` as 400, other methods as 404."""
    from fastapi import Request

    @app.post("/v1/models/{name}:{method}", include_in_schema=False)
    @app.post("/v1/models/{name}/versions/{version}:{method}", include_in_schema=False)
    async def other_method(request: Request, name: str, method: str, version: str = ""):
        if method.lower() in ("classify", "regress"):
            raise bad_request(f":{method} is not supported by this server (Example-based signatures); "
                       "use :predict")
        raise ServingError(404, f"Malformed request: POST {request.url.path}")


def create_app(registry: ModelRegistry, config: ServerConfig, core: ServingCore | None = None):
    """Builds the ASGI application (FastAPI) serving ``registry``.

    Args:
        registry: the served models.
        config: server settings.
        core: the model calls to share with another front-end (gRPC); by default the
            app makes its own and closes it when it shuts down. One passed in is left
            open for its owner to close.

    Returns:
        An ASGI callable; its FastAPI app is at ``.app`` (with ``.state.core`` and
        ``.state.batchers``).
    """
    app = _new_app(registry, config, core)
    core = app.state.core
    _add_error_handlers(app)
    _add_status_routes(app, core)
    _add_predict_routes(app, core, config)
    _set_openapi(app)
    _add_other_method_route(app)
    return _BodyLimit(app, config.max_body_bytes)
