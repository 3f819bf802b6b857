"""What operators install: alert rules (promtool), example rules (oa-exporter check), dashboards (Grafana's
own models), and every dashboard/alert expression evaluated on a Prometheus that scrapes a running daemon."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from oa_exporter.entrypoints.cli import main as cli
from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.integration.test_daemon_prometheus import RULES, wait_for_scores
from tests.servers import PrometheusServer, VictoriaMetricsServer, _request, free_port
from tests.synthetic import Scenario
from tests.unit.test_alert_templates import ACCEPTED, REFUSED

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
ALERTS = ROOT / "rules" / "alerts"
# the daemon's rules, the one that pages with annotations whose templates Prometheus expands per series
ANNOTATED = RULES.replace("        labels: {team: sre}\n", """        labels: {team: sre}
        annotations:
          summary: "Requests of {{ $labels.instance }} are unusual"
          runbook_url: "https://runbooks.example/requests?instance={{ $labels.instance }}"
""", 1)
VARIABLES = {"$__rate_interval": "1m", "$rule": "requests", "$filter": 'instance="host-00"',
             "$exporter": "127.0.0.1:[0-9]+"}


def panels(board: dict) -> list[dict]:
    """Every panel that queries: those at the top level and those inside collapsed rows."""
    found = []
    for p in board["panels"]:
        found += p.get("panels", []) if p["type"] == "row" else [p]
    return found


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    check = subprocess.run(["promtool", "check", "rules", str(ALERTS / "openanomaly.yaml")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(["promtool", "test", "rules", "tests.yaml"], cwd=ALERTS, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_alert_templates_check_refuses_exactly_those_promtool_refuses(tmp_path):
    templates = ACCEPTED + [text for text, _ in REFUSED]
    rules = [{"alert": f"T{i}", "expr": "up", "annotations": {"a": text}} for i, text in enumerate(templates)]
    (tmp_path / "templates.yaml").write_text(json.dumps({"groups": [{"name": "templates", "rules": rules}]}))
    check = subprocess.run(["promtool", "check", "rules", str(tmp_path / "templates.yaml")], capture_output=True,
                           text=True)
    refused = {int(i) for i in re.findall(r'"T(\d+)": annotation "a": template', check.stdout + check.stderr)}
    assert refused == set(range(len(ACCEPTED), len(templates))), check.stdout + check.stderr


def test_alerts_written_for_the_example_rules_pass_promtool_check(tmp_path, capsys):
    files = [*sorted((ROOT / "rules" / "anomaly").glob("*.yaml")), ROOT / "oa_exporter" / "demo" / "rules.yaml"]
    out = tmp_path / "alerts.yaml"
    assert cli(["rules", "alerts", *map(str, files), "-o", str(out)]) == 0, capsys.readouterr().err
    check = subprocess.run(["promtool", "check", "rules", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {out.read_text().count('- alert: AnomalyDetected')} rules found" in check.stdout


def test_example_anomaly_rules_pass_oa_exporter_check(capsys):
    files = sorted((ROOT / "rules" / "anomaly").glob("*.yaml"))
    assert len(files) >= 3
    assert cli(["check", *map(str, files)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_are_valid_grafana_models_with_a_datasource_variable(path):
    board = json.loads(path.read_text())
    model = Dashboard.from_json(board)
    assert model.title == board["title"] and len(model.panels) == len(board["panels"]) > 0
    assert board["templating"]["list"][0]["type"] == "datasource"
    assert {json.dumps(p["datasource"]) for p in board["panels"] + panels(board)} == {
        '{"type": "prometheus", "uid": "${datasource}"}'}
    uids = re.findall(r'"uid": "([^"]*)"', path.read_text())
    assert set(uids) - {board["uid"]} == {"${datasource}"}  # no hard-coded datasource UID
    encoded = json.loads(json.dumps(model, cls=JSONEncoder))  # Grafana's model, written back out
    assert [p["type"] for p in encoded["panels"]] == [p["type"] for p in board["panels"]]
    assert [t["name"] for t in encoded["templating"]["list"]] == [t["name"] for t in board["templating"]["list"]]


def expressions() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            found += [(f"{path.stem}: {panel['title']}", t["expr"]) for t in panel["targets"]]
    return found


async def run_daemon_writing(prometheus, tmp: Path, port: int, destinations: tuple[str, ...]):
    """The daemon on tmp/rules.yaml, serving /metrics and remote-writing its results (--output.mode both)."""
    settings = Settings(
        rules=(str(tmp / "rules.yaml"),), prometheus_url=prometheus.url, web_listen_address=f"127.0.0.1:{port}",
        artifact_dir=str(tmp / "models"), pool_workers=1, query_retries=1, output_mode="both",
        remote_write_urls=destinations, remote_write_queue_dir=str(tmp / "remote-write"),
    )
    stop = asyncio.Event()
    return f"http://127.0.0.1:{port}", stop, asyncio.create_task(serve(settings, stop=stop))


def scrapes(prometheus: PrometheusServer) -> int:
    """Successful scrapes of the daemon in the last minute."""
    found = prometheus.query('sum_over_time(up{job="oa-exporter"}[1m])')["result"]
    return int(float(found[0]["value"][1])) if found else 0


def active_alerts(prometheus: PrometheusServer) -> list[dict]:
    """The alerts Prometheus holds now, pending or firing, with their labels and expanded annotations."""
    return json.loads(_request(f"{prometheus.url}/api/v1/alerts"))["data"]["alerts"]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """A Prometheus that has the synthetic history, scrapes a running daemon every second and evaluates, every
    second, the alerts `oa-exporter rules alerts` wrote for the daemon's rules; the daemon also remote-writes
    to VictoriaMetrics and to a URL that refuses every request (so drops are counted)."""
    port = free_port()
    tmp = tmp_path_factory.mktemp("assets")
    assert ANNOTATED != RULES
    (tmp / "rules.yaml").write_text(ANNOTATED)
    assert cli(["rules", "alerts", str(tmp / "rules.yaml"), "-o", str(tmp / "alerts.yaml")]) == 0
    scrape = {"scrape_configs": [{"job_name": "oa-exporter", "scrape_interval": "1s", "honor_labels": True,
                                  "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
              "global": {"evaluation_interval": "1s"}, "rule_files": [str(tmp / "alerts.yaml")]}
    scenario = Scenario(end=time.time())
    with PrometheusServer(tmp, series=scenario.build(), extra_config=scrape) as prometheus, \
            VictoriaMetricsServer(tmp) as victoria:
        prometheus.receiving, prometheus.refusing = f"{victoria.url}/api/v1/write", f"{prometheus.url}/api/v1/nowhere"

        async def daemon_scraped() -> None:
            destinations = (prometheus.receiving, prometheus.refusing)
            base, stop, task = await run_daemon_writing(prometheus, tmp, port, destinations)
            try:
                await wait_for_scores(f"{base}/metrics", "requests")
                deadline = time.monotonic() + 180  # a dozen scrapes: enough samples for rate() over 1m
                while await asyncio.to_thread(scrapes, prometheus) < 12:
                    assert time.monotonic() < deadline, "Prometheus did not scrape the daemon a dozen times"
                    await asyncio.sleep(0.5)
                while not any(a["labels"]["rule"] == "requests" for a in await asyncio.to_thread(active_alerts,
                                                                                                prometheus)):
                    assert time.monotonic() < deadline, "no alert on the requests rule while its spikes score"
                    await asyncio.sleep(0.5)
                prometheus.alerts = await asyncio.to_thread(active_alerts, prometheus)  # while the daemon runs
            finally:
                stop.set()
                assert await task == 0

        asyncio.run(daemon_scraped())
        yield prometheus, time.time() - 1


@pytest.mark.parametrize(("panel", "expr"), expressions(), ids=[p for p, _ in expressions()])
def test_every_dashboard_expression_returns_data(scraped, panel, expr):
    prometheus, at = scraped
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    result = prometheus.query(expr.replace('rule=~"requests"', 'rule=~".*"'), at)["result"]
    assert result, f"{panel}: {expr} returned nothing"


def test_alert_expressions_evaluate_and_the_anomaly_alert_fires_on_the_spikes(scraped):
    prometheus, at = scraped
    rules = [r for g in _yaml(ALERTS / "openanomaly.yaml")["groups"] for r in g["rules"]]
    for rule in rules:
        prometheus.query(rule["expr"], at)  # raises on an error from Prometheus
    anomalies = prometheus.query(rules[0]["expr"], at)["result"]
    assert {r["metric"]["instance"] for r in anomalies if r["metric"]["rule"] == "requests"} >= {"host-00"}
    assert all(r["metric"]["severity"] == "warning" for r in anomalies)
    unhealthy = prometheus.query("oa_rule_healthy == 0", at)["result"]
    assert {r["metric"]["rule"] for r in unhealthy} >= {"too_many"}
    fresh = prometheus.query("oa_model_age_seconds < on (instance, rule) 2 * oa_rule_refit_period_seconds", at)
    assert {r["metric"]["rule"] for r in fresh["result"]} >= {"requests"}  # the stale alert's join matches


def test_the_alerts_written_for_the_rules_page_with_the_rules_annotations_expanded_per_series(scraped):
    prometheus, _ = scraped
    paging = [a for a in prometheus.alerts if a["labels"]["rule"] == "requests"]
    assert paging and all(a["labels"]["alertname"] == "AnomalyDetected" for a in paging)
    for alert in paging:
        instance = alert["labels"]["instance"]  # a host of the synthetic series: host-00 ...
        assert instance.startswith("host-")
        assert alert["labels"]["team"] == "sre" and alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["summary"] == f"Requests of {instance} are unusual"
        assert alert["annotations"]["runbook_url"] == f"https://runbooks.example/requests?instance={instance}"
        score = float(alert["value"])
        assert score > 1 and f"The series has scored {score:.2f} (1 = the edge of the band)" in \
            alert["annotations"]["description"]
    groups = json.loads(_request(f"{prometheus.url}/api/v1/rules"))["data"]["groups"]
    assert [(r["name"], r["health"]) for g in groups for r in g["rules"]] == [("AnomalyDetected", "ok")] * 4


def test_remote_write_alerts_see_the_refusing_destination_and_not_the_healthy_one(scraped):
    prometheus, at = scraped
    rules = {r["alert"]: r["expr"] for g in _yaml(ALERTS / "openanomaly.yaml")["groups"] for r in g["rules"]}
    dropping = prometheus.query(rules["OpenAnomalyRemoteWriteDropping"], at)["result"]
    assert {(r["metric"]["url"], r["metric"]["reason"]) for r in dropping} == {(prometheus.refusing, "http_404")}
    assert prometheus.query(rules["OpenAnomalyRemoteWriteQueueGrowing"], at)["result"] == []  # nothing waits
    watched = prometheus.query("oa_remote_write_oldest_sample_age_seconds and on (instance, url) "
                               "oa_remote_write_queue_samples", at)["result"]  # the growing alert's two sides
    assert {r["metric"]["url"] for r in watched} == {prometheus.receiving, prometheus.refusing}
    sent = prometheus.query("increase(oa_remote_write_samples_sent_total[1m]) > 0", at)["result"]
    assert {r["metric"]["url"] for r in sent} == {prometheus.receiving}


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
