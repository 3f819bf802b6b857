"""The web UI: static pages under /ui/ (shipped in the package, no build step); / leads there."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

UI = Path(__file__).with_name("ui")
# uPlot, vendored once for the package: the backtest report inlines the same files
VENDOR = Path(__file__).parents[1] / "adapters" / "reports" / "vendor"
VENDORED = {"uPlot.iife.min.js": "application/javascript", "uPlot.min.css": "text/css", "uPlot.LICENSE": "text/plain"}
ASSETS = {"app.js": "application/javascript", "app.css": "text/css"}


def add_ui(app: web.Application, writable: bool) -> None:
    """Register / (a redirect), /ui/ and its assets; the page is told whether rules may be written."""
    index = (UI / "index.html").read_text().replace("__WRITABLE__", "true" if writable else "false")
    files = {name: (UI / name, kind) for name, kind in ASSETS.items()}
    files |= {f"vendor/{name}": (VENDOR / name, kind) for name, kind in VENDORED.items()}

    async def home(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=index, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def asset(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        path, kind = found
        return web.Response(body=path.read_bytes(), content_type=kind, headers={"Cache-Control": "no-cache"})

    app.add_routes([web.get("/", home), web.get("/ui", home), web.get("/ui/", page),
                    web.get("/ui/{name:.+}", asset)])
