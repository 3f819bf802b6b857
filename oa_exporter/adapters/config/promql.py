"""Offline PromQL validation, as `promtool check rules` does it."""

from __future__ import annotations

import promql_parser


def check_promql(expr: str) -> str | None:
    """None when `expr` parses as PromQL, else the parser's message."""
    try:
        promql_parser.parse(expr)
    except ValueError as e:
        return str(e)
    return None
