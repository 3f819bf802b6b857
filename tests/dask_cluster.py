"""A real Dask cluster on loopback: `dask scheduler` and `dask worker` processes, every socket on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from tests.servers import free_port
from tests.workers import reachable

ROOT = Path(__file__).resolve().parent.parent


class DaskCluster:
    """A scheduler and `workers` single-threaded workers (each with its nanny, in a process group of its own)."""

    def __init__(self, logs: Path, workers: int = 2):
        self.logs = logs
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.size = workers

    def start(self) -> Self:
        self.scheduler = self._spawn("scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                     "--port", str(self.port), "--dashboard-address", "127.0.0.1:0")
        deadline = time.monotonic() + 60
        while not reachable("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler did not start:\n{self.log('scheduler')}")
            time.sleep(0.1)
        for i in range(self.size):
            self.add_worker(f"w{i}")
        return self

    def add_worker(self, name: str) -> None:
        """Start a worker and wait until the scheduler has it."""
        self.workers[name] = self._spawn(
            name, "distributed.cli.dask_worker", self.address, "--host", "127.0.0.1", "--dashboard-address",
            "127.0.0.1:0", "--nworkers", "1", "--nthreads", "1", "--memory-limit", "2GB", "--name", name)
        self.wait_workers(len(self.workers))

    def wait_workers(self, count: int, timeout: float = 90.0) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(count, timeout=timeout)

    def kill_worker(self, name: str) -> None:
        """kill -9 a worker and its nanny at once: the scheduler must give its tasks to the others."""
        proc = self.workers.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def kill_scheduler(self) -> None:
        proc, self.scheduler = self.scheduler, None
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        """kill -9 everything: a worker takes ~10 s to leave on SIGTERM, and no state here needs keeping."""
        for name in list(self.workers):
            self.kill_worker(name)
        self.kill_scheduler()

    def log(self, name: str) -> str:
        return (self.logs / f"dask-{name}.log").read_text(errors="replace")[-3000:]

    def _spawn(self, name: str, module: str, *args: str) -> subprocess.Popen:
        with open(self.logs / f"dask-{name}.log", "ab") as out:
            return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
