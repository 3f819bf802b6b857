"""The demo's paging lines: one line when a series starts paging, one when it stops, nothing in between."""

from __future__ import annotations

import numpy as np

from oa_exporter.core.domain import ModelSpec, Rule, RuleScores
from oa_exporter.demo.paging import PagingLines

RULE = Rule("demo_requests", "g", "demo_http_requests_per_second", 60.0, ModelSpec("statsforecast", "SeasonalProfile"))
LABELS = [{"__name__": "m", "service": "checkout"}, {"__name__": "m", "service": "search"}]


def scores(*values: float) -> RuleScores:
    score = np.array(values)
    nothing = np.zeros_like(score)
    return RuleScores(RULE, [b"a", b"b"], LABELS, 0.0, nothing, nothing, nothing, nothing, score)


def test_a_line_when_a_series_starts_and_stops_paging():
    lines: list[str] = []
    sink = PagingLines(lines.append)
    sink.publish(scores(0.2, np.nan))
    sink.publish(scores(8.94, 0.3))
    sink.publish(scores(7.0, 0.3))  # still paging: no new line
    sink.publish(scores(0.4, 0.3))
    assert lines == ['anomaly: demo_requests{service="checkout"} score 8.9',
                     'resolved: demo_requests{service="checkout"} score 0.4']


def test_a_forgotten_rule_starts_afresh():
    lines: list[str] = []
    sink = PagingLines(lines.append)
    sink.publish(scores(3.0, 0.0))
    sink.forget("demo_requests")
    sink.publish(scores(3.0, 0.0))
    assert len(lines) == 2
