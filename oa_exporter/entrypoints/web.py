"""HTTP endpoints: /metrics (pre-rendered bytes), health, readiness, reload, a landing page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from aiohttp import web

from ..adapters.sinks.exposition import CONTENT_TYPE, ExpositionPage
from ..core.domain import RuleStatus

if TYPE_CHECKING:
    from ..bootstrap import App

LANDING = """<html><head><title>OpenAnomaly exporter</title></head><body>
<h1>OpenAnomaly exporter</h1><p><a href="/metrics">Metrics</a></p>
<p><a href="/api/v1/rules">Rules</a></p></body></html>"""


def make_app(
    page: ExpositionPage,
    is_ready: Callable[[], bool],
    reload: Callable[[], Awaitable[bool]],
    rules: Callable[[], list[RuleStatus]] = list,
    reload_problems: Callable[[], list[str]] = list,
    enable_lifecycle: bool = False,
    api: App | None = None,
    writable: bool = False,
) -> web.Application:
    """The aiohttp application; handlers only translate HTTP to calls on what they are given."""

    async def api_rules(request: web.Request) -> web.Response:
        return web.json_response({"status": "success", "data": {"rules": [asdict(r) for r in rules()]}})

    async def metrics(request: web.Request) -> web.Response:
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = page.page(gzipped=True)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip"})
        return web.Response(body=page.page(), headers={"Content-Type": CONTENT_TYPE})

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="OpenAnomaly is Healthy.\n")

    async def ready(request: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="OpenAnomaly is Ready.\n")
        return web.Response(status=503, text="Service Unavailable\n")

    async def do_reload(request: web.Request) -> web.Response:
        if not enable_lifecycle:  # as Prometheus: reloading over HTTP is opt-in; SIGHUP and the watcher are not
            return web.Response(status=403, text="Lifecycle API is not enabled.\n")
        if await reload():
            return web.Response(text="rules reloaded\n")
        reasons = "".join(f"{problem}\n" for problem in reload_problems())
        return web.Response(status=400, text=f"failed to reload rules; the previous rules stay in force:\n{reasons}")

    async def landing(request: web.Request) -> web.Response:
        return web.Response(text=LANDING, content_type="text/html")

    app = web.Application()
    app.add_routes([
        web.get("/metrics", metrics), web.get("/-/healthy", healthy), web.get("/-/ready", ready),
        web.post("/-/reload", do_reload), web.put("/-/reload", do_reload), web.get("/", landing),
        web.get("/api/v1/rules", api_rules),
    ])
    if api is not None:
        from .rules_api import add_rules_api

        add_rules_api(app, api, writable)
    return app
