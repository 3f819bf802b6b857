"""Dask dispatcher: fits run on an existing Dask cluster, the daemon stays a control plane.

The daemon keeps querying the TSDB, storing models and scoring; only the CPU-bound call (`engine.fit(history,
spec, level)`) travels to the cluster, as a task of the scheduler named by `--dask.scheduler`. The cluster can be
anywhere a Dask client reaches: `dask scheduler` and `dask worker` processes on other machines, dask-kubernetes,
a managed service. Workers need the same oa-exporter and engine libraries as the daemon (cloudpickle carries the
call, not the code).

A separable fit (SeasonalProfile) asks `split` first: the trainer then sends it as jobs of row blocks of about
BLOCK_BYTES each, a few per worker thread in flight, and joins their models, so no worker (and not the
scheduler) ever holds the rule's whole history; 250,000 series of two days at 5 minutes are 1.15 GB.

A worker that dies mid-fit is the scheduler's to handle: it hands the task to another worker, up to its
`distributed.scheduler.allowed-failures` (then KilledWorker, reported as WorkerDied). A job past its time
limit is released (the worker finishes or drops it) and fails as JobTimeout; `retries` more attempts follow
either. A scheduler that cannot be reached fails the job at once with DispatchError: the rule turns unhealthy
and keeps scoring with the models it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from distributed import Client
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker

from ...core.errors import DispatchError, JobTimeout, WorkerDied
from ...core.jobs import TRAINING
from ...core.ports import Telemetry

T = TypeVar("T")
log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler before a job fails (the next fit tries again)
# A separable fit (SeasonalProfile) travels in jobs of about this much history (float64): 7,281 series of two days
# at 5 minutes, 260 of 56 days. A job carries its block in its task (the scheduler can give it to another worker
# if its worker dies), so the scheduler holds the blocks of the jobs in flight, not the rule's history.
BLOCK_BYTES = 32 << 20


class DaskDispatcher:
    """JobDispatcher over a Dask cluster: one task per job, awaited on the daemon's event loop."""

    def __init__(self, scheduler: str, timeout: float = 3600.0, retries: int = 0,
                 telemetry: Telemetry | None = None, connect_timeout: float = CONNECT_TIMEOUT):
        if not scheduler:
            raise ValueError("--dispatcher=dask needs a scheduler: set --dask.scheduler (OA_DASK_SCHEDULER), e.g. "
                             "tcp://dask-scheduler:8786")
        self.scheduler = scheduler
        self.timeout = timeout
        self.retries = retries
        self.telemetry = telemetry
        self.connect_timeout = connect_timeout
        self.block_bytes = BLOCK_BYTES
        self._client: Client | None = None
        self._connecting = asyncio.Lock()

    async def run(self, fn: Callable[..., T], *args: Any, gpu: bool = False) -> T:
        """fn(*args) on a worker of the cluster (gpu is not used: Dask places by the workers' resources)."""
        started, attempt = time.perf_counter(), 0
        if self.telemetry is not None:
            self.telemetry.job_queued(TRAINING)
        try:
            while True:
                try:
                    result: T = await self._attempt(fn, args)
                    break
                except (JobTimeout, WorkerDied) as e:
                    if attempt >= self.retries:
                        raise
                    attempt += 1
                    log.warning("dask job attempt %d failed, trying again: %s", attempt, e)
        except BaseException as e:
            self._done(started, False, attempt, _reason(e))
            raise
        self._done(started, True, attempt)
        return result

    async def split(self, series: int, points: int) -> tuple[int, int]:
        """Jobs of about BLOCK_BYTES of history each, two per worker thread at once: a worker holds a few blocks,
        never the whole history, and the scheduler holds only the blocks of the jobs in flight."""
        rows = max(self.block_bytes // max(points * 8, 1), 1)
        if rows >= series:
            return series, 1
        client = await self._connected()
        threads = sum((await client.nthreads()).values())
        return rows, 2 * max(threads, 1)

    async def close(self) -> None:
        """Disconnect from the scheduler (the cluster itself keeps running); safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.close(timeout=5)

    async def _attempt(self, fn: Callable[..., T], args: tuple) -> T:
        client = await self._connected()
        with warnings.catch_warnings():  # a row block is a large task by design (see BLOCK_BYTES)
            warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
            future = client.submit(fn, *args, pure=False)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError as e:
            raise JobTimeout(f"job ran longer than its {self.timeout:.0f} s limit on the dask cluster") from e
        except KilledWorker as e:
            raise WorkerDied(f"the dask workers running the job died: {e}") from e
        except (FutureCancelledError, OSError) as e:
            raise DispatchError(f"lost the job on the dask cluster at {self.scheduler}: {e}") from e
        finally:
            future.release()

    async def _connected(self) -> Client:
        async with self._connecting:
            if self._client is not None and self._client.status == "running":
                return self._client
            if self._client is not None:  # lost the scheduler: a fresh client, instead of a long reconnect
                await self.close()
            try:
                self._client = await Client(self.scheduler, asynchronous=True, timeout=self.connect_timeout,
                                            set_as_default=False)
            except (OSError, TimeoutError) as e:
                raise DispatchError(f"dask scheduler {self.scheduler} unreachable: {e}") from e
            log.info("connected to the dask scheduler %s", self.scheduler)
            return self._client

    def _done(self, started: float, ok: bool, retries: int, reason: str = "") -> None:
        # the cluster does not tell when a task starts: a job counts as queued until it is answered
        if self.telemetry is not None:
            self.telemetry.job_done(TRAINING, time.perf_counter() - started, ok, retries, False, reason)


def _reason(error: BaseException) -> str:
    if isinstance(error, JobTimeout):
        return "timeout"
    if isinstance(error, WorkerDied):
        return "lost"
    return "broker" if isinstance(error, DispatchError) else "error"
