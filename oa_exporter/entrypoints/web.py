"""HTTP endpoints: /metrics (pre-rendered bytes), health, readiness, reload, a landing page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..adapters.sinks.exposition import CONTENT_TYPE, ExpositionPage

LANDING = """<html><head><title>OpenAnomaly exporter</title></head><body>
<h1>OpenAnomaly exporter</h1><p><a href="/metrics">Metrics</a></p></body></html>"""


def make_app(
    page: ExpositionPage,
    is_ready: Callable[[], bool],
    reload: Callable[[], Awaitable[bool]],
) -> web.Application:
    """The aiohttp application; handlers only translate HTTP to calls on what they are given."""

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
        if await reload():
            return web.Response(text="rules reloaded\n")
        return web.Response(status=500, text="failed to reload rules; the previous rules stay in force\n")

    async def landing(request: web.Request) -> web.Response:
        return web.Response(text=LANDING, content_type="text/html")

    app = web.Application()
    app.add_routes([
        web.get("/metrics", metrics), web.get("/-/healthy", healthy), web.get("/-/ready", ready),
        web.post("/-/reload", do_reload), web.put("/-/reload", do_reload), web.get("/", landing),
    ])
    return app
