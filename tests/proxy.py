"""A counting proxy in front of a real Prometheus-API server: what a reader asked for and what it got back."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import web


@dataclass
class Counts:
    """Range and instant queries forwarded, and the samples (series × points) their answers held."""

    range_queries: int = 0
    instant_queries: int = 0
    range_samples: int = 0
    refused: int = 0
    widest: int = 0  # most samples one range answer held
    seen: list[dict[str, str]] = field(default_factory=list)  # the form of every range query

    def reset(self) -> None:
        self.range_queries = self.instant_queries = self.range_samples = self.refused = self.widest = 0
        self.seen.clear()


class CountingProxy:
    """Forwards /api/v1/query and /api/v1/query_range to `target`, counting the samples of range answers."""

    def __init__(self, target: str):
        self.target = target.rstrip("/")
        self.counts = Counts()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> CountingProxy:
        app = web.Application()
        app.router.add_route("*", "/api/v1/{endpoint}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession()
        return self

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        form = dict(await request.post()) if request.method == "POST" else dict(request.query)
        assert self._session is not None
        async with self._session.post(f"{self.target}/api/v1/{endpoint}", data=form) as upstream:
            body = await upstream.read()
            status = upstream.status
        self._count(endpoint, {k: str(v) for k, v in form.items()}, status, body)
        return web.Response(body=body, status=status, content_type="application/json")

    def _count(self, endpoint: str, form: dict[str, str], status: int, body: bytes) -> None:
        if endpoint == "query":
            self.counts.instant_queries += 1
            return
        if endpoint != "query_range":
            return
        self.counts.range_queries += 1
        self.counts.seen.append(form)
        if status != 200:
            self.counts.refused += 1
            return
        samples = sum(len(item.get("values", [])) for item in orjson.loads(body)["data"]["result"])
        self.counts.range_samples += samples
        self.counts.widest = max(self.counts.widest, samples)
