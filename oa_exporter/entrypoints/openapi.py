"""The OpenAPI description of the rules API, served at /api/v1/openapi.json (a test checks the server against it)."""

from __future__ import annotations

from typing import Any

from .. import __version__

_NUMBERS = {"type": "array", "items": {"type": "number", "nullable": True}}
_TIME = {"oneOf": [{"type": "number"}, {"type": "string"}],
         "description": "unix seconds, or an RFC 3339 time such as 2026-11-30T00:00:00Z"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_RULE = {"type": "object", "additionalProperties": True,
         "description": "a rule's keys as in the rules file: anomaly, expr, step, preset, model, train, forecast, "
                        "direction, min_history, max_series, repeat_window, new_normal_after, calibrate, "
                        "settle_after, for, labels, annotations"}


def _error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str = "success") -> dict[str, Any]:
    body = {"type": "object", "required": ["status", "data"],
            "properties": {"status": {"type": "string", "enum": ["success"]}, "data": schema}}
    return {"description": description, "content": {"application/json": {"schema": body}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_RULE_PATH = {"name": "rule", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_:]*$"},
              "description": "the rule's name (its `anomaly` key)"}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "the ETag read with GET: the write is refused (409) when the rule changed since"}

_STORED = {"type": "object", "required": ["name", "group", "etag", "source"], "properties": {
    "name": {"type": "string"}, "group": {"type": "string"}, "etag": {"type": "string"},
    "origin": {"type": "string"}, "source": _RULE}}

_DETAIL = {"type": "object", "required": ["name", "definition", "status", "top_scores", "fit_history"], "properties": {
    "name": {"type": "string"}, "group": {"type": "string", "nullable": True},
    "etag": {"type": "string", "nullable": True}, "origin": {"type": "string"},
    "source": {**_RULE, "nullable": True}, "source_yaml": {"type": "string", "nullable": True},
    "definition": {**_RULE, "nullable": True,
                   "description": "the rule in force, preset expanded, defaults written out"},
    "status": {"type": "object", "nullable": True, "additionalProperties": True},
    "top_scores": {"type": "array", "items": {"type": "object", "properties": {
        "labels": _LABELS, **{k: {"type": "number", "nullable": True}
                              for k in ("y", "yhat", "yhat_lower", "yhat_upper", "score")}}}},
    "fit_history": {"type": "array", "items": {"type": "object", "properties": {
        "started_at": {"type": "number"}, "finished_at": {"type": "number"}, "ok": {"type": "boolean"},
        "error": {"type": "string"}, "series": {"type": "integer"}}}},
}}

_PREVIEW = {"type": "object", "required": ["rule", "timestamps", "series", "excursions"], "properties": {
    "rule": _RULE, "timestamps": {"type": "array", "items": {"type": "number"}},
    "series": {"type": "array", "items": {"type": "object", "required": ["labels", "y", "yhat", "yhat_lower",
                                                                           "yhat_upper", "score"], "properties": {
        "labels": _LABELS, "peak_score": {"type": "number", "nullable": True}, "anomalies": {"type": "integer"},
        "y": _NUMBERS, "yhat": _NUMBERS, "yhat_lower": _NUMBERS, "yhat_upper": _NUMBERS, "score": _NUMBERS}}},
    "series_total": {"type": "integer"},
    "excursions": {"type": "array", "items": {"type": "object", "properties": {
        "labels": _LABELS, "series": {"type": "integer", "nullable": True}, "start": {"type": "number"},
        "end": {"type": "number"}, "points": {"type": "integer"}, "peak_score": {"type": "number"},
        "peak_at": {"type": "number"}}}},
    "fits": {"type": "integer"}, "errors": {"type": "array", "items": {"type": "string"}},
    "seconds": {"type": "number"},
}}

_WRITE_ERRORS = {"400": _error("the body is not what the endpoint takes"),
                 "403": _error("writes are off (--web.enable-rules-api is not set)"),
                 "409": _error("the If-Match version is stale, or the config store is read-only")}


def openapi() -> dict[str, Any]:
    """The description, as a JSON-ready mapping."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "OpenAnomaly rules API", "version": __version__},
        "paths": {
            "/api/v1/rules": {"get": {"summary": "every rule's state", "responses": {"200": _ok(
                {"type": "object", "properties": {"rules": {"type": "array", "items": {"type": "object"}}}})}}},
            "/api/v1/rules/{rule}": {
                "parameters": [_RULE_PATH],
                "get": {"summary": "one rule: as written, as in force, its state, top scores and fits",
                        "responses": {"200": {**_ok(_DETAIL), "headers": {"ETag": {"schema": {"type": "string"}}}},
                                      "404": _error("no such rule")}},
                "put": {"summary": "create or replace a rule (its group is created when new)",
                        "parameters": [_IF_MATCH],
                        "requestBody": _body({"type": "object", "required": ["group", "rule"], "properties": {
                            "group": {"type": "string", "minLength": 1}, "rule": _RULE}}),
                        "responses": {"200": _ok(_STORED), **_WRITE_ERRORS,
                                      "422": _error("the rule set it would make is invalid (`problems`)")}},
                "delete": {"summary": "delete a rule (and its group, once empty)", "parameters": [_IF_MATCH],
                           "responses": {"200": _ok({"type": "object"}), **_WRITE_ERRORS,
                                         "404": _error("no such rule")}},
            },
            "/api/v1/validate": {"post": {
                "summary": "whether a rule would be accepted in a group (writes nothing)",
                "requestBody": _body({"type": "object", "required": ["group"], "properties": {
                    "group": {"type": "string", "minLength": 1}, "rule": _RULE,
                    "rule_yaml": {"type": "string", "description": "the rule in YAML, instead of `rule`"}}}),
                "responses": {"200": _ok({"type": "object", "required": ["valid", "problems"], "properties": {
                    "valid": {"type": "boolean"}, "problems": {"type": "array", "items": {"type": "string"}},
                    "rule": {**_RULE, "nullable": True}}}), "400": _error("the body is not what it takes"),
                    "409": _error("the config store cannot be written")}}},
            "/api/v1/preview": {"post": {
                "summary": "replay a rule that is not saved over a past range of the TSDB",
                "requestBody": _body({"type": "object", "required": ["rule", "start", "end"], "properties": {
                    "rule": _RULE, "start": _TIME, "end": _TIME,
                    "labels": {**_LABELS, "description": "replay only the series carrying these labels"},
                    "limit": {"type": "integer", "minimum": 0,
                              "description": "series answered with their arrays, highest peak score first (20)"}}}),
                "responses": {"200": _ok(_PREVIEW), "400": _error("the body is not what it takes"),
                              "422": _error("the rule is invalid, or the preview is larger than its limits"),
                              "429": _error("another preview is running"),
                              "500": _error("the replay failed"),
                              "504": _error("the preview ran past --preview.timeout")}}},
            "/api/v1/openapi.json": {"get": {"summary": "this description",
                                             "responses": {"200": {"description": "OpenAPI 3.0"}}}},
        },
        "components": {"schemas": {"Error": {"type": "object", "required": ["status", "error"], "properties": {
            "status": {"type": "string", "enum": ["error"]}, "errorType": {"type": "string"},
            "error": {"type": "string"}, "problems": {"type": "array", "items": {"type": "string"}}}}}},
    }
