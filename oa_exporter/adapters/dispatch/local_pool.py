"""Local process pool: CPU-bound jobs run in child processes, never on the event loop.

Each job gets its own child, forked from a forkserver that has the engines' modules imported already, so a
job starts in milliseconds and can be killed precisely: a job past its time limit is killed, and a child
that dies (segfault, OOM kill) fails only its own job. The daemon and the other jobs carry on.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from ...core.errors import EngineError

T = TypeVar("T")
log = logging.getLogger(__name__)
PRELOAD = ["numpy", "oa_exporter.core.seasonal", "oa_exporter.adapters.engines.statsforecast"]


class JobTimeout(EngineError):
    """A job ran past its time limit and was killed."""


class WorkerDied(EngineError):
    """The process running a job died before answering (crash, out of memory)."""


def default_workers() -> int:
    """Cores minus one (the event loop keeps one), at least one."""
    return max((os.cpu_count() or 2) - 1, 1)


class LocalPoolDispatcher:
    """JobDispatcher running at most `workers` jobs at once, one child process per job."""

    def __init__(self, workers: int | None = None, timeout: float = 3600.0):
        self.workers = workers or default_workers()
        self.timeout = timeout
        self._slots = asyncio.Semaphore(self.workers)
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        self._children: set[multiprocessing.process.BaseProcess] = set()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            return await asyncio.to_thread(self._run_child, fn, args)

    async def close(self) -> None:
        """Kill what still runs; safe to call twice."""
        for child in list(self._children):
            child.kill()

    def _run_child(self, fn: Callable[..., T], args: tuple) -> T:
        receiver, sender = self._context.Pipe(duplex=False)
        child = self._context.Process(target=_child_main, args=(sender, fn, args), daemon=True)
        child.start()
        sender.close()
        self._children.add(child)
        try:
            return _answer(receiver, child, self.timeout)
        finally:
            self._children.discard(child)
            receiver.close()
            if child.is_alive():
                child.kill()
            child.join(5)


def _answer(receiver: Connection, child: multiprocessing.process.BaseProcess, timeout: float) -> Any:
    if not receiver.poll(timeout):
        child.kill()
        raise JobTimeout(f"job ran longer than its {timeout:.0f} s limit and was killed")
    try:
        ok, payload = receiver.recv()
    except (EOFError, OSError) as e:
        child.join(5)
        log.error("a training process died (exit code %s)", child.exitcode)
        raise WorkerDied(f"training process died before answering (exit code {child.exitcode}: "
                         "crashed or killed, e.g. out of memory)") from e
    if ok:
        return payload
    raise payload


def _child_main(sender: Connection, fn: Callable[..., Any], args: tuple) -> None:
    try:
        result: tuple[bool, Any] = (True, fn(*args))
    except BaseException as e:  # the parent re-raises it; the child has nothing else to do
        result = (False, e if _picklable(e) else EngineError(f"{type(e).__name__}: {e}"))
    sender.send(result)
    sender.close()


def _picklable(error: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True
