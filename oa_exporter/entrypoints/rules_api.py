"""The rules API under /api/v1/: read one rule, write and delete rules, validate, preview; JSON in and out.

Handlers translate HTTP to calls on the App and its errors to statuses: RuleError 422 (with every problem, as
`oa-exporter check` words them), ConflictError 409, NotFound 404, a preview refused 422/429/504. Writes are
refused with 403 unless --web.enable-rules-api is set, as Prometheus does with --web.enable-lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from aiohttp import web

from ..adapters.config.yaml_rules import parse_text
from ..core.errors import ConflictError, NotFound, PreviewError, Problem, RuleError
from ..core.rule_definition import definition
from ..core.services.preview import Preview
from .openapi import openapi

if TYPE_CHECKING:
    from ..bootstrap import App

log = logging.getLogger(__name__)
DEFAULT_LIMIT = 20  # series a preview answers with in full, highest peak score first
WRITES_OFF = "the rules API is read-only: start the daemon with --web.enable-rules-api to write rules"


def add_rules_api(app: web.Application, oa: App, writable: bool) -> None:
    """Register the rules API's routes on `app`."""
    api = _RulesApi(oa, writable)
    app.add_routes([
        web.get("/api/v1/rules/{rule}", api.get_rule), web.put("/api/v1/rules/{rule}", api.put_rule),
        web.delete("/api/v1/rules/{rule}", api.delete_rule), web.post("/api/v1/validate", api.validate),
        web.post("/api/v1/preview", api.preview), web.get("/api/v1/openapi.json", api.spec),
    ])


class _RulesApi:
    def __init__(self, oa: App, writable: bool):
        self.oa = oa
        self.writable = writable

    async def get_rule(self, request: web.Request) -> web.Response:
        try:
            detail = await self.oa.rule_detail(request.match_info["rule"])
        except NotFound as e:
            return _error(404, "not_found", str(e))
        headers = {"ETag": detail["etag"]} if detail["etag"] else {}
        return _json({"status": "success", "data": detail}, headers=headers)

    async def put_rule(self, request: web.Request) -> web.Response:
        if not self.writable:
            return _error(403, "forbidden", WRITES_OFF)
        name = request.match_info["rule"]
        body = await _object(request)
        group, rule = _group(body), _rule_of(body, name)
        try:
            stored = await self.oa.put_rule(group, rule, request.headers.get("If-Match"), _who(request))
        except RuleError as e:
            return _invalid(e)
        except ConflictError as e:
            return _error(409, "conflict", str(e))
        data = {"name": stored.name, "group": stored.group, "etag": stored.etag, "origin": stored.origin,
                "source": dict(stored.source)}
        return _json({"status": "success", "data": data}, headers={"ETag": stored.etag})

    async def delete_rule(self, request: web.Request) -> web.Response:
        if not self.writable:
            return _error(403, "forbidden", WRITES_OFF)
        name = request.match_info["rule"]
        try:
            await self.oa.delete_rule(name, request.headers.get("If-Match"), _who(request))
        except NotFound as e:
            return _error(404, "not_found", str(e))
        except ConflictError as e:
            return _error(409, "conflict", str(e))
        return _json({"status": "success", "data": {"name": name}})

    async def validate(self, request: web.Request) -> web.Response:
        """Would this rule be accepted? (what the editor calls as one types; writes nothing)."""
        body = await _object(request)
        if ("rule" in body) == ("rule_yaml" in body):
            raise _bad('give the rule as "rule" (an object) or as "rule_yaml" (its YAML text), one of them')
        group = _group(body)
        try:
            rule = _rule_of(body, None) if "rule" in body else _rule_yaml(body["rule_yaml"])
            await self.oa.put_rule(group, rule, None, _who(request), dry_run=True)
        except RuleError as e:
            return _json({"status": "success", "data": {"valid": False, "problems": [str(p) for p in e.problems],
                                                         "rule": None}})
        except ConflictError as e:
            return _error(409, "conflict", str(e))
        return _json({"status": "success", "data": {"valid": True, "problems": [], "rule": rule}})

    async def preview(self, request: web.Request) -> web.Response:
        body = await _object(request)
        start, end = _time(body, "start"), _time(body, "end")
        labels, limit = _labels(body), _limit(body)
        try:
            rule, result = await self.oa.preview(_rule_of(body, None), start, end, labels)
        except RuleError as e:
            return _invalid(e)
        except PreviewError as e:
            return _error(e.status, "preview", str(e))
        payload = await asyncio.to_thread(_preview_json, definition(rule), result, limit)
        return web.Response(body=payload, content_type="application/json")

    async def spec(self, request: web.Request) -> web.Response:
        return _json(openapi())


