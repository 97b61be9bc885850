"""What the REST and gRPC front-ends share: model lookup, status, metadata and model calls.

Both front-ends of ``tfrobust serve`` (:mod:`.app` for REST, :mod:`.grpc_api` for gRPC)
parse their own wire format into numpy arrays, then call one :class:`ServingCore`:
the same registry, the same version resolution, the same batchers (requests from
both front-ends for one signature share model calls) and the same mapping of what
TensorFlow rejects to a 400 :class:`~tfrobust.serving.protocol.ServingError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Mapping

import numpy as np

from tfrobust.serving.batching import Batcher
from tfrobust.serving.config import ServerConfig
from tfrobust.serving.protocol import ServingError, bad_request
from tfrobust.serving.registry import ModelRegistry, ServedVersion

__all__ = [
    "ServingCore",
]


class ServingCore:
    """Model lookup and model calls for one registry, shared by every front-end.

    Args:
        registry: the served models.
        config: server settings (batching, batch size and timeout, model threads).

    Attributes:
        executor: the threads model calls run in.
        batchers: the live :class:`Batcher` of each (model, version, signature, row shapes).
    """

    def __init__(self, registry: ModelRegistry, config: ServerConfig):
        self.registry = registry
        self.config = config
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.num_batch_threads, thread_name_prefix="tfrobust-model")
        self.batchers: dict[tuple, Batcher] = {}

    def resolve(self, name: str, version: int | None) -> ServedVersion:
        """The served version of model ``name`` (``None``: the newest).

        Raises:
            ServingError: 404 for an unknown model or a version that is not served.
        """
        return self.registry.get(name).resolve(version)

    def status(self, name: str, version: int | None) -> list[dict[str, Any]]:
        """``model_version_status`` entries of model ``name`` (one version, or all)."""
        return self.registry.get(name).status(version)

    def metadata(self, name: str, version: int | None) -> dict[str, Any]:
        """TF Serving's metadata body (proto JSON) of the served version."""
        served = self.resolve(name, version)
        return {"model_spec": {"name": name, "signature_name": "", "version": str(served.version)},
                "metadata": {"signature_def": {"signature_def": served.signature_defs}}}

    async def run(self, served: ServedVersion, signature: str,
                  inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs a signature on validated inputs, batched with concurrent requests.

        Raises:
            ServingError: 400 when TensorFlow rejects an input that validation let through.
        """
        try:
            return await self._execute(served, signature, dict(inputs))
        except ServingError:
            raise
        except Exception as err:  # TF rejects what validation let through
            import tensorflow as tf

            if isinstance(err, (tf.errors.InvalidArgumentError, ValueError, TypeError)):
                raise bad_request(f"the model rejected the input: {str(err).splitlines()[0][:300]}") from None
            raise

    async def _execute(self, served: ServedVersion, signature: str, inputs: dict[str, np.ndarray]):
        config = self.config
        if not config.batching:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, served.run, signature, inputs)
        row_shapes = tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(inputs.items()))
        key = (served.name, served.version, id(served), signature, row_shapes)
        batcher = self.batchers.get(key)
        if batcher is None:
            for old_key in [k for k in self.batchers if k[0] == served.name and k[2] != id(served)
                            and self.batchers[k].idle]:
                self.batchers.pop(old_key).close()
            batcher = self.batchers[key] = Batcher(
                served, signature, self.executor, config.max_batch_size,
                config.batch_timeout_ms / 1000.0, config.num_batch_threads)
        return await batcher.submit(inputs)

    def close(self) -> None:
        """Cancels the batchers' workers and stops the model threads."""
        for batcher in self.batchers.values():
            batcher.close()
        self.batchers.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
