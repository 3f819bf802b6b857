"""Offline PromQL validation, as `promtool check rules` does it.

The parser's cost grows faster than linearly with the number of binary operators and with nesting (3,000
terms of `up+up+...` take 1.4 GB; 8,000 nested parentheses overflow its stack and kill the process), so an
expression is measured before it reaches the parser. At the bounds below a parse took at most 50 MB and
35 ms (256 operators: 25 MB; 60 terms each nested 64 deep: 50 MB). The parse itself runs in a child process
(promql_process.py), where a crash the bounds did not foresee costs one rule's error.
"""

from __future__ import annotations

import re

import promql_parser

MAX_LENGTH = 16384  # characters; the longest expression in the bundled rules is ~100
MAX_DEPTH = 64  # nesting of (), [] and {}
MAX_OPERATORS = 256  # binary (and unary) operators: what makes the parser's memory grow

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?|\'(?:[^\'\\]|\\.)*\'?|`[^`]*`?', re.DOTALL)
_OPERATOR = re.compile(r"==|!=|<=|>=|=~|!~|[-+*/%^<>]|\b(?:and|or|unless|atan2)\b", re.IGNORECASE)


def parse_error(expr: str) -> str | None:
    """None when `expr` parses as PromQL, else the parser's message. Runs the parser in this process."""
    try:
        promql_parser.parse(expr)
    except (ValueError, OverflowError, RecursionError) as e:
        return str(e) or type(e).__name__
    return None


def bound_error(expr: str) -> str | None:
    """Why `expr` is too large to parse safely, or None."""
    if len(expr) > MAX_LENGTH:
        return f"expression is {len(expr)} characters long, more than the {MAX_LENGTH} allowed"
    code = _STRING.sub('""', expr)
    operators = sum(1 for m in _OPERATOR.finditer(code) if m.group() not in ("=~", "!~"))
    if operators > MAX_OPERATORS:
        return f"expression has {operators} operators, more than the {MAX_OPERATORS} allowed"
    depth = deepest = 0
    for char in code:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    if deepest > MAX_DEPTH:
        return f"expression nests {deepest} levels deep, more than the {MAX_DEPTH} allowed"
    return None
