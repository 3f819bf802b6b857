"""The local process pool: results, exceptions, crashes, time limits, bounded concurrency."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from oa_exporter.adapters.dispatch.gpu import GpuSlots
from oa_exporter.adapters.dispatch.local_pool import JobTimeout, LocalPoolDispatcher, WorkerDied
from oa_exporter.core.errors import EngineError
from oa_exporter.entrypoints.daemon import BACKGROUND_NICENESS


def add(a: int, b: int) -> int:
    return a + b


def fail() -> None:
    raise ValueError("bad params")


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return time.time()


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def big(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


@pytest.fixture
async def pool():
    # a generous limit: on a loaded machine the first job also starts the forkserver and imports numpy
    dispatcher = LocalPoolDispatcher(workers=2, timeout=120)
    yield dispatcher
    await dispatcher.close()


async def test_results_and_large_payloads_come_back(pool):
    assert await pool.run(add, 2, 3) == 5
    assert (await pool.run(big, 2_000_000)).sum() == pytest.approx(2_000_000 * 1_999_999 / 2)


async def test_jobs_run_10_steps_nicer_than_the_thread_that_made_the_pool(pool):
    # whether the forkserver came from this thread or from a daemon's nicer executor thread (an earlier
    # test's daemon), which runs BACKGROUND_NICENESS steps nicer than this one
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert min(own + 10, 19) <= await pool.run(niceness) <= min(own + 10 + BACKGROUND_NICENESS, 19)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
async def test_a_niced_daemons_jobs_run_nicer_still():
    own = os.getpriority(os.PRIO_PROCESS, 0)
    niced = await asyncio.to_thread(_pool_made_at_niceness, min(own + 5, 19))  # joins a thread of its own
    assert niced == min(own + 15, 19)


async def test_the_job_exception_is_raised_in_the_caller(pool):
    with pytest.raises(ValueError, match="bad params"):
        await pool.run(fail)


async def test_a_crashing_job_fails_alone_and_the_next_job_runs(pool):
    with pytest.raises(WorkerDied, match="exit code -11"):
        await pool.run(crash)
    assert await pool.run(add, 1, 1) == 2


async def test_a_job_past_its_limit_is_killed_and_the_pool_goes_on():
    pool = LocalPoolDispatcher(workers=1, timeout=15)  # room for a loaded machine to start the next child
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        await pool.run(sleep, 300)
    assert time.monotonic() - started < 60  # killed at its limit, long before the job would have ended
    assert await pool.run(add, 2, 2) == 4


async def test_at_most_workers_jobs_run_at_once():
    pool = LocalPoolDispatcher(workers=2, timeout=120)
    finished = sorted(await asyncio.gather(*(pool.run(sleep, 0.6) for _ in range(4))))
    assert finished[2] - finished[0] > 0.4  # the third job waited for a slot


def visible_devices() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def crash_once(marker: str) -> str:
    """Dies the first time (leaving a marker), works the second: a flaky OOM kill."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "done"


