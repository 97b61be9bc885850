"""Opportunistic batching: concurrent requests for one signature share a model call."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures

import numpy as np

from tfrobust.serving.registry import ServedVersion


__all__ = [
    "Batcher",
]


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
            self._tasks = [loop.create_task(self._worker(self._wakeup)) for _ in range(self.workers)]
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

    async def _worker(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                wakeup.clear()
                await wakeup.wait()
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
            for _inputs, rows, future in batch:
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
