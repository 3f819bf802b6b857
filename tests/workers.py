"""Brokers and `oa-exporter worker` processes on loopback, for the celery dispatcher's tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from tests.servers import free_port

SYSTEM_REDIS = "redis://127.0.0.1:6379/11"  # a database of its own on the machine's Redis
SYSTEM_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class RedisServer:
    """A private redis-server on a free port, that a test may stop and start again (same port)."""

    def __init__(self, tmpdir: str | Path):
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir=tmpdir))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Self:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Worker:
    """`oa-exporter worker` as a real subprocess (its own process group, so SIGKILL takes its children too)."""

    def __init__(self, env: Mapping[str, str], log_path: Path, queue: str = "training", concurrency: int = 1):
        self.metrics_url = f"http://127.0.0.1:{free_port()}"  # its own /metrics and /-/healthy
        self.env = {**os.environ, "OA_WORKER_LISTEN_ADDRESS": self.metrics_url.removeprefix("http://"),
                    "OA_HISTORY_DIR": str(log_path.parent / f"history-{log_path.stem}"), **env}  # the test's own
        self.log_path = log_path
        self.queue = queue
        self.concurrency = concurrency
        self.proc: subprocess.Popen | None = None

    def start(self) -> Self:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "oa_exporter", "worker", "--queue", self.queue,
                 "--concurrency", str(self.concurrency)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        return self

    def wait_for_log(self, text: str, timeout: float = 60.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"worker never logged {text!r} in {timeout:.0f} s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the worker and every process it started, as the OOM killer or a node loss would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        """SIGTERM (a warm shutdown), SIGKILL after 15 s; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
