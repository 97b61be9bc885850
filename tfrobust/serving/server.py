"""A local server that speaks TF Serving's REST API, for development.

``tfrobust serve`` serves the SavedModels that :mod:`tfrobust.serving.export` writes
(any TF SavedModel with numeric inputs works) under the same URLs, request
and response formats and error envelope as ``tensorflow_model_server``:

* ``GET  /v1/models/{name}[/versions/{v}]``: model status;
* ``GET  /v1/models/{name}[/versions/{v}]/metadata``: signature definitions;
* ``POST /v1/models/{name}[/versions/{v}]:predict`` with ``signature_name``
  and either ``instances`` (row format, answered by ``predictions``) or
  ``inputs`` (columnar format, answered by ``outputs``);
* errors are ``{"error": "..."}`` with HTTP 400 (bad request) or 404 (unknown
  model or version), plus 413 for an oversize body;
* ``GET /openapi.json``: the OpenAPI description of all of the above;
* with ``grpc_port`` set (``tfrobust serve`` sets 8500), TF Serving's gRPC API on a
  second port: ``PredictionService.Predict``/``GetModelMetadata`` and
  ``ModelService.GetModelStatus`` (:mod:`.grpc_api`), sharing models, versions,
  input checks and batchers with the REST routes.

Like TF Serving's default version policy it serves the newest version under
each model's base path and polls the base path, so a version exported while
the server runs is picked up without a restart (the previous one keeps
answering until the new one has loaded). Concurrent requests for the same
model, version and signature are batched into one call when the model is
busy (opportunistic batching: no request waits for a batch to fill).

It binds 127.0.0.1 by default: it is meant for development and tests, not as
an internet-facing service.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from tfrobust.serving.app import create_app
from tfrobust.serving.batching import Batcher
from tfrobust.serving.config import ServerConfig
from tfrobust.serving.core import ServingCore
from tfrobust.serving.registry import ModelRegistry


__all__ = [
    "ServerConfig",
    "RunningServer",
    "start_server",
    "require_grpc",
    "serve",
    "parse_model_specs",
    "read_model_config_file",
    "Batcher",
    "ModelRegistry",
    "create_app",
]


log = logging.getLogger("tfrobust.server")


class RunningServer:
    """A server started by :func:`start_server`.

    Attributes:
        url: base address of the REST API, ``http://HOST:PORT``.
        grpc_target: ``HOST:PORT`` of the gRPC API, or ``None`` when it is off.
        registry: the served models.
        app: the FastAPI application.
    """

    def __init__(self, server, thread: threading.Thread, registry: ModelRegistry, url: str,
                 app, grpc_target: str | None = None):
        self._server = server
        self._thread = thread
        self.registry = registry
        self.url = url
        self.app = app
        self.grpc_target = grpc_target

    def stop(self, timeout: float = 10.0) -> None:
        """Shuts both ports down (gRPC calls in flight get a few seconds) and stops polling."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self.registry.stop()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def require_grpc() -> None:
    """Checks that the gRPC port can be served.

    Raises:
        ImportError: naming the package to install, if ``tensorflow-serving-api`` is missing.
    """
    try:
        import grpc  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        import tensorflow_serving.apis.prediction_service_pb2_grpc  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError as err:
        raise ImportError(f"the gRPC port needs tensorflow-serving-api ({err}): pip install "
                          "'tfrobust[grpc]', or serve REST only (tfrobust serve --no-grpc; "
                          "ServerConfig(grpc_port=None))") from None


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

    class _Server(uvicorn.Server):
        """uvicorn's server, except that a caught SIGINT/SIGTERM is not raised again when it
        has stopped: the gRPC port and the model threads still have to be shut down."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    # Embedded servers (start_server) leave the host program's logging alone: uvicorn's
    # dictConfig would bind handlers to whatever sys.stderr is at that moment.
    extra: dict[str, Any] = {} if configure_logging else {"log_config": None}
    uv_config = uvicorn.Config(
        app, log_level=log_level, access_log=False, lifespan="on", **extra,
        limit_concurrency=config.limit_concurrency, timeout_keep_alive=30,
        h11_max_incomplete_event_size=64 * 1024)
    return _Server(uv_config)


async def _serve_both(uv_server, sock: socket.socket, core: ServingCore, config: ServerConfig,
                      on_ready) -> None:
    """Runs the REST server and, if ``config.grpc_port`` is set, the gRPC one on this event loop.

    ``on_ready(grpc_target or None)`` is called once both ports are bound. Both front-ends
    share ``core`` (and so its batchers, which belong to this loop); it is closed last.
    """
    grpc_server = None
    try:
        target = None
        if config.grpc_port is not None:
            from tfrobust.serving.grpc_api import grpc_address, start_grpc_server  # pylint: disable=import-outside-toplevel

            grpc_server, port = await start_grpc_server(core, config)
            target = grpc_address(config.host, port)
        on_ready(target)
        await uv_server.serve(sockets=[sock])
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=5)
        core.close()


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


def _prepare(config: ServerConfig, log_level: str, configure_logging: bool):
    """Checks gRPC's package, starts the registry, binds the REST port; returns the pieces."""
    if config.grpc_port is not None:
        require_grpc()
    registry = ModelRegistry(config.models, config.poll_seconds)
    registry.start()
    try:
        sock = _bind(config.host, config.port)
    except ValueError:
        registry.stop()
        raise
    core = ServingCore(registry, config)
    app = create_app(registry, config, core)
    return registry, sock, core, app, _uvicorn_server(app, config, log_level, configure_logging)


def start_server(config: ServerConfig, log_level: str = "warning") -> RunningServer:
    """Starts the server in a background thread (port 0 picks a free port).

    Use as a context manager in tests and notebooks::

        config = ServerConfig({"mnist": "serving/models/mnist"}, port=0, grpc_port=0)
        with start_server(config) as s:
            RestClient(s.url, "mnist").predict(images)
            GrpcClient(s.grpc_target, "mnist").predict(images)

    Raises:
        ValueError: if an address cannot be bound.
        ImportError: if ``grpc_port`` is set and ``tensorflow-serving-api`` is missing.
    """
    registry, sock, core, app, server = _prepare(config, log_level, configure_logging=False)
    state: dict = {}
    ready = threading.Event()

    def on_ready(target):
        state["grpc_target"] = target
        ready.set()

    def run():
        try:
            asyncio.run(_serve_both(server, sock, core, config, on_ready))
        except BaseException as err:  # noqa: BLE001 - handed to the starting thread
            state["error"] = err
        finally:
            sock.close()
            ready.set()

    thread = threading.Thread(target=run, name="tfrobust-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and ready.is_set()) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        thread.join(10)
        registry.stop()
        if isinstance(state.get("error"), Exception):
            raise state["error"]
        raise RuntimeError("the server did not start")
    return RunningServer(server, thread, registry, _url(sock), app.app, state.get("grpc_target"))


def serve(config: ServerConfig, log_level: str = "info") -> None:
    """Runs the server in the foreground until interrupted (SIGINT or SIGTERM)."""
    registry, sock, core, app, server = _prepare(config, log_level, configure_logging=True)
    _freeze_heap()

    def on_ready(target):
        grpc = f" and gRPC on {target}" if target else ""
        print(f"tfrobust serve: listening on {_url(sock)}{grpc} "
              f"(models: {', '.join(sorted(config.models))}; OpenAPI at /openapi.json)", flush=True)

    try:
        asyncio.run(_serve_both(server, sock, core, config, on_ready))
    finally:
        registry.stop()


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
