"""The dashboards as a user meets them: built from dashboards/build.py, rules listed before they score, the
remote-write row marked as such, the quality panels on real self-metric names, series named by their own labels."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from oa_exporter.adapters.sinks.remote_write import _Metrics
from oa_exporter.adapters.telemetry.prometheus_client import PrometheusTelemetry

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("dashboards_build", ROOT / "dashboards" / "build.py")
assert spec and spec.loader
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)
BOARDS = {"overview": build.overview(), "rule-detail": build.rule_detail(), "exporter-health": build.exporter_health()}


def queried(board: dict) -> list[dict]:
    return [q for p in board["panels"] for q in (p.get("panels", []) if p["type"] == "row" else [p])]


def exported_names() -> set[str]:
    """Every sample name the daemon can export about itself (counters with their _total)."""
    registry = PrometheusTelemetry().registry
    _Metrics(registry)
    names = set()
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


@pytest.mark.parametrize("name", BOARDS)
def test_the_committed_json_is_what_build_py_writes(name):
    assert json.loads((ROOT / "dashboards" / f"openanomaly-{name}.json").read_text()) == BOARDS[name]


@pytest.mark.parametrize("name", ["overview", "rule-detail"])
def test_the_rule_dropdown_lists_rules_still_in_warmup(name):
    rule = next(v for v in BOARDS[name]["templating"]["list"] if v["name"] == "rule")
    assert rule["definition"] == "label_values(oa_rule_series, rule)"  # not oa_anomaly_score: no score yet


def test_the_remote_write_row_is_collapsed_and_says_when_it_is_empty():
    board = BOARDS["exporter-health"]
    rows = [p for p in board["panels"] if p["type"] == "row"]
    remote = [r for r in rows if r["title"].startswith("Remote write")]
    assert len(remote) == 1 and remote[0]["collapsed"] and "--remote-write.url" in remote[0]["title"]
    inside = {t["expr"] for p in remote[0]["panels"] for t in p["targets"]}
    outside = {t["expr"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]}
    assert all("oa_remote_write_" in e for e in inside) and not any("oa_remote_write_" in e for e in outside)
    assert board["panels"][-1] is remote[0]  # last: nothing else is hidden with it


def test_quality_panels_use_metrics_the_daemon_exports():
    board = BOARDS["exporter-health"]
    exprs = " ".join(t["expr"] for p in queried(board) for t in p["targets"])
    for name in ("oa_band_coverage_ratio", "oa_fit_fallback_series_total", "oa_query_failures_total",
                 "oa_artifact_failures_total", "oa_artifact_rejected_total"):
        assert name in exprs
    used = set(re.findall(r"\boa_[a-z_]+", exprs))
    assert used <= exported_names(), used - exported_names()
    detail = " ".join(t["expr"] for p in queried(BOARDS["rule-detail"]) for t in p["targets"])
    assert "oa_band_coverage_ratio" in detail


def test_rule_series_are_named_by_their_own_labels_never_the_exporters_instance():
    board = BOARDS["rule-detail"]
    targets = [t for p in queried(board) for t in p["targets"] if "oa_band_coverage" not in t["expr"]]
    assert all(t["expr"].startswith("label_replace(label_replace(") and "$exporter" in t["expr"] for t in targets)
    legends = {t["legendFormat"] for t in targets}
    assert {"band upper", "band lower"} <= legends  # the band's edges, named, and shaded between them
    assert not any("{{instance}}" in legend for legend in legends)
    fill = next(o for o in board["panels"][0]["fieldConfig"]["overrides"] if o["matcher"]["options"] == "C")
    assert {"id": "custom.fillBelowTo", "value": "band lower"} in fill["properties"]
    exporter = next(v for v in board["templating"]["list"] if v["name"] == "exporter")
    assert exporter["definition"] == "label_values(oa_build_info, instance)" and exporter["hide"] == 2
