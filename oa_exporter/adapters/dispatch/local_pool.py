"""Local process pool: CPU-bound fits run in worker processes, never on the event loop."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from ...core.errors import EngineError

T = TypeVar("T")
log = logging.getLogger(__name__)


def default_workers() -> int:
    """Cores minus one (the event loop keeps one), at least one."""
    return max((os.cpu_count() or 2) - 1, 1)


class LocalPoolDispatcher:
    """JobDispatcher over a ProcessPoolExecutor that replaces itself when a worker dies."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or default_workers()
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), fn, *args)
        except BrokenProcessPool as e:  # a worker was killed (OOM, segfault): fail this job, heal the pool
            log.error("a training worker process died; restarting the pool")
            self._discard()
            raise EngineError("training worker process died (out of memory or crashed)") from e

    async def close(self) -> None:
        self._discard()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # no fork of a running event loop and its threads
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool

    def _discard(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
