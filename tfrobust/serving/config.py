"""The settings of ``tfrobust serve``: models, address, limits, batching, input range."""

from __future__ import annotations

import dataclasses
from typing import Mapping

from tfrobust.serving.protocol import MODEL_NAME_RE

__all__ = ["ServerConfig"]


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Settings of the local server.

    Attributes:
        models: model name -> base path (folder of integer-named versions).
        host: interface to bind; 127.0.0.1 unless you mean to expose it.
        port: TCP port of the REST API; 0 picks a free one.
        grpc_port: TCP port of TF Serving's gRPC API (TF Serving's is 8500); 0 picks a
            free one; ``None`` (the default here; ``tfrobust serve`` turns it on) serves
            REST only. Needs ``tensorflow-serving-api``.
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
    grpc_port: int | None = None
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
            if not MODEL_NAME_RE.match(name):
                raise ValueError(f"model name {name!r} may not contain '/', ':' or spaces")
        for field in ("port", "grpc_port"):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, int) and 0 <= value <= 65535):
                raise ValueError(f"{field}={value} must be in 0..65535")
        if self.port is None:
            raise ValueError("port=None: the REST port is always on (0 picks a free one)")
        for field in ("max_body_bytes", "max_batch_size", "num_batch_threads", "limit_concurrency"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}={getattr(self, field)} must be at least 1")
        if self.poll_seconds <= 0 or self.batch_timeout_ms < 0:
            raise ValueError("poll_seconds must be > 0 and batch_timeout_ms >= 0")
        if self.input_range is not None and not self.input_range[0] <= self.input_range[1]:
            raise ValueError(f"input_range={self.input_range} must be (low, high) with low <= high")
