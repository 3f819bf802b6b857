"""Local process pool: CPU-bound jobs run in child processes, never on the event loop.

Each job gets its own child, forked from a forkserver that has the engines' modules imported already, so a
job starts in milliseconds and can be killed precisely: a job past its time limit is killed, and a child
that dies (segfault, OOM kill) fails only its own job. The daemon and the other jobs carry on. A job that
timed out or died is tried again, `retries` times at most. Jobs that want a GPU get one device to themselves.

A result travels back as bytes of the standard pickle, never through multiprocessing's own pickler: once
torch is imported, that pickler sends a tensor as a handle to shared memory that the receiver must fetch
from the sending process, and a job's process has exited by then (NeuralForecast's models came back as
"died before answering (exit code 0)"). A process that exits without answering is reported as what it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from ...core.errors import EngineError, JobTimeout, WorkerDied
from ...core.jobs import TRAINING
from ...core.ports import Telemetry
from .gpu import GpuSlots

T = TypeVar("T")
log = logging.getLogger(__name__)
__all__ = ["JobTimeout", "LocalPoolDispatcher", "WorkerDied", "default_workers"]
# Imported once by the forkserver. A child also re-imports the parent's main module (multiprocessing does so
# for every spawned process): for `oa-exporter` and `python -m oa_exporter` that is the CLI, preloaded here.
# The CLI imports the wiring lazily, but a preview's job is a function of it (bootstrap.replay_in_child):
# without it here every preview's child imported it first, aiohttp and all, about 0.5 s before its replay.
PRELOAD = ["numpy", "oa_exporter.core.seasonal", "oa_exporter.adapters.engines.statsforecast",
           "oa_exporter.entrypoints.cli", "oa_exporter.bootstrap"]
# Jobs are background work: a fit that ends a little later costs nothing, while the process that forked it
# answers scrapes and scores every cycle. 10 steps nicer than the thread that made the pool (the daemon's; at
# most 19), the kernel gives a busy core to the daemon first, also when the daemon itself runs niced. A
# target, not a step in the child: the forkserver inherits the niceness of whichever thread started it.
JOB_NICENESS = 10


class _Reported:
    """One job's progress, as the telemetry hears it (no telemetry: nothing is reported)."""

    def __init__(self, telemetry: Telemetry | None):
        self.telemetry = telemetry
        self.started = time.perf_counter()
        self.retries = 0
        self.is_running = False
        if telemetry is not None:
            telemetry.job_queued(TRAINING)

    def running(self) -> None:
        if not self.is_running and self.telemetry is not None:
            self.telemetry.job_running(TRAINING)
        self.is_running = True

    def succeeded(self) -> None:
        if self.telemetry is not None:
            self.telemetry.job_done(TRAINING, time.perf_counter() - self.started, True, self.retries)

    def failed(self, error: BaseException) -> None:
        reason = "timeout" if isinstance(error, JobTimeout) else "lost" if isinstance(error, WorkerDied) else "error"
        if self.telemetry is not None:
            self.telemetry.job_done(TRAINING, time.perf_counter() - self.started, False, self.retries,
                                    self.is_running, reason)


def default_workers() -> int:
    """Cores minus one (the event loop keeps one), at least one."""
    return max((os.cpu_count() or 2) - 1, 1)


