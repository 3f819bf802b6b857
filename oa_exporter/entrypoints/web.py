"""HTTP endpoints: /metrics (pre-rendered bytes), health, readiness, reload, a landing page."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from ..adapters.sinks.exposition import CONTENT_TYPE, ExpositionPage
from ..core.domain import RuleStatus
from .allowed_hosts import REFUSED, AllowedHosts
from .scrape_front import accepts_gzip
from .web_config import REALM
from .web_guard import WebSecurity

USER = web.RequestKey("user", str)  # request[USER]: who passed basic auth ("" when auth is off)


def basic_auth(security: Callable[[], WebSecurity]) -> Callable:
    """Every route behind the web config's basic_auth_users (401 with a challenge otherwise)."""

    @web.middleware
    async def check(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        auth = security().auth
        user = ""
        if auth.enabled:
            header = request.headers.get("Authorization")
            user = auth.known(header) or await asyncio.to_thread(auth.user, header) or ""
            if not user:
                return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": REALM})
        request[USER] = user
        return await handler(request)

    return check


def allowed_hosts(hosts: AllowedHosts) -> Callable:
    """A request whose Host is not one of --web.allowed-hosts is refused (403), on every path."""

    @web.middleware
    async def check(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if not hosts.allows(request.headers.get("Host")):
            return web.Response(status=403, text=REFUSED)
        return await handler(request)

    return check


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@web.middleware
async def same_origin_writes(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    """A browser's cross-site POST/PUT/DELETE (a page elsewhere reloading or rewriting the rules) is refused:
    its Origin names another host than the one it was sent to. Clients that send no Origin (curl, Prometheus,
    scripts) are not browsers and pass."""
    origin = request.headers.get("Origin")
    if request.method not in SAFE_METHODS and origin is not None and not _same_host(origin, request.host):
        return web.Response(status=403, text="cross-origin request refused\n")
    return await handler(request)


def _same_host(origin: str, host: str) -> bool:
    return origin != "null" and urlsplit(origin).netloc.lower() == host.lower()


def extra_headers(security: Callable[[], WebSecurity]) -> Callable:
    """http_server_config.headers on every response."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in security().extra_headers:
            response.headers[name] = value

    return add

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
    security: Callable[[], WebSecurity] = WebSecurity,
    hosts: AllowedHosts | None = None,
) -> web.Application:
    """The aiohttp application; handlers only translate HTTP to calls on what they are given."""

    async def api_rules(request: web.Request) -> web.Response:
        return web.json_response({"status": "success", "data": {"rules": [asdict(r) for r in rules()]}})

    async def metrics(request: web.Request) -> web.Response:
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
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

    guards = [allowed_hosts(hosts or AllowedHosts()), basic_auth(security), same_origin_writes]
    app = web.Application(middlewares=guards)
    app.on_response_prepare.append(extra_headers(security))
    app.add_routes([
        web.get("/metrics", metrics), web.get("/-/healthy", healthy), web.get("/-/ready", ready),
        web.post("/-/reload", do_reload), web.put("/-/reload", do_reload),
        web.get("/api/v1/rules", api_rules),
    ])
    if api is None:
        app.add_routes([web.get("/", landing)])
        return app
    from .rules_api import add_rules_api
    from .webui import add_ui

    add_rules_api(app, api, writable)
    add_ui(app, writable)
    return app
