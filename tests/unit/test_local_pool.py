"""The local process pool: results, exceptions, crashes, time limits, bounded concurrency."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

from oa_exporter.adapters.dispatch.local_pool import JobTimeout, LocalPoolDispatcher, WorkerDied


def add(a: int, b: int) -> int:
    return a + b


def fail() -> None:
    raise ValueError("bad params")


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return time.time()


def big(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


@pytest.fixture
async def pool():
    dispatcher = LocalPoolDispatcher(workers=2, timeout=5)
    yield dispatcher
    await dispatcher.close()


async def test_results_and_large_payloads_come_back(pool):
    assert await pool.run(add, 2, 3) == 5
    assert (await pool.run(big, 2_000_000)).sum() == pytest.approx(2_000_000 * 1_999_999 / 2)


async def test_the_job_exception_is_raised_in_the_caller(pool):
    with pytest.raises(ValueError, match="bad params"):
        await pool.run(fail)


async def test_a_crashing_job_fails_alone_and_the_next_job_runs(pool):
    with pytest.raises(WorkerDied, match="exit code -11"):
        await pool.run(crash)
    assert await pool.run(add, 1, 1) == 2


async def test_a_job_past_its_limit_is_killed_and_the_pool_goes_on():
    pool = LocalPoolDispatcher(workers=1, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        await pool.run(sleep, 30)
    assert time.monotonic() - started < 10
    assert await pool.run(add, 2, 2) == 4


async def test_at_most_workers_jobs_run_at_once():
    pool = LocalPoolDispatcher(workers=2, timeout=10)
    finished = sorted(await asyncio.gather(*(pool.run(sleep, 0.6) for _ in range(4))))
    assert finished[2] - finished[0] > 0.4  # the third job waited for a slot