class LocalPoolDispatcher:
    """JobDispatcher running at most `workers` jobs at once, one child process per job."""

    def __init__(self, workers: int | None = None, timeout: float = 3600.0, retries: int = 0,
                 telemetry: Telemetry | None = None, gpus: GpuSlots | None = None, idle: bool = False):
        self.workers = workers or default_workers()
        self.timeout = timeout
        self.retries = retries
        self.telemetry = telemetry  # None: jobs are not reported (tests, benchmarks)
        self.gpus = gpus or GpuSlots()
        self._slots = asyncio.Semaphore(self.workers)
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        self._children: set[multiprocessing.process.BaseProcess] = set()
        self._niceness = min(os.getpriority(os.PRIO_PROCESS, 0) + JOB_NICENESS, 19)  # of the jobs' children
        self.idle = idle  # jobs only on CPU time nothing else wants (Linux's SCHED_IDLE; elsewhere niceness only)

    async def run(self, fn: Callable[..., T], *args: Any, gpu: bool = False) -> T:
        job = _Reported(self.telemetry)
        try:
            result = await self._with_retries(fn, args, gpu, job)
        except BaseException as e:
            job.failed(e)
            raise
        job.succeeded()
        return result

    async def split(self, series: int, points: int) -> tuple[int, int]:
        """One job: the fit blocks its rows itself in one child, and the rule's other jobs keep the other cores."""
        return series, 1

    async def _with_retries(self, fn: Callable[..., T], args: tuple, gpu: bool, job: _Reported) -> T:
        while True:
            try:
                async with self._slots:
                    job.running()
                    return await self._attempt(fn, args, gpu)
            except (JobTimeout, WorkerDied) as e:
                if job.retries >= self.retries:
                    raise
                job.retries += 1
                log.warning("job attempt %d failed, trying again: %s", job.retries, e)

    async def _attempt(self, fn: Callable[..., T], args: tuple, gpu: bool) -> T:
        device = await self.gpus.acquire() if gpu else None
        try:
            return await asyncio.to_thread(self._run_child, fn, args, _devices(gpu, device))
        finally:
            await self.gpus.release(device)

    async def close(self) -> None:
        """Kill what still runs; safe to call twice."""
        for child in list(self._children):
            child.kill()

    def _run_child(self, fn: Callable[..., T], args: tuple, devices: str | None) -> T:
        receiver, sender = self._context.Pipe(duplex=False)
        child = self._context.Process(target=_child_main, args=(sender, fn, args, devices, self._niceness,
                                                                         self.idle), daemon=True)
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
        data = receiver.recv_bytes()
    except (EOFError, OSError) as e:
        child.join(5)
        if child.exitcode == 0:  # it returned without sending: never a crash, always a bug of ours
            raise EngineError("the training process exited normally (exit code 0) without sending its result: "
                              "a bug in the job protocol of the local pool, please report it") from e
        log.error("a training process died (exit code %s)", child.exitcode)
        raise WorkerDied(f"training process died before answering (exit code {child.exitcode}: "
                         "crashed or killed, e.g. out of memory)") from e
    ok, payload = pickle.loads(data)
    if ok:
        return payload
    raise payload


def _devices(gpu: bool, device: int | None) -> str | None:
    """CUDA_VISIBLE_DEVICES for the job: its device, none at all for a GPU job on the CPU, unchanged otherwise."""
    if not gpu:
        return None
    return "" if device is None else str(device)


def _child_main(sender: Connection, fn: Callable[..., Any], args: tuple, devices: str | None, niceness: int,
                idle: bool) -> None:
    if devices is not None:  # before the job imports torch
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    _run_nicer(niceness, idle)
    _exit_with_parent()
    try:
        result: tuple[bool, Any] = (True, fn(*args))
    except BaseException as e:  # the parent re-raises it; the child has nothing else to do
        result = (False, e if _picklable(e) else EngineError(f"{type(e).__name__}: {e}"))
    sender.send_bytes(_encoded(result))
    sender.close()


def _encoded(result: tuple[bool, Any]) -> bytes:
    """The standard pickle of the result: self-contained bytes, whatever libraries the job imported."""
    try:
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        return pickle.dumps((False, EngineError(f"the job's result cannot be sent back: {type(e).__name__}: {e}")))


def _run_nicer(niceness: int, idle: bool) -> None:
    with contextlib.suppress(OSError):
        os.nice(max(niceness - os.getpriority(os.PRIO_PROCESS, 0), 0))
    if idle and hasattr(os, "SCHED_IDLE"):  # threads the job starts later inherit it
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _exit_with_parent() -> None:
    """A job whose daemon or worker was killed would run on unseen: stop when the forkserver goes away."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _picklable(error: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True
