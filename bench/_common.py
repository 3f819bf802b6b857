"""Shared pieces of the benchmarks: generated label sets and a Prometheus-API source in a child process."""

from __future__ import annotations

import multiprocessing
import socket
import time

import numpy as np
import orjson

METRIC = "bench_requests_per_second"


def labels(n: int) -> list[dict[str, str]]:
    """n label sets shaped like a real fleet: instance, job, service, a cardinality-heavy path label."""
    return [
        {"__name__": METRIC, "instance": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:9100",
         "job": f"svc-{i % 50}", "path": f"/api/v{i % 3}/items/{i % 997}", "status": str(200 + i % 5)}
        for i in range(n)
    ]


def instant_bodies(n: int, at: float, variants: int = 3, seed: int = 1) -> list[bytes]:
    """Instant-query responses as Prometheus writes them: same series, new values each time."""
    rng = np.random.default_rng(seed)
    series = labels(n)
    bodies = []
    for _ in range(variants):
        values = (100 + rng.normal(0, 1, n)).tolist()
        result = [{"metric": m, "value": [at, repr(v)]} for m, v in zip(series, values, strict=True)]
        bodies.append(orjson.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}))
    return bodies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, n: int, at: float) -> None:
    from aiohttp import web

    bodies = instant_bodies(n, at)
    served = {"count": 0}

    async def query(request: web.Request) -> web.Response:
        await request.read()
        served["count"] += 1
        return web.Response(body=bodies[served["count"] % len(bodies)], content_type="application/json")

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/api/v1/query", query)
    app.router.add_get("/api/v1/query", query)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


def start_source(n: int, at: float) -> tuple[multiprocessing.Process, str]:
    """A Prometheus-API instant-query source for n series, in its own process (its CPU is not ours)."""
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(port, n, at), daemon=True)
    process.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("benchmark source did not start")


def fit_job(n: int, now: float, step: float, spec, level: float):
    """Generate two days of history for the n series and fit them: runs in a worker, as training does."""
    from oa_exporter.adapters.engines.statsforecast import StatsForecastEngine
    from oa_exporter.adapters.tsdb.prometheus import series_key
    from oa_exporter.core.domain import SeriesMatrix

    series = labels(n)
    end = np.floor(now / step) * step
    points = int(2 * 86400 / step)
    t = end - step * np.arange(points)[::-1]
    rng = np.random.default_rng(0)
    values = 100 + 10 * np.sin(2 * np.pi * t / 86400)[None, :] + rng.normal(0, 1, (n, points))
    history = SeriesMatrix([series_key(m) for m in series], series, t[0], step, values)
    return history.keys, history.labels, t[0], end, StatsForecastEngine().fit(history, spec, level)
