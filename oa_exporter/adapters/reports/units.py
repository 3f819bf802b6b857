"""The unit of a rule's values, read from its PromQL by Prometheus's naming conventions, and SI-prefixed values.

`node_cpu_seconds_total` counts seconds, so `rate(node_cpu_seconds_total[5m])` is in s/s and
`histogram_quantile(0.99, rate(x_seconds_bucket[5m]))` in s; a metric without a unit suffix, or an expression
mixing units, has none (values are still SI-prefixed: 12.3k).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import promql_parser

SUFFIXES = {"seconds": "s", "bytes": "B", "bits": "bit", "celsius": "°C", "meters": "m", "volts": "V",
            "amperes": "A", "joules": "J", "grams": "g", "hertz": "Hz", "watts": "W", "percent": "%"}
PER_SECOND = {"rate", "irate", "deriv"}
SAME_UNIT = {"increase", "delta", "idelta", "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max",
             "last_over_time", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
             "quantile_over_time", "stddev_over_time", "predict_linear", "histogram_quantile"}
SAME_UNIT_AGGREGATIONS = {"sum", "avg", "min", "max", "topk", "bottomk", "quantile", "stddev"}
PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))


def metric_unit(name: str) -> str | None:
    """The unit a metric name declares: x_seconds_total -> 's', x_bytes -> 'B', x_ratio -> ''."""
    parts = name.split("_")
    counter = parts[-1] == "total"
    while parts and parts[-1] in ("total", "bucket", "sum", "count", "created"):
        parts.pop()
    if parts and parts[-1] in SUFFIXES:
        return SUFFIXES[parts[-1]]
    return "" if counter or (parts and parts[-1] == "ratio") else None  # a count, or a fraction


def expr_unit(expr: str, labels: Mapping[str, str] | None = None) -> str | None:
    """The unit of an expression's values; None when it cannot be told."""
    if labels and labels.get("__name__"):
        return metric_unit(labels["__name__"])
    try:
        return _unit(promql_parser.parse(expr))
    except ValueError:
        return None


def _unit(node: promql_parser.Expr) -> str | None:
    if isinstance(node, promql_parser.VectorSelector):
        return metric_unit(node.name or "")
    if isinstance(node, promql_parser.MatrixSelector):
        return _unit(node.vector_selector)
    if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        return _unit(node.expr)
    if isinstance(node, promql_parser.AggregateExpr):
        return _unit(node.expr) if str(node.op) in SAME_UNIT_AGGREGATIONS else None
    if isinstance(node, promql_parser.Call):
        return _call_unit(node)
    if isinstance(node, promql_parser.BinaryExpr):
        left, right = _unit(node.lhs), _unit(node.rhs)
        op = str(node.op)
        if op in ("+", "-") and left == right:
            return left
        if op == "/" and left is not None and left == right:
            return ""  # a ratio of like quantities
        return None  # a product, or a scaled value (x * 8, x / 1e3): its unit cannot be told
    return None


def _call_unit(node: promql_parser.Call) -> str | None:
    name = node.func.name
    if name == "histogram_quantile":  # in the unit of the histogram's observations, whatever rate() is inside
        return metric_unit(_selector(node) or "")
    args = [a for a in node.args if not isinstance(a, promql_parser.NumberLiteral)]
    if not args:
        return None
    inner = _unit(args[-1])
    if name in PER_SECOND:
        return None if inner is None else (f"{inner}/s" if inner else "/s")
    return inner if name in SAME_UNIT else None


def _selector(node: promql_parser.Expr) -> str | None:
    """The metric name of the first vector selector under a node."""
    if isinstance(node, promql_parser.VectorSelector):
        return node.name
    children = [getattr(node, a) for a in ("expr", "vector_selector", "lhs", "rhs") if hasattr(node, a)]
    for child in children + list(getattr(node, "args", None) or ()):
        name = _selector(child)
        if name:
            return name
    return None


def si(value: float, unit: str | None = None, digits: int = 3) -> str:
    """A value with an SI prefix and its unit: 1234.5, 'B' -> '1.23 kB'; 0.0042, 's' -> '4.2 ms'."""
    if not math.isfinite(value):
        return "-"
    unit = unit or ""
    if unit == "%":
        return f"{value:.{digits}g} %"
    magnitude = abs(value)
    prefixes = PREFIXES[:5] if unit in ("", "/s", "s/s") else PREFIXES  # no milli-counts: 0.5, not 500 m
    scale, prefix = next(((s, p) for s, p in prefixes if magnitude >= s), (1.0, "")) if magnitude else (1.0, "")
    text = f"{value / scale:.{digits}g}"
    return f"{text} {prefix}{unit}".rstrip() if (prefix or unit) else text
