"""Thread dispatcher: jobs on a few threads of this process, for a worker that fits several windows at once.

A preview's replay runs in a worker process of its own and fits its rule once per refit of the schedule; the
Backtester starts the next fits ahead of the replay, and here they run side by side. SeasonalProfile is numpy
throughout (sorts, selections, running sums), which releases the GIL, so two threads keep two cores busy
without copying the history into other processes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ThreadDispatcher:
    """JobDispatcher running at most `threads` jobs at once on threads of this process."""

    def __init__(self, threads: int):
        self.threads = max(threads, 1)
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="oa-fit")

    async def run(self, fn: Callable[..., T], *args: Any, gpu: bool = False) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def split(self, series: int, points: int) -> tuple[int, int]:
        """One job: the fit blocks its rows itself, here in this process."""
        return series, 1

    async def close(self) -> None:
        """Drop the jobs not started, wait for the running ones; safe to call twice."""
        await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)
