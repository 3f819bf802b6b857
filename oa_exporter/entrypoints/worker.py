"""`oa-exporter worker`: consume the training or inference queue of the celery dispatcher.

A worker shares the daemon's OA_* settings: it reads the same TSDB and writes to the same artifact store. One
event loop thread runs the jobs' I/O; Celery's threads hand jobs to it; each fit runs in a child process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from ..settings import Settings

log = logging.getLogger(__name__)


class LoopThread:
    """An event loop on its own thread, for code that is synchronous (Celery's tasks) to run coroutines on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="oa-worker-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the loop and wait for its result (exceptions propagate)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def run_worker(settings: Settings, queue: str, concurrency: int) -> int:
    """Serve jobs until SIGTERM/SIGINT (running jobs finish first; unfinished ones go back to the queue)."""
    from ..adapters.dispatch.celery import celery_app, register_jobs, start_worker
    from ..adapters.telemetry.worker_metrics import WorkerMetrics
    from ..bootstrap import celery_options

    options = celery_options(settings)
    loop, metrics = LoopThread(), WorkerMetrics()
    services = loop.run(_build(settings, concurrency))
    web_runner = loop.run(_serve_metrics(metrics, settings.worker_listen_address, settings.web_config_file,
                                         metrics.web_config.loaded))
    app = celery_app(options)
    register_jobs(app, options, services.worker, loop.run, metrics)
    log.info("worker consuming the %s queue with %d job slots (broker %s)", queue, concurrency,
             app.connection_for_read().as_uri())
    try:
        start_worker(app, queue, concurrency, settings.log_level.upper().replace("WARN", "WARNING"))
    finally:
        if web_runner is not None:
            loop.run(web_runner.cleanup())
        loop.run(services.close())
        loop.stop()
    return 0


async def _serve_metrics(metrics: Any, address: str, web_config_file: str = "",
                         on_web_config: Callable[[bool, float], None] | None = None) -> Any:
    """The worker's /metrics (its jobs) and /-/healthy, on its event loop, behind the same web config file as
    the daemon's port (TLS, basic auth, headers), re-read when it changes (`on_web_config` hears of each
    read); None when no address is set."""
    if not address:
        return None
    from aiohttp import web

    from ..adapters.sinks.exposition import CONTENT_TYPE
    from .daemon import listen_address
    from .web import basic_auth, extra_headers
    from .web_guard import WebGuard, rotating_context

    guard = WebGuard(web_config_file, on_web_config)

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="OpenAnomaly worker is Healthy.\n")

    app = web.Application(middlewares=[basic_auth(guard)])
    app.on_response_prepare.append(extra_headers(guard))
    app.router.add_get("/metrics", page)
    app.router.add_get("/-/healthy", healthy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = listen_address(address)
    await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=rotating_context(guard)).start()
    log.info("worker metrics on %s/metrics", address)
    return runner


async def _build(settings: Settings, concurrency: int) -> Any:
    from ..bootstrap import worker_services

    return worker_services(settings, concurrency)  # built on the loop: its clients belong to it
