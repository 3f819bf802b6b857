"""The remote-write disk queue: one destination's compressed batches on disk (diskcache), first in first out
per shard, under a byte cap beyond which the oldest batches are dropped and counted; a restart, even after
SIGKILL, resumes from it.
"""

from __future__ import annotations

import fcntl
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import diskcache

from ...core.errors import SinkError
from .remote_write_encoding import Batch

log = logging.getLogger(__name__)

_KEY = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+)\.(-?\d+)\.(\d+)\.(\d+)$")


class QueuedBatch:
    """A queued batch as the in-memory index knows it; the key on disk carries the same fields."""

    __slots__ = ("key", "generation", "shards", "shard", "seq", "timestamp", "samples", "size", "gone")

    def __init__(self, generation: int, shards: int, shard: int, seq: int, timestamp: int, samples: int, size: int):
        self.generation, self.shards, self.shard, self.seq = generation, shards, shard, seq
        self.timestamp, self.samples, self.size = timestamp, samples, size
        self.key = f"{generation:06d}.{shards:03d}.{shard:03d}.{seq:016d}.{timestamp}.{samples}.{size}"
        self.gone = False  # sent, or dropped

    @classmethod
    def parse(cls, key: object) -> QueuedBatch | None:
        match = _KEY.match(key) if isinstance(key, str) else None
        return cls(*map(int, match.groups())) if match else None


class DiskQueue:
    """One destination's batches on disk, first in first out per shard, with an in-memory index of them.

    The shard count is part of the queue's layout: when the daemon restarts with another count while batches
    are queued, those form an older generation that is sent, whole, before anything newer, so that no series
    gets out of order. One process at a time may use a queue directory (an flock guards it).
    """

    def __init__(self, directory: Path, max_bytes: int, shards: int, on_drop: Callable[[str, int], None]):
        self.directory = directory
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._lock = threading.Lock()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lockfile: IO[str] | None = _hold(directory / "lock")
        except OSError as e:
            raise SinkError(f"cannot open the remote-write queue {directory}: {e}") from e
        try:
            self._cache = diskcache.Cache(str(directory / "batches"), eviction_policy="none")
        except Exception as e:
            self._lockfile.close()
            raise SinkError(f"cannot open the remote-write queue {directory}: {e}") from e
        self._index: dict[tuple[int, int], deque[QueuedBatch]] = {}
        self.bytes = self.samples = 0
        found = sorted((e for e in map(QueuedBatch.parse, self._cache.iterkeys()) if e is not None),
                       key=lambda e: (e.generation, e.shard, e.seq))
        for entry in found:
            self._append(entry)
        latest = found[-1] if found else None
        self.generation = 0 if latest is None else latest.generation + (latest.shards != shards)
        self.shards = shards
        self._seq = max((e.seq for e in found), default=0)
        if found:
            log.info("remote-write queue %s: %d samples in %d batches waiting from before the restart", directory,
                     self.samples, len(found))

    def push(self, batches: Sequence[Batch]) -> None:
        """Append batches to their shards, dropping the oldest queued batches to stay under the byte cap; one
        SQLite transaction for them all."""
        with self._lock:
            added: list[QueuedBatch] = []
            try:
                with self._cache.transact():
                    for batch in batches:
                        size = len(batch.body)
                        if size > self.max_bytes:
                            self._on_drop("queue_full", batch.samples)
                            continue
                        while self.bytes + size > self.max_bytes:
                            self._drop_oldest()
                        self._seq += 1
                        entry = QueuedBatch(self.generation, self.shards, batch.shard, self._seq, batch.timestamp,
                                       batch.samples, size)
                        self._cache.set(entry.key, batch.body)
                        self._append(entry)
                        added.append(entry)
            except BaseException:  # rolled back on disk: out of the index too
                for entry in added:
                    if not entry.gone:
                        self._unindex(entry)
                raise

    def head(self, generation: int, shard: int) -> tuple[QueuedBatch, bytes] | None:
        """The oldest batch of a shard and its body; None when the shard is empty."""
        with self._lock:
            while queue := self._index.get((generation, shard)):
                entry = queue[0]
                body = self._cache.get(entry.key)
                if isinstance(body, bytes):
                    return entry, body
                self._remove(entry)  # its file is gone or damaged: count it, never stall on it
                self._on_drop("unreadable", entry.samples)
            return None

    def remove(self, entry: QueuedBatch) -> None:
        """Forget a batch that was sent or refused (a batch the cap dropped meanwhile is already gone)."""
        with self._lock:
            if not entry.gone:
                self._remove(entry)

    def older_generations(self) -> list[tuple[int, int]]:
        """(generation, shard count) of batches queued under another shard count, oldest first."""
        with self._lock:
            return sorted({(g, q[0].shards) for (g, _), q in self._index.items() if g != self.generation and q})

    def oldest(self) -> int | None:
        """Timestamp (ms) of the oldest queued sample."""
        with self._lock:
            return min((q[0].timestamp for q in self._index.values() if q), default=None)

    def close(self) -> None:
        """Close the cache and release the directory; safe to call twice."""
        self._cache.close()
        if self._lockfile is not None:
            self._lockfile.close()  # releases the flock
            self._lockfile = None

    def _append(self, entry: QueuedBatch) -> None:
        self._index.setdefault((entry.generation, entry.shard), deque()).append(entry)
        self.bytes += entry.size
        self.samples += entry.samples

    def _remove(self, entry: QueuedBatch) -> None:
        self._unindex(entry)
        self._cache.delete(entry.key)

    def _unindex(self, entry: QueuedBatch) -> None:
        queue = self._index[(entry.generation, entry.shard)]
        if queue[0] is entry:
            queue.popleft()
        else:  # a push that failed takes its entries back from the tail
            queue.remove(entry)
        entry.gone = True
        self.bytes -= entry.size
        self.samples -= entry.samples

    def _drop_oldest(self) -> None:
        entry = min((q[0] for q in self._index.values() if q), key=lambda e: (e.timestamp, e.generation, e.seq))
        self._remove(entry)
        self._on_drop("queue_full", entry.samples)


def _hold(path: Path) -> IO[str]:
    handle = open(path, "a+")  # noqa: SIM115 - held open for the queue's life: the flock lives with it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        handle.close()
        raise SinkError(f"the remote-write queue {path.parent} is in use by another process") from e
    return handle
