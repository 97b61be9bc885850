"""An evaluation cut into chunks of examples, shared by workers, resumable (issue #22).

Every example is attacked independently and its random numbers are keyed by its global index
(:class:`~tfrobust.evaluation.cascade.Draws`), so the evaluation cuts into fixed chunks of
consecutive examples that any worker may run in any order. Worker ``t`` of ``W`` runs the
chunks ``t, t + W, ...``; each finished chunk is written atomically into the resume directory
(``chunk-000012.npz``, one file per chunk, a name that is its position), so a killed worker,
run again with the same command, skips what it finished, and the chief merges the chunks by
position: nothing lost, nothing counted twice. Workers share no collective op, so a dead
worker never stalls the others; the chief waits for its chunks, showing the whole
evaluation's progress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import tensorflow as tf

from tfrobust.utils import atomic_write

__all__ = [
    "Shard",
    "shard_of",
    "chunk_slices",
    "owned_chunks",
    "fingerprint",
    "ChunkStore",
    "merge_chunks",
]


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's place in the cluster: worker ``task`` of ``workers`` (task 0 is the chief)."""

    task: int = 0
    workers: int = 1

    def __post_init__(self):
        if not (isinstance(self.workers, int) and self.workers >= 1):
            raise ValueError(f"workers={self.workers!r} must be an integer >= 1")
        if not (isinstance(self.task, int) and 0 <= self.task < self.workers):
            raise ValueError(f"task={self.task!r} must be an integer in [0, {self.workers})")

    @property
    def chief(self) -> bool:
        """Whether this process merges the chunks and writes the report."""
        return self.task == 0


def shard_of(cluster: tf.distribute.cluster_resolver.ClusterResolver | None) -> Shard:
    """The shard of this process in ``cluster`` (e.g. ``TFConfigClusterResolver()``, which reads
    ``TF_CONFIG`` as ``tfrobust train`` does); ``None`` is one process.

    The ``chief`` task, if the cluster has one, is task 0 and the workers follow; without a
    chief, worker 0 is the chief (TensorFlow's convention).

    Raises:
        ValueError: naming a task type that evaluates nothing (``ps``, ``evaluator``).
    """
    if cluster is None:
        return Shard()
    spec = cluster.cluster_spec().as_dict()
    chiefs, workers = len(spec.get("chief", [])), len(spec.get("worker", []))
    if chiefs + workers == 0:
        return Shard()
    kind, task = cluster.task_type, int(cluster.task_id or 0)
    if kind == "chief":
        return Shard(task, chiefs + workers)
    if kind == "worker":
        return Shard(chiefs + task, chiefs + workers)
    raise ValueError(f"task type {kind!r} does not evaluate; use 'chief' or 'worker' tasks")


def chunk_slices(n: int, size: int) -> list[slice]:
    """The chunks of ``n`` examples: consecutive slices of ``size`` (the last may be shorter)."""
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def owned_chunks(count: int, shard: Shard) -> list[int]:
    """The chunks worker ``shard.task`` runs: every ``workers``-th from its task."""
    return list(range(shard.task, count, shard.workers))


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def fingerprint(settings: dict, x: np.ndarray, y: np.ndarray, weights) -> dict:
    """What must match for chunks to be merged: the settings and digests of data and weights."""
    return {**json.loads(json.dumps(settings, default=str)), "data": _digest(x, y),
            "weights": _digest(*weights)}


class ChunkStore:
    """Finished chunks of one evaluation in a directory (``None``: kept in memory only).

    Args:
        path: the resume directory, shared by the workers; created if missing.
        manifest: the evaluation's :func:`fingerprint`. A directory holding another
            evaluation's chunks raises instead of mixing them.

    Raises:
        ValueError: naming the settings that differ from the directory's manifest.
    """

    def __init__(self, path: str | os.PathLike | None, manifest: dict):
        self.path = None if path is None else Path(path)
        self._memory: dict[int, dict[str, np.ndarray]] = {}
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        file = self.path / "manifest.json"
        if not file.exists():
            atomic_write(file, json.dumps(manifest, indent=1, sort_keys=True))
        stored = json.loads(file.read_text())
        differ = sorted(k for k in set(stored) | set(manifest) if stored.get(k) != manifest.get(k))
        if differ:
            raise ValueError(f"resume directory {str(self.path)!r} holds another evaluation: "
                             f"{', '.join(differ)} differ; use a new directory")

    def _file(self, chunk: int) -> Path:
        assert self.path is not None, "an in-memory store has no files"
        return self.path / f"chunk-{chunk:06d}.npz"

    def done(self, chunk: int) -> bool:
        """Whether ``chunk`` is finished (by any worker)."""
        return chunk in self._memory if self.path is None else self._file(chunk).exists()

    def save(self, chunk: int, arrays: dict[str, np.ndarray]) -> None:
        """Records a finished chunk; on disk atomically (never seen half-written)."""
        if self.path is None:
            self._memory[chunk] = arrays
            return
        buffer = io.BytesIO()
        # dict[str, Any]: numpy's stub matches the array names against savez's own allow_pickle (bool)
        np.savez(buffer, **cast(dict[str, Any], arrays))
        atomic_write(self._file(chunk), buffer.getvalue())

    def load(self, chunk: int) -> dict[str, np.ndarray]:
        """A finished chunk's arrays."""
        if self.path is None:
            return self._memory[chunk]
        with np.load(self._file(chunk)) as data:
            return {k: data[k] for k in data.files}

    def wait(self, chunks, on_done, poll: float = 0.5) -> None:
        """Blocks until every chunk of ``chunks`` is finished, calling ``on_done(chunk)`` once
        for each as it appears (the chief's progress bar)."""
        pending = [c for c in chunks]
        while pending:
            finished = [c for c in pending if self.done(c)]
            for c in finished:
                on_done(c)
            pending = [c for c in pending if c not in finished]
            if pending:
                time.sleep(poll)


def merge_chunks(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenates the chunks' arrays in chunk order, key by key."""
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
