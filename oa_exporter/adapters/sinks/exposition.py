"""The /metrics page: every rule's results rendered once per cycle into bytes (and a gzipped copy).

A scrape only sends bytes. Per series, the label block is built once and reused while the rule's series
set does not change; each cycle formats the values of all series with C-level map/join, not per-line
string formatting.

The page is kept as ~1 MB byte chunks, gzipped chunk by chunk (zlib lets go of the GIL while it
compresses), so that no single call holds the GIL for long: joining and encoding a 68 MB page in one
piece held it for ~100 ms, stalling every scrape thread that needed it meanwhile. The plain page is joined
only when a scraper asks for it uncompressed.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
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
SLICE = 2048  # series per C-level join: ~2 ms of GIL each at 100k-series label sizes


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
    families: dict[str, list[bytes]] = field(default_factory=dict)


class _Rendered:
    """One rendered page: its chunks and their gzip stream; the plain bytes joined on first demand."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # level 1, gzip container
        self.gzipped = b"".join([*map(compressor.compress, chunks), compressor.flush()])

    @cached_property
    def plain(self) -> bytes:
        return b"".join(self.chunks)


class ExpositionPage:
    """ResultSink that keeps the latest results as Prometheus text-format bytes."""

    def __init__(self, extra: Callable[[], bytes] = lambda: b""):
        self._extra = extra
        self._rules: dict[str, _RuleLines] = {}
        self._lock = threading.Lock()  # publish, forget and flush may run in different threads
        self._rendered = _Rendered([])

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
        chunks = []
        for name, _, help_text in FAMILIES:
            chunks.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n".encode())
            for families in rules:
                chunks.extend(families.get(name, ()))
        chunks.append(self._extra())
        self._rendered = _Rendered(chunks)

    def page(self, gzipped: bool = False) -> bytes:
        """The latest rendered page."""
        rendered = self._rendered
        return rendered.gzipped if gzipped else rendered.plain

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


def _lines(prefixes: list[str], values: np.ndarray) -> list[bytes]:
    """Prefix + value + newline for every series, as one encoded chunk per slice of SLICE series, so no
    single C call holds the GIL long (scrape threads and the event loop wait for it)."""
    return [
        "".join(map(str.__add__, prefixes[i : i + SLICE], _format(values[i : i + SLICE]))).encode()
        for i in range(0, len(prefixes), SLICE)
    ]


def _format(values: np.ndarray) -> Iterable[str]:
    """Text-format values with their newline: repr round-trips floats; infinities spelled +Inf/-Inf."""
    text: Iterable[str] = map(repr, values.tolist())
    if np.isinf(values).any():
        text = [{"inf": "+Inf", "-inf": "-Inf"}.get(t, t) for t in text]
    return map(str.__add__, text, repeat("\n"))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
