"""The /metrics page: every rule's results rendered once per cycle into bytes (and a gzipped copy).

A scrape only sends bytes. Per series, the label block is built once and reused while the rule's series
set does not change; each cycle formats the values of all series with C-level map/join, not per-line
string formatting.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import compress, repeat

import numpy as np

from ...core.domain import Rule, RuleScores, SeriesKey

FAMILIES = (
    ("oa_y", "y", "Value of the rule's expression, as the TSDB returned it."),
    ("oa_yhat", "yhat", "Forecast of the value."),
    ("oa_yhat_lower", "lower", "Lower edge of the forecast band at the rule's level."),
    ("oa_yhat_upper", "upper", "Upper edge of the forecast band at the rule's level."),
    ("oa_anomaly_score", "score", "Anomaly score: 0 at the forecast, 1 on the band's edge, above 1 outside."),
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SLICE = 8192


def output_labels(rule: Rule, series: Mapping[str, str]) -> dict[str, str]:
    """Labels of one output series: rule, the input's labels (clashes renamed exported_*), rule labels."""
    labels = {"rule": rule.name}
    for name, value in series.items():
        if name == "__name__":
            continue
        labels["exported_rule" if name == "rule" else name] = value
    labels.update(rule.labels)
    return labels


def label_block(labels: Mapping[str, str]) -> str:
    """`{a="1",b="2"} ` with values escaped as the text format requires."""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "} "


@dataclass
class _RuleLines:
    """A rule's label blocks, one per series, cached for an unchanged series list."""

    rule: Rule | None = None
    keys: list[SeriesKey] | None = None
    prefixes: dict[str, list[str]] = field(default_factory=dict)
    blocks: dict[SeriesKey, str] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)


class ExpositionPage:
    """ResultSink that keeps the latest results as Prometheus text-format bytes."""

    def __init__(self, extra: Callable[[], bytes] = lambda: b""):
        self._extra = extra
        self._rules: dict[str, _RuleLines] = {}
        self._lock = threading.Lock()  # publish, forget and flush may run in different threads
        self._page = b""
        self._gzipped = gzip.compress(b"")

    def publish(self, scores: RuleScores) -> None:
        lines = self._rules.get(scores.rule.name)
        if lines is None or lines.rule != scores.rule:  # new rule, or its labels changed: rebuild blocks
            lines = _RuleLines(rule=scores.rule)
        prefixes = self._prefixes(lines, scores)
        for name, attribute, _ in FAMILIES:
            values = getattr(scores, attribute)
            present = ~np.isnan(values)
            if present.all():
                chosen, kept = prefixes[name], values
            else:
                chosen, kept = list(compress(prefixes[name], present.tolist())), values[present]
            lines.families[name] = _lines(chosen, kept)
        with self._lock:
            self._rules[scores.rule.name] = lines

    def forget(self, rule: str) -> None:
        with self._lock:
            self._rules.pop(rule, None)

    def flush(self) -> None:
        """Render the whole page once; scrapes then send these bytes."""
        with self._lock:
            rules = [dict(lines.families) for lines in self._rules.values()]
        parts = []
        for name, _, help_text in FAMILIES:
            parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
            parts.extend(families.get(name, "") for families in rules)
        page = "".join(parts).encode() + self._extra()
        self._page, self._gzipped = page, gzip.compress(page, compresslevel=1)


    def page(self, gzipped: bool = False) -> bytes:
        """The latest rendered page."""
        return self._gzipped if gzipped else self._page

    def _prefixes(self, lines: _RuleLines, scores: RuleScores) -> dict[str, list[str]]:
        if scores.keys is lines.keys or scores.keys == lines.keys:
            return lines.prefixes
        blocks = lines.blocks
        fresh = {}
        for i, key in enumerate(scores.keys):  # labels are read (and maybe parsed) only for new series
            block = blocks.get(key)
            fresh[key] = block if block is not None else label_block(output_labels(scores.rule, scores.labels[i]))
        lines.blocks, lines.keys = fresh, scores.keys
        ordered = [fresh[k] for k in scores.keys]
        lines.prefixes = {name: [name + b for b in ordered] for name, _, _ in FAMILIES}
        return lines.prefixes


def _lines(prefixes: list[str], values: np.ndarray) -> str:
    """Prefix + value + newline for every series, joined in slices so no single C call holds the GIL long
    (the event loop serving scrapes waits for it)."""
    return "".join(
        "".join(map(str.__add__, prefixes[i : i + SLICE], _format(values[i : i + SLICE])))
        for i in range(0, len(prefixes), SLICE)
    )


def _format(values: np.ndarray) -> Iterable[str]:
    """Text-format values with their newline: repr round-trips floats; infinities spelled +Inf/-Inf."""
    text: Iterable[str] = map(repr, values.tolist())
    if np.isinf(values).any():
        text = [{"inf": "+Inf", "-inf": "-Inf"}.get(t, t) for t in text]
    return map(str.__add__, text, repeat("\n"))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