class Jobs:
    """Telemetry fake recording the job reports."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def job_queued(self, queue: str) -> None:
        self.events.append(("queued", queue))

    def job_running(self, queue: str) -> None:
        self.events.append(("running", queue))

    def job_done(self, queue: str, seconds: float, ok: bool, retries: int = 0, started: bool = True,
                 reason: str = "") -> None:
        self.events.append(("done", queue, ok, retries, reason))


async def test_a_job_whose_process_died_is_tried_again_within_the_bound(tmp_path):
    jobs = Jobs()
    pool = LocalPoolDispatcher(workers=1, timeout=120, retries=1, telemetry=jobs)
    assert await pool.run(crash_once, str(tmp_path / "marker")) == "done"
    assert jobs.events == [("queued", "training"), ("running", "training"), ("done", "training", True, 1, "")]
    jobs.events.clear()
    with pytest.raises(WorkerDied):
        await pool.run(crash)  # dies every time: two attempts, then the job fails
    assert jobs.events[-1] == ("done", "training", False, 1, "lost")
    assert await pool.run(add, 1, 2) == 3


async def test_a_timeout_is_reported_as_one():
    jobs = Jobs()
    pool = LocalPoolDispatcher(workers=1, timeout=2, telemetry=jobs)
    with pytest.raises(JobTimeout):
        await pool.run(sleep, 30)
    assert jobs.events[-1] == ("done", "training", False, 0, "timeout")


async def test_a_gpu_job_gets_its_own_device_and_runs_on_the_cpu_without_one(caplog):
    with_gpus = LocalPoolDispatcher(workers=2, timeout=120, gpus=GpuSlots(lambda: [(0, 1_000), (3, 9_000)]))
    assert await with_gpus.run(visible_devices, gpu=True) == "3"  # the device with the most free memory
    assert await with_gpus.run(visible_devices) == os.environ.get("CUDA_VISIBLE_DEVICES")  # CPU jobs: untouched
    without = LocalPoolDispatcher(workers=1, timeout=120, gpus=GpuSlots(lambda: []))
    with caplog.at_level(logging.WARNING):
        assert await without.run(visible_devices, gpu=True) == ""  # torch in the job sees no device
        assert await without.run(visible_devices, gpu=True) == ""
    assert caplog.text.count("has none visible") == 1  # warned once


async def test_gpu_slots_hand_out_one_job_per_device_busiest_last():
    free = {0: 5_000, 1: 20_000}
    slots = GpuSlots(lambda: list(free.items()))
    first = await slots.acquire()
    second = await slots.acquire()
    assert (first, second) == (1, 0)
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # both devices busy
    await slots.release(0)
    assert await asyncio.wait_for(waiting, 1) == 0


def exit_quietly() -> None:
    os._exit(0)


def tensor(n: int):
    import torch

    return torch.arange(n, dtype=torch.float64)


async def test_a_job_that_exits_without_answering_is_reported_as_a_bug_not_retried():
    pool = LocalPoolDispatcher(workers=1, timeout=30, retries=2)
    try:
        with pytest.raises(EngineError, match=r"exited normally \(exit code 0\) without sending its result"):
            await pool.run(exit_quietly)
        assert await pool.run(add, 1, 2) == 3
    finally:
        await pool.close()


async def test_torch_tensors_come_back_whole_after_the_job_has_exited():
    # multiprocessing's pickler would send them as shared-memory handles of a process that is gone by then
    pytest.importorskip("torch", reason="needs torch (the neural extra)")
    pool = LocalPoolDispatcher(workers=1, timeout=120)  # importing torch takes a while on a loaded machine
    try:
        assert float((await pool.run(tensor, 100_000)).sum()) == 100_000 * 99_999 / 2
    finally:
        await pool.close()


async def test_nhits_fits_through_the_local_pool():
    pytest.importorskip("neuralforecast", reason="needs the neural extra: pip install 'oa-exporter[neural]'")
    from oa_exporter.adapters.engines.neuralforecast import NeuralForecastEngine
    from oa_exporter.core.domain import ModelSpec, SeriesMatrix

    minutes = np.arange(2 * 1440)
    values = 100 + 10 * np.sin(2 * np.pi * minutes / 1440) + np.random.default_rng(0).normal(0, 1, (3, minutes.size))
    history = SeriesMatrix([b"a", b"b", b"c"], [{"i": "a"}, {"i": "b"}, {"i": "c"}], 1.7e9, 60.0, values)
    pool = LocalPoolDispatcher(workers=1, timeout=280)
    try:
        # the default 200 steps, training bounded to 5 s by max_time (the default bound is 2 minutes)
        fitted = await pool.run(NeuralForecastEngine().fit, history, ModelSpec("neuralforecast", "NHITS",
                                                                                {"max_time": "00:00:00:05"}), 99.0,
                                gpu=True)
    finally:
        await pool.close()
    assert fitted.ok.all()


def scheduler() -> int:
    return os.sched_getscheduler(0)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
async def test_an_idle_pools_jobs_run_on_cpu_time_nothing_else_wants():
    dispatcher = LocalPoolDispatcher(workers=1, timeout=120, idle=True)
    try:
        assert await dispatcher.run(scheduler) == os.SCHED_IDLE
    finally:
        await dispatcher.close()


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="scheduling policies are Linux's")
async def test_a_plain_pools_jobs_keep_the_ordinary_scheduler(pool):
    assert await pool.run(scheduler) == os.sched_getscheduler(0)


def _pool_made_at_niceness(level: int) -> int:
    """The niceness of a job of a pool made on a thread of its own at `level` (Linux: niceness is per thread;
    a thread of its own, so that no reused executor thread stays niced)."""
    result: list[int] = []

    def made_here() -> None:
        os.nice(level - os.getpriority(os.PRIO_PROCESS, 0))
        result.append(asyncio.run(_one_job()))

    thread = threading.Thread(target=made_here)
    thread.start()
    thread.join()
    return result[0]


async def _one_job() -> int:
    dispatcher = LocalPoolDispatcher(workers=1, timeout=120)
    try:
        return await dispatcher.run(niceness)
    finally:
        await dispatcher.close()
