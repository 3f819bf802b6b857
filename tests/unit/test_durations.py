"""Prometheus duration strings."""

from __future__ import annotations

import pytest

from oa_exporter.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("14d", 14 * 86400), ("1w", 604800), ("500ms", 0.5),
     ("1y", 365 * 86400), ("1d1h1m1s", 90061)],
)
def test_parses_prometheus_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1x", "-1m", "1.5h", "m", " 5m", "0s", "0m0s"])
def test_rejects_what_is_not_a_positive_duration(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("not_text", [60, None, 1.5])
def test_rejects_numbers_without_a_unit(not_text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(not_text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(30, "30s"), (300, "5m"), (5400, "1h30m"), (86400, "1d"), (14 * 86400, "2w"), (90061, "1d1h1m1s"),
     (0, "0s")],
)
def test_formats_the_shortest_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["30s", "1h30m", "2w", "1w2d3h4m5s"])
def test_format_inverts_parse(text):
    assert format_duration(parse_duration(text)) == text
