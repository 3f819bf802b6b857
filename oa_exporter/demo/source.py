"""A Prometheus-API source on loopback serving the demo's generated series.

It answers /api/v1/query and /api/v1/query_range for plain selectors (`name{label=~"re", ...}`) exactly
as Prometheus formats them, so the daemon reads it through the same HTTP adapter as production.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import numpy as np
import promql_parser
from aiohttp import web

from .signals import HISTORY, DemoSignals

MAX_POINTS = 11_000


class SelectorError(ValueError):
    """The expression is not a plain selector the demo source can answer."""


def select(signals: DemoSignals, expr: str) -> np.ndarray:
    """Rows of the series a plain selector matches."""
    try:
        node = promql_parser.parse(expr)
    except ValueError as e:
        raise SelectorError(f"parse error: {e}") from e
    if not isinstance(node, promql_parser.VectorSelector):
        raise SelectorError("the demo source answers plain selectors only, e.g. demo_queue_depth{queue=\"emails\"}")
    tests = [_matcher(m) for m in node.matchers.matchers]
    if node.name:
        tests.append(lambda labels: labels["__name__"] == node.name)
    return np.array([i for i, s in enumerate(signals.series) if all(t(s.metric) for t in tests)], dtype=np.int64)


def _matcher(m: promql_parser.Matcher) -> Callable[[dict[str, str]], bool]:
    op = m.op
    if op == promql_parser.MatchOp.Equal:
        return lambda labels: labels.get(m.name, "") == m.value
    if op == promql_parser.MatchOp.NotEqual:
        return lambda labels: labels.get(m.name, "") != m.value
    pattern = re.compile(f"^(?:{m.value})$")
    if op == promql_parser.MatchOp.Re:
        return lambda labels: bool(pattern.match(labels.get(m.name, "")))
    return lambda labels: not pattern.match(labels.get(m.name, ""))


def make_source(signals: DemoSignals, clock: Callable[[], float] = time.time) -> web.Application:
    """The aiohttp application of the demo source."""

    async def query(request: web.Request) -> web.Response:
        params = await _params(request)
        at = min(float(params.get("time", clock())), clock())
        rows = select(signals, params["query"])
        values = signals.values(rows, np.array([at]))[:, 0]
        result = [
            {"metric": signals.series[r].metric, "value": [at, repr(float(v))]}
            for r, v in zip(rows, values, strict=True)
        ]
        return _ok("vector", result)

    async def query_range(request: web.Request) -> web.Response:
        params = await _params(request)
        start, end, step = (float(params[k]) for k in ("start", "end", "step"))
        if (end - start) / step + 1 > MAX_POINTS:
            raise SelectorError("exceeded maximum resolution of 11,000 points per timeseries")
        now = clock()
        grid = start + step * np.arange(int((min(end, now) - start) // step) + 1)
        grid = grid[grid >= now - HISTORY]
        rows = select(signals, params["query"])
        values = signals.values(rows, grid)
        times = grid.tolist()
        result = [
            {"metric": signals.series[r].metric, "values": list(map(list, zip(times, map(repr, row.tolist()))))}
            for r, row in zip(rows, values, strict=True)
        ]
        return _ok("matrix", result)

    async def series(request: web.Request) -> web.Response:  # what the range reader asks of a wide selector
        rows = select(signals, (await _params(request))["match[]"])
        return web.json_response({"status": "success", "data": [signals.series[r].metric for r in rows]})

    @web.middleware
    async def errors(request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            return await handler(request)
        except (SelectorError, KeyError, ValueError) as e:
            body = {"status": "error", "errorType": "bad_data", "error": str(e)}
            return web.json_response(body, status=400)

    app = web.Application(middlewares=[errors])
    for path, handler in (("/api/v1/query", query), ("/api/v1/query_range", query_range), ("/api/v1/series", series)):
        app.router.add_get(path, handler)
        app.router.add_post(path, handler)
    return app


async def _params(request: web.Request) -> dict[str, str]:
    params = dict(request.query)
    if request.method == "POST":
        params.update({k: str(v) for k, v in (await request.post()).items()})
    return params


def _ok(kind: str, result: list) -> web.Response:
    return web.json_response({"status": "success", "data": {"resultType": kind, "result": result}})
