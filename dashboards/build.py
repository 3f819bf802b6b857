"""Builds the Grafana dashboards (JSON, schema 39) from one description, so they stay consistent.

    python dashboards/build.py        # rewrites dashboards/*.json

Every panel queries `${datasource}` (a Prometheus datasource variable): no datasource UID is hard-coded.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref,
            "range": not instant, "instant": instant}


def panel(kind: str, title: str, targets: list[dict], grid: tuple[int, int, int, int], **extra) -> dict:
    x, y, w, h = grid
    return {"type": kind, "title": title, "datasource": DS, "targets": targets,
            "gridPos": {"x": x, "y": y, "w": w, "h": h}, "fieldConfig": extra.pop("fieldConfig", {"defaults": {},
            "overrides": []}), "options": extra.pop("options", {}), **extra}


def row(title: str, y: int, panels: list[dict] | None = None) -> dict:
    """A row; given `panels` it starts collapsed and holds them (they query only once it is opened)."""
    return {"type": "row", "title": title, "datasource": DS, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            "collapsed": panels is not None, "panels": panels or []}


def own_labels(expr: str) -> str:
    """The series without the `job` and `instance` of the exporter itself: a rule whose expr aggregates them
    away has none of its own, and Prometheus attaches the scrape target's even under honor_labels."""
    return (f'label_replace(label_replace({expr}, "job", "", "instance", "$exporter"), '
            f'"instance", "", "instance", "$exporter")')


def thresholds(*steps: tuple[str, float | None]) -> dict:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def variable_datasource() -> dict:
    return {"type": "datasource", "name": "datasource", "label": "Prometheus", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "options": []}


def variable_query(name: str, query: str, multi: bool = False) -> dict:
    return {"type": "query", "name": name, "label": name, "datasource": DS, "refresh": 2, "sort": 1,
            "query": {"query": query, "refId": f"{name}-variable"}, "definition": query, "current": {},
            "multi": multi, "includeAll": multi, "allValue": ".*" if multi else None, "options": []}


def variable_rule(multi: bool = False) -> dict:
    """Rules from oa_rule_series: every loaded rule, those still in warm-up (no score yet) included."""
    return variable_query("rule", "label_values(oa_rule_series, rule)", multi=multi)


def variable_exporter() -> dict:
    """Hidden: the exporters' own `instance` values, to tell their labels from the series' own."""
    return {**variable_query("exporter", "label_values(oa_build_info, instance)", multi=True), "hide": 2,
            "allValue": None, "current": {"text": "All", "value": "$__all"}}


def variable_text(name: str, label: str, default: str = "") -> dict:
    return {"type": "textbox", "name": name, "label": label, "query": default,
            "current": {"text": default, "value": default}, "options": [], "hide": 0}


