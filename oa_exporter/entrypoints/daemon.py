"""The daemon's lifetime: load rules, serve HTTP, reload on SIGHUP, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from ..adapters.sinks.exposition import CONTENT_TYPE
from ..bootstrap import App, bootstrap
from ..settings import Settings
from .allowed_hosts import AllowedHosts
from .head_deadline import with_head_deadline
from .scrape_front import HEADER_TIMEOUT, IDLE_TIMEOUT, ScrapeFront
from .web import make_app
from .web_config import WebConfigError
from .web_guard import WebGuard

log = logging.getLogger(__name__)


def listen_address(text: str) -> tuple[str, int]:
    """':10100' → ('0.0.0.0', 10100); 'host:port' as given; '[::1]:10100' for IPv6."""
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


# Scoring and rendering run on worker threads and hold the GIL in slices; the event loop and the scrape
# threads (which need it only to parse a request and start a send) wait up to one switch interval for it.
# 1 ms instead of Python's 5 ms cut the 100k-series scrape p99 during back-to-back cycles from 328 to 202 ms
# in bench/cycle.py (when the event loop sent the page), at no measurable cost to the cycles.
SWITCH_INTERVAL = 0.001


def share_the_gil_finely() -> None:
    """Let the event loop take the GIL back from busy threads sooner (process-wide)."""
    sys.setswitchinterval(SWITCH_INTERVAL)


# Scoring, rendering and forecasting run on the loop's default executor. Its threads run 10 steps nicer than
# the scrape threads, so that on a busy machine the kernel gives the CPU to a scrape first: a cycle finishing
# later costs nothing, a slow scrape costs a sample. 10k-series scrape p99 during back-to-back cycles on a
# loaded 2-core machine: 92-118 ms -> 66-79 ms in bench/cycle.py.
BACKGROUND_NICENESS = 10


def run_background_work_nicer(loop: asyncio.AbstractEventLoop) -> None:
    """Give the loop a default executor whose threads have a lower CPU priority (Linux; elsewhere as is)."""
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="oa-work", initializer=_lower_thread_priority))


def _lower_thread_priority() -> None:
    if not sys.platform.startswith("linux"):
        return  # only Linux gives a thread its own niceness
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + BACKGROUND_NICENESS))


async def serve(settings: Settings, app: App | None = None, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); return the process exit code."""
    share_the_gil_finely()
    run_background_work_nicer(asyncio.get_running_loop())
    app = app or bootstrap(settings)
    stop = stop or asyncio.Event()
    if not await app.load_rules():
        log.error("the rules are invalid; not starting (run `oa-exporter check` on them)")
        await app.close()
        return 1
    try:
        guard = WebGuard(settings.web_config_file, app.telemetry.web_config.loaded)
    except WebConfigError as e:
        log.error("not started: %s", e)
        await app.close()
        return 2
    web_runner = await _start_web(app, settings.web_listen_address, settings.web_enable_lifecycle, guard)
    _install_signals(app, stop, web_runner.reload)
    watching = asyncio.create_task(app.watch_rules(settings.rules_poll_interval), name="watch-rules")
    if settings.rules_poll_interval <= 0:
        watching.cancel()
    log.info("listening on %s", settings.web_listen_address)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await web_runner.cleanup()
        await app.close()
    return 0


@dataclass
class WebServer:
    """The aiohttp app, reached through the scrape front that holds the listening socket."""

    runner: web.AppRunner
    front: ScrapeFront
    reload: Callable[[], Coroutine[Any, Any, bool]]  # the web config file, then the rules

    async def cleanup(self) -> None:
        self.front.close()
        await self.runner.cleanup()


class _NoTracebacksForBadRequests(logging.Filter):
    """aiohttp answers a malformed request 400 and logs its traceback at error level: a client's garbage is
    not the daemon's error, and a storm of it would flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], BadHttpMessage))


_QUIET = _NoTracebacksForBadRequests()


async def _start_web(app: App, address: str, enable_lifecycle: bool = False,
                     guard: WebGuard | None = None) -> WebServer:
    host, port = listen_address(address)
    guard = guard or WebGuard("")
    logging.getLogger("aiohttp.server").addFilter(_QUIET)  # once: filters are a set
    hosts = AllowedHosts(app.settings.web_allowed_hosts)

    async def reload() -> bool:
        """Reload the web config file and the rules, each keeping what is in force when it is bad; True when
        both loaded."""
        try:
            await asyncio.to_thread(guard.reload)
        except WebConfigError as e:
            log.error("web config not reloaded, the previous settings stay in force: %s", e)
            await app.load_rules()  # the rules reload all the same
            app.reload_problems = [str(e), *app.reload_problems]
            return False
        return bool(await app.load_rules())

    routes = make_app(app.page, app.ready, reload, app.rules_status,
                      lambda: app.reload_problems, enable_lifecycle, api=app,
                      writable=app.settings.web_enable_rules_api, security=guard, hosts=hosts)
    runner = web.AppRunner(routes, access_log=None, keepalive_timeout=IDLE_TIMEOUT)  # aiohttp's default: 3,630 s
    await runner.setup()
    front = ScrapeFront(app.page.page, CONTENT_TYPE, _hand_over_to(runner), security=guard, hosts=hosts)
    try:
        front.start(host, port)
    except OSError:
        await runner.cleanup()
        raise
    return WebServer(runner, front, reload)


def _hand_over_to(runner: web.AppRunner) -> Callable[[socket.socket, ssl.SSLContext | None], None]:
    """Give an accepted connection to the aiohttp server from a front thread (with TLS when it is raw TLS)."""
    loop, server = asyncio.get_running_loop(), runner.server
    assert server is not None, "runner.setup() makes the server"
    protocol = with_head_deadline(server)  # aiohttp has no timeout for a request head of its own

    def hand_over(connection: socket.socket, tls: ssl.SSLContext | None) -> None:
        timeouts = {"ssl_handshake_timeout": HEADER_TIMEOUT} if tls else {}
        adopted = asyncio.run_coroutine_threadsafe(
            loop.connect_accepted_socket(protocol, connection, ssl=tls, **timeouts), loop)
        adopted.add_done_callback(lambda done: _close_unless_adopted(done, connection))

    return hand_over


def _close_unless_adopted(done: Future, connection: socket.socket) -> None:
    if done.cancelled() or done.exception() is not None:
        log.warning("could not pass a connection to the API server: %r", None if done.cancelled() else done.exception())
        connection.close()


def _install_signals(app: App, stop: asyncio.Event, reload_all: Callable[[], Coroutine[Any, Any, bool]]) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reloads: set[asyncio.Task] = set()

    def reload() -> None:
        task = loop.create_task(reload_all())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