def _preview_json(rule: Mapping[str, Any], preview: Preview, limit: int) -> bytes:
    """The preview as JSON: series with the highest peak score first, `limit` of them with their arrays."""
    replay = preview.replay
    peaks = np.nanmax(np.where(np.isnan(replay.score), -np.inf, replay.score), axis=1, initial=-np.inf)
    order = np.argsort(-peaks, kind="stable")[:limit].tolist()
    anomalies = np.count_nonzero(np.nan_to_num(replay.score, nan=0.0) > 1.0, axis=1)
    series = [{"labels": dict(replay.labels[i]), "peak_score": float(peaks[i]) if np.isfinite(peaks[i]) else None,
               "anomalies": int(anomalies[i]), "y": replay.y[i], "yhat": replay.yhat[i],
               "yhat_lower": replay.lower[i], "yhat_upper": replay.upper[i], "score": replay.score[i]}
              for i in order]
    shown = {row: position for position, row in enumerate(order)}
    excursions = [{"labels": dict(replay.labels[e.series]), "series": shown.get(e.series), "start": e.start,
                   "end": e.end, "points": e.points, "peak_score": e.peak_score, "peak_at": e.peak_at}
                  for e in preview.excursions]
    data = {"rule": rule, "timestamps": replay.times, "series": series, "series_total": len(replay.keys),
            "excursions": excursions, "fits": replay.fits, "errors": replay.fit_errors,
            "seconds": round(preview.seconds, 3)}
    return orjson.dumps({"status": "success", "data": data}, option=orjson.OPT_SERIALIZE_NUMPY)


async def _object(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as e:
        raise _bad(f"the body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    return body


def _group(body: Mapping[str, Any]) -> str:
    group = body.get("group")
    if not isinstance(group, str) or not group.strip():
        raise _bad('"group" must be a non-empty string: the rule group to put the rule in')
    return group


def _rule_of(body: Mapping[str, Any], name: str | None) -> dict[str, Any]:
    rule = body.get("rule")
    if not isinstance(rule, dict):
        raise _bad('"rule" must be an object: the rule\'s keys as in the rules file')
    if name is not None and rule.setdefault("anomaly", name) != name:
        raise _bad(f'"rule.anomaly" ({rule["anomaly"]!r}) differs from the rule named in the path ({name!r})')
    return rule


def _rule_yaml(text: Any) -> dict[str, Any]:
    """A rule written in YAML (as in the editor), parsed as a rules file is, with its lines."""
    if not isinstance(text, str):
        raise _bad('"rule_yaml" must be a string')
    content = parse_text(text.encode("utf-8", "surrogatepass"), "<editor>")
    if not isinstance(content, Mapping):
        raise RuleError([Problem("a rule must be a mapping of its keys, e.g. anomaly: NAME, expr: QUERY", "<editor>")])
    return orjson.loads(orjson.dumps(content, default=str))


def _time(body: Mapping[str, Any], key: str) -> float:
    """Unix seconds (a number or its text) or RFC 3339, as Prometheus's API takes them."""
    from ..adapters.tsdb.csv_files import parse_time

    value = body.get(key)
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = parse_time(value.strip())
        else:
            raise ValueError
    except (ValueError, OverflowError) as e:
        raise _bad(f'"{key}" must be unix seconds or an RFC 3339 time, got {value!r}') from e
    if not np.isfinite(seconds) or not 0 <= seconds < 1e11:
        raise _bad(f'"{key}" is out of range: {value!r}')
    return seconds


def _labels(body: Mapping[str, Any]) -> dict[str, str]:
    labels = body.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise _bad('"labels" must be an object of label names to values: only those series are replayed')
    return labels


def _limit(body: Mapping[str, Any]) -> int:
    limit = body.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise _bad('"limit" must be a non-negative integer: the series answered with their arrays')
    return limit


def _who(request: web.Request) -> str:
    """The basic-auth user that --web.config.file's authentication let in, else the client's address."""
    from .web import USER

    user = request.get(USER, "")
    return f"user {user!r} ({request.remote})" if user else f"anonymous ({request.remote})"


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json",
                        headers=dict(headers or {}))


def _error(status: int, kind: str, message: str) -> web.Response:
    return _json({"status": "error", "errorType": kind, "error": message}, status)


def _invalid(error: RuleError) -> web.Response:
    return _json({"status": "error", "errorType": "invalid", "error": str(error),
                  "problems": [str(p) for p in error.problems]}, 422)


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(body=orjson.dumps({"status": "error", "errorType": "bad_data", "error": message}),
                              content_type="application/json")