def dashboard(uid: str, title: str, panels: list[dict], variables: list[dict]) -> dict:
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return {"uid": uid, "title": title, "tags": ["openanomaly"], "timezone": "browser", "editable": True,
            "schemaVersion": 39, "version": 1, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": variables}, "annotations": {"list": []}, "panels": panels, "links": []}


def overview() -> dict:
    rules = '{rule=~"$rule"}'
    score_fc = {"defaults": {"thresholds": thresholds(("green", None), ("red", 1))}, "overrides": []}
    return dashboard("oa-overview", "OpenAnomaly / Overview", [
        panel("stat", "Anomalous series now", [target(f"count(oa_anomaly_score{rules} > 1) or vector(0)",
                                                      instant=True)], (0, 0, 6, 4),
              fieldConfig={"defaults": {"thresholds": thresholds(("green", None), ("red", 1))}, "overrides": []}),
        panel("stat", "Series scored", [target(f"count(oa_anomaly_score{rules})", instant=True)], (6, 0, 6, 4)),
        panel("stat", "Series not ready", [target('sum(oa_rule_series{rule=~"$rule",state="not-ready"})',
                                                  instant=True)], (12, 0, 6, 4)),
        panel("stat", "Rules unhealthy", [target(f"count(oa_rule_healthy{rules} == 0) or vector(0)",
                                                 instant=True)], (18, 0, 6, 4)),
        panel("timeseries", "Anomalous series per rule",
              [target(f"count by (rule) (oa_anomaly_score{rules} > 1)", "{{rule}}")], (0, 4, 12, 9)),
        panel("timeseries", "Highest anomaly score per rule",
              [target(f"max by (rule) (oa_anomaly_score{rules})", "{{rule}}")], (12, 4, 12, 9),
              fieldConfig=score_fc),
        panel("table", "Worst offenders now", [target(own_labels(f"topk(20, oa_anomaly_score{rules})"),
                                                      instant=True)],
              (0, 13, 24, 10), options={"sortBy": [{"displayName": "Value", "desc": True}]},
              transformations=[{"id": "labelsToFields", "options": {}}]),
    ], [variable_datasource(), variable_rule(multi=True), variable_exporter()])


def rule_detail() -> dict:
    sel = '{rule="$rule",$filter}'
    band = {"defaults": {"custom": {"fillOpacity": 0}}, "overrides": [
        {"matcher": {"id": "byFrameRefID", "options": "C"},
         "properties": [{"id": "custom.fillBelowTo", "value": "band lower"},
                        {"id": "custom.fillOpacity", "value": 20}]},
        {"matcher": {"id": "byFrameRefID", "options": "E"},
         "properties": [{"id": "custom.drawStyle", "value": "points"}, {"id": "custom.pointSize", "value": 8},
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]},
    ]}
    by = "{{$legend}}"  # the series' own label the user picked; the exporter's instance never shows
    return dashboard("oa-rule", "OpenAnomaly / Rule detail", [
        panel("timeseries", "Value against its forecast band", [
            target(own_labels(f"oa_y{sel}"), f"y {by}", "A"),
            target(own_labels(f"oa_yhat{sel}"), f"forecast (yhat) {by}", "B"),
            target(own_labels(f"oa_yhat_upper{sel}"), "band upper", "C"),  # fixed names: the fill between them
            target(own_labels(f"oa_yhat_lower{sel}"), "band lower", "D"),
            target(own_labels(f"oa_y{sel} and (oa_anomaly_score{sel} > 1)"), f"anomaly (score > 1) {by}", "E"),
        ], (0, 0, 18, 12), fieldConfig=band,
              description="For one series: narrow the rule's series with the series matchers. The forecast band "
                          "is shaded between `band upper` and `band lower`; y, the forecast and the anomalies are "
                          "named by the series label picked in `legend` (an aggregated expr's series carry no "
                          "instance of their own: the exporter's is left out)."),
        panel("stat", "Band coverage, last hour", [target('max(oa_band_coverage_ratio{rule="$rule"})',
                                                          instant=True)], (18, 0, 6, 12),
              fieldConfig={"defaults": {"unit": "percentunit", "decimals": 2}, "overrides": []}),
        panel("timeseries", "Anomaly score (1 = edge of the band)", [target(own_labels(f"oa_anomaly_score{sel}"),
                                                                             f"score {by}")],
              (0, 12, 24, 8), fieldConfig={"defaults": {"thresholds": thresholds(("green", None), ("red", 1)),
                                                        "custom": {"thresholdsStyle": {"mode": "line"}}},
                                           "overrides": []}),
    ], [variable_datasource(), variable_rule(), variable_exporter(),
        variable_text("filter", "Series matchers (e.g. instance=\"web-1\")"),
        variable_text("legend", "Series label in the legend (e.g. instance, service)", "instance")])


def exporter_health() -> dict:
    return dashboard("oa-exporter", "OpenAnomaly / Exporter health", [
        panel("stat", "Last reload", [target("min(oa_rules_last_reload_successful)", instant=True)], (0, 0, 6, 4),
              fieldConfig={"defaults": {"mappings": [{"type": "value", "options": {
                  "0": {"text": "failed", "color": "red"}, "1": {"text": "ok", "color": "green"}}}]},
                  "overrides": []}),
        panel("stat", "Rules loaded", [target("max(oa_rules_loaded)", instant=True)], (6, 0, 6, 4)),
        panel("stat", "Reload failures (1h)",
              [target("sum(increase(oa_rules_reload_failures_total[1h]))", instant=True)], (12, 0, 6, 4)),
        panel("stat", "Oldest model", [target("max(oa_model_age_seconds)", instant=True)], (18, 0, 6, 4),
              fieldConfig={"defaults": {"unit": "s"}, "overrides": []}),
        panel("timeseries", "Series by state", [target("sum by (state) (oa_rule_series)", "{{state}}")],
              (0, 4, 12, 8)),
        panel("timeseries", "Scoring cycle time (p99) per group", [target(
            f"histogram_quantile(0.99, sum by (le, group) (rate(oa_cycle_duration_seconds_bucket[{RATE}])))",
            "{{group}}")], (12, 4, 12, 8), fieldConfig={"defaults": {"unit": "s"}, "overrides": []}),
        panel("timeseries", "Cycle overruns", [target(
            f"sum by (group) (increase(oa_cycle_overruns_total[{RATE}])) or sum by (group) "
            f"(0 * rate(oa_cycle_duration_seconds_count[{RATE}]))", "{{group}}")], (0, 12, 12, 8)),
        panel("timeseries", "Fit duration (p90) per rule", [target(
            f"histogram_quantile(0.9, sum by (le, rule) (rate(oa_fit_duration_seconds_bucket[{RATE}])))",
            "{{rule}}")], (12, 12, 12, 8), fieldConfig={"defaults": {"unit": "s"}, "overrides": []}),
        panel("timeseries", "Fits and fit failures", [
            target(f"sum by (rule) (increase(oa_fits_total[{RATE}]))", "fits {{rule}}", "A"),
            target(f"sum by (rule) (increase(oa_fit_failures_total[{RATE}]))", "failures {{rule}}", "B"),
        ], (0, 20, 12, 8)),
        panel("timeseries", "TSDB query time (p90) by kind", [target(
            f"histogram_quantile(0.9, sum by (le, kind) (rate(oa_query_duration_seconds_bucket[{RATE}])))",
            "{{kind}}")], (12, 20, 12, 8), fieldConfig={"defaults": {"unit": "s"}, "overrides": []}),
        panel("timeseries", "Unhealthy rules", [target("oa_rule_healthy == 0", "{{rule}}")], (0, 28, 12, 8)),
        panel("timeseries", "Model age", [target("max by (rule) (oa_model_age_seconds)", "{{rule}}")], (12, 28, 12, 8),
              fieldConfig={"defaults": {"unit": "s"}, "overrides": []}),
        *quality(36),
        row("Training and band jobs", 52),
        *jobs(53),
        row("Shards", 69),
        *shards(70),
        row("Remote write: empty unless a receiver is configured (--remote-write.url or --remote-write.config-file)",
            78, remote_write(79)),
    ], [variable_datasource()])


def quality(y: int) -> list[dict]:
    """What tells a rule's bands or inputs are off: coverage against the level, fallbacks, query and store errors."""
    per_rule = "sum by (rule) (0 * oa_rule_healthy)"  # a 0 per rule while a counter has no series yet
    ratio = {"defaults": {"unit": "percentunit", "min": 0, "max": 1, "decimals": 2}, "overrides": []}
    return [
        panel("timeseries", "Band coverage per rule, last hour (near forecast.level when the bands are right)",
              [target("max by (rule) (oa_band_coverage_ratio)", "{{rule}}")], (0, y, 12, 8), fieldConfig=ratio),
        panel("timeseries", "Series fitted by the fallback model", [target(
            f"sum by (rule) (increase(oa_fit_fallback_series_total[{RATE}])) or {per_rule}", "{{rule}}")],
              (12, y, 12, 8)),
        panel("timeseries", "TSDB query failures", [target(
            f"sum by (rule, kind) (increase(oa_query_failures_total[{RATE}])) or on (rule) {per_rule}",
            "{{rule}} {{kind}}")], (0, y + 8, 12, 8)),
        panel("timeseries", "Model store errors and refused models", [
            target(f"sum by (rule, operation) (increase(oa_artifact_failures_total[{RATE}])) or on (rule) "
                   f"{per_rule}", "failed {{operation}} {{rule}}", "A"),
            target(f"sum by (rule, reason) (increase(oa_artifact_rejected_total[{RATE}])) or on (rule) "
                   f"{per_rule}", "refused {{reason}} {{rule}}", "B"),
        ], (12, y + 8, 12, 8)),
    ]


def shards(y: int) -> list[dict]:
    """Replicas that split the rules' series (--shard.count): how many serve, and each one's share."""
    return [
        panel("stat", "Shards served", [
            target('count(count_values("shard", oa_shard_index))', "served", "A", instant=True),
            target("max(oa_shard_count)", "configured", "B", instant=True),
        ], (0, y, 6, 8)),
        panel("timeseries", "Series per shard", [target("sum by (instance) (oa_shard_series)", "{{instance}}")],
              (6, y, 18, 8)),
    ]


def jobs(y: int) -> list[dict]:
    """Training and band jobs by queue (the process pool, or Celery workers): backlog, outcomes, duration."""
    return [
        panel("timeseries", "Jobs queued and running", [
            target("sum by (queue) (oa_jobs_queued)", "queued {{queue}}", "A"),
            target("sum by (queue) (oa_jobs_running)", "running {{queue}}", "B"),
        ], (0, y, 12, 8)),
        panel("timeseries", "Jobs finished, failed and retried per second", [
            target(f"sum by (queue) (rate(oa_jobs_succeeded_total[{RATE}]))", "finished {{queue}}", "A"),
            target(f"sum by (queue, reason) (rate(oa_jobs_failed_total[{RATE}])) or on (queue) "
                   f"sum by (queue) (0 * rate(oa_jobs_succeeded_total[{RATE}]))", "failed {{queue}} {{reason}}", "B"),
            target(f"sum by (queue) (rate(oa_jobs_retried_total[{RATE}]))", "retried {{queue}}", "C"),
        ], (12, y, 12, 8)),
        panel("timeseries", "Job duration (p90) by queue, queueing included", [target(
            f"histogram_quantile(0.9, sum by (le, queue) (rate(oa_job_duration_seconds_bucket[{RATE}])))",
            "{{queue}}")], (0, y + 8, 24, 8), fieldConfig={"defaults": {"unit": "s"}, "overrides": []}),
    ]


def remote_write(y: int) -> list[dict]:
    """Remote write, per destination: throughput, drops, what waits in the queue and for how long."""
    seconds = {"defaults": {"unit": "s"}, "overrides": []}
    return [
        panel("timeseries", "Remote write: samples sent and retried per second", [
            target(f"sum by (url) (rate(oa_remote_write_samples_sent_total[{RATE}]))", "sent {{url}}", "A"),
            target(f"sum by (url) (rate(oa_remote_write_samples_retried_total[{RATE}]))", "retried {{url}}", "B"),
        ], (0, y, 12, 8)),
        panel("timeseries", "Remote write: samples dropped per second", [target(
            f"sum by (url, reason) (rate(oa_remote_write_samples_dropped_total[{RATE}])) or on (url) "
            f"sum by (url) (0 * rate(oa_remote_write_samples_sent_total[{RATE}]))", "{{url}} {{reason}}")],
              (12, y, 12, 8)),
        panel("timeseries", "Remote write: samples waiting in the queue",
              [target("sum by (url) (oa_remote_write_queue_samples)", "{{url}}")], (0, y + 8, 12, 8)),
        panel("timeseries", "Remote write: age of the oldest queued sample",
              [target("max by (url) (oa_remote_write_oldest_sample_age_seconds)", "{{url}}")], (12, y + 8, 12, 8),
              fieldConfig=seconds),
        panel("timeseries", "Remote write: request time (p99)", [target(
            "histogram_quantile(0.99, sum by (le, url) "
            f"(rate(oa_remote_write_request_duration_seconds_bucket[{RATE}])))", "{{url}}")], (0, y + 16, 12, 8),
              fieldConfig=seconds),
        panel("stat", "Remote write: since the last accepted request",
              [target("time() - max by (url) (oa_remote_write_last_success_timestamp_seconds)", "{{url}}",
                      instant=True)], (12, y + 16, 12, 8), fieldConfig=seconds),
    ]


def main() -> None:
    for name, board in (("overview", overview()), ("rule-detail", rule_detail()), ("exporter-health",
                                                                                    exporter_health())):
        (HERE / f"openanomaly-{name}.json").write_text(json.dumps(board, indent=2) + "\n")


if __name__ == "__main__":
    main()
