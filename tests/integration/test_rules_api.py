"""The rules API against a daemon beside a real Prometheus: read a rule, preview one, write, delete, race."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from multidict import CIMultiDict

from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.certs import web_config
from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration

RULES = """\
# team SRE's rules: this comment stays through API writes
groups:
  - name: synthetic  # scored every 2 s
    interval: 2s
    rules:
      - anomaly: requests
        expr: oa_test_requests
        step: 1m
        train: {window: 3d, every: 1d}
        forecast: {horizon: 1h, level: 99}
        min_history: 1d
  # a group no write touches
  - name: untouched
    interval: 2s
    rules:
      - anomaly: constant  # the constant series
        expr: oa_test_requests{instance="host-19"}
        step: 1m
        train: {window: 3d}
        min_history: 1d
"""
ALICE = {"Authorization": aiohttp.encode_basic_auth("alice", "wonderland")}
NEW_RULE = {"anomaly": "requests_fast", "expr": 'oa_test_requests{instance=~"host-0[0-4]"}', "step": "1m",
            "train": {"window": "2d", "every": "1d"}, "min_history": "1d"}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    scenario = Scenario(end=time.time())
    with PrometheusServer(tmp_path_factory.mktemp("prom"), series=scenario.build()) as server:
        server.scenario = scenario
        yield server


@contextlib.asynccontextmanager
async def daemon(prometheus: PrometheusServer, tmp_path: Path, writable: bool = True,
                 rules: str = RULES, web_config_file: str = "") -> AsyncIterator[str]:
    rules_file = tmp_path / "rules" / "rules.yaml"
    rules_file.parent.mkdir(exist_ok=True)
    rules_file.write_text(rules)
    port = free_port()
    settings = Settings(rules=(str(rules_file),), prometheus_url=prometheus.url,
                        web_listen_address=f"127.0.0.1:{port}", artifact_dir=str(tmp_path / "models"),
                        pool_workers=1, query_retries=1, web_enable_rules_api=writable, preview_timeout=60.0,
                        web_config_file=web_config_file)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(base, headers=ALICE if web_config_file else None)
        yield base
    finally:
        stop.set()
        assert await task == 0


async def wait_until_up(base: str, timeout: float = 30.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=headers) as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/-/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise AssertionError("daemon not ready")


async def call(method: str, url: str, **kwargs) -> tuple[int, CIMultiDict, dict]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as response:
        return response.status, CIMultiDict(response.headers), await response.json()


async def test_a_rule_reads_as_written_and_as_in_force_with_an_etag(prometheus, tmp_path):
    async with daemon(prometheus, tmp_path) as base:
        status, headers, body = await call("GET", f"{base}/api/v1/rules/requests")
        missing, _, _ = await call("GET", f"{base}/api/v1/rules/nope")
    assert status == 200 and missing == 404
    data = body["data"]
    assert headers["ETag"] == data["etag"]
    assert data["group"] == "synthetic" and data["source"]["train"] == {"window": "3d", "every": "1d"}
    definition = data["definition"]
    assert definition["model"] == {"engine": "nixtla", "name": "SeasonalProfile", "params": {}} or \
        definition["model"]["name"] == "SeasonalProfile"
    assert definition["train"] == {"window": "3d", "every": "1d"}
    assert definition["forecast"] == {"horizon": "1h", "level": 99.0}
    assert definition["max_series"] == 10000 and definition["direction"] == "both"
    assert data["status"]["state"] in ("ok", "fitting", "pending")


async def test_a_preview_replays_an_unsaved_rule_and_finds_the_injected_spikes(prometheus, tmp_path):
    end = prometheus.scenario.end
    rule = {"anomaly": "try_me", "expr": "oa_test_requests", "step": "1m",
            "train": {"window": "1d", "every": "6h"}, "forecast": {"horizon": "1h", "level": 99},
            "min_history": "12h"}
    async with daemon(prometheus, tmp_path, writable=False) as base:
        status, _, body = await call("POST", f"{base}/api/v1/preview",
                                     json={"rule": rule, "start": end - 3 * 3600, "end": end, "limit": 50})
        by_label, _, narrowed = await call("POST", f"{base}/api/v1/preview", json={
            "rule": rule, "start": _rfc3339(end - 3600), "end": str(end), "labels": {"instance": "host-05"}})
        invalid, _, problems = await call("POST", f"{base}/api/v1/preview",
                                          json={"rule": {**rule, "step": "often"}, "start": end - 3600, "end": end})
        too_big, _, refused = await call("POST", f"{base}/api/v1/preview",
                                         json={"rule": rule, "start": 0, "end": end})
    assert status == 200, body
    data = body["data"]
    assert len(data["timestamps"]) == 180 and data["series_total"] == 20
    series = {s["labels"]["instance"]: s for s in data["series"]}
    for spiked in ("host-00", "host-01", "host-02"):
        assert series[spiked]["score"][-1] > 1
        assert any(e["labels"]["instance"] == spiked and e["end"] >= data["timestamps"][-3]
                   for e in data["excursions"])
    calm = series["host-05"]
    assert len(calm["y"]) == len(calm["yhat"]) == len(calm["yhat_lower"]) == len(calm["score"]) == 180
    scored = [i for i, s in enumerate(calm["score"]) if s is not None]
    assert len(scored) > 150
    assert all(calm["yhat_lower"][i] <= calm["yhat"][i] <= calm["yhat_upper"][i] for i in scored)
    peaks = [s["peak_score"] if s["peak_score"] is not None else -math.inf for s in data["series"]]
    assert peaks == sorted(peaks, reverse=True)  # the most anomalous first
    ranked = [s["labels"]["instance"] for s in data["series"]]
    # the spiked series outrank every steady one; not necessarily the gappy one (host-18), whose samples after
    # the gap that ends inside the range can score as high, depending on where in its daily cycle the gap fell
    steady = [f"host-{i:02d}" for i in range(3, 17)]
    assert max(ranked.index(f"host-{i:02d}") for i in range(3)) < min(ranked.index(k) for k in steady)
    assert by_label == 200 and [s["labels"]["instance"] for s in narrowed["data"]["series"]] == ["host-05"]
    assert invalid == 422 and any('rule "try_me"' in p and "step" in p for p in problems["problems"])
    assert too_big == 422 and "limit" in refused["error"]


async def test_writes_are_refused_unless_the_rules_api_is_enabled(prometheus, tmp_path):
    async with daemon(prometheus, tmp_path, writable=False) as base:
        put, _, body = await call("PUT", f"{base}/api/v1/rules/requests_fast",
                                  json={"group": "new", "rule": NEW_RULE})
        delete, _, _ = await call("DELETE", f"{base}/api/v1/rules/requests")
    assert put == 403 and delete == 403 and "--web.enable-rules-api" in body["error"]
    assert (tmp_path / "rules" / "rules.yaml").read_text() == RULES


async def test_a_write_is_validated_like_check_applied_by_reload_and_keeps_untouched_comments(prometheus, tmp_path):
    rules_file = tmp_path / "rules" / "rules.yaml"
    async with daemon(prometheus, tmp_path) as base:
        await wait_for_rule_state(base, "requests", "ok")
        _, _, before = await call("GET", f"{base}/api/v1/rules/requests")
        bad, _, problems = await call("PUT", f"{base}/api/v1/rules/requests_fast",
                                      json={"group": "new", "rule": {**NEW_RULE, "forecast": {"level": 120}}})
        created, headers, body = await call("PUT", f"{base}/api/v1/rules/requests_fast",
                                            json={"group": "new", "rule": NEW_RULE})
        written = rules_file.read_text()
        _, _, rules = await call("GET", f"{base}/api/v1/rules")
        _, _, after = await call("GET", f"{base}/api/v1/rules/requests")
        gone, _, _ = await call("DELETE", f"{base}/api/v1/rules/constant")
        _, _, remaining = await call("GET", f"{base}/api/v1/rules")
    assert bad == 422
    assert problems["problems"] == [f'{rules_file}:31: rule "requests_fast": forecast.level must be a number '
                                    "strictly between 0 and 100 (a percentage)"]
    assert created == 200 and headers["ETag"] == body["data"]["etag"]
    assert "# team SRE's rules: this comment stays through API writes" in written
    assert "# a group no write touches" in written and "# the constant series" in written
    assert yaml.safe_load(written)["groups"][-1] == {"name": "new", "rules": [NEW_RULE]}
    assert [r["name"] for r in rules["data"]["rules"]] == ["requests", "constant", "requests_fast"]
    # the untouched rule kept its model: no refit, same training time
    assert after["data"]["status"]["last_fit"] == before["data"]["status"]["last_fit"]
    assert after["data"]["status"]["fits_since_start"] == before["data"]["status"]["fits_since_start"]
    assert gone == 200 and [r["name"] for r in remaining["data"]["rules"]] == ["requests", "requests_fast"]
    assert "untouched" not in rules_file.read_text()


async def test_two_writers_racing_on_one_rule_one_wins_the_other_gets_409(prometheus, tmp_path):
    async with daemon(prometheus, tmp_path) as base:
        _, headers, _ = await call("GET", f"{base}/api/v1/rules/requests")
        version = headers["ETag"]
        edits = [{"group": "synthetic", "rule": {"anomaly": "requests", "expr": "oa_test_requests", "step": "1m",
                                                  "train": {"window": "3d"}, "labels": {"edited_by": who}}}
                 for who in ("alice", "bob")]
        results = await asyncio.gather(*(call("PUT", f"{base}/api/v1/rules/requests", json=edit,
                                              headers={"If-Match": version}) for edit in edits))
        stale, _, _ = await call("DELETE", f"{base}/api/v1/rules/requests", headers={"If-Match": version})
        _, _, now = await call("GET", f"{base}/api/v1/rules/requests")
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 409], results
    winner = next(body for status, _, body in results if status == 200)
    loser = next(body for status, _, body in results if status == 409)
    assert "changed since it was read" in loser["error"]
    assert now["data"]["source"]["labels"] == winner["data"]["source"]["labels"]
    assert stale == 409


async def test_a_read_only_rules_file_answers_409_with_the_reason(prometheus, tmp_path):
    rules_file = tmp_path / "rules" / "rules.yaml"
    async with daemon(prometheus, tmp_path) as base:
        rules_file.chmod(0o444)  # as a ConfigMap's file is to its pod: not to be written (even by root)
        status, _, body = await call("PUT", f"{base}/api/v1/rules/requests_fast",
                                     json={"group": "new", "rule": NEW_RULE})
    assert status == 409 and "read-only" in body["error"]
    assert rules_file.read_text() == RULES


async def wait_for_rule_state(base: str, name: str, state: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, body = await call("GET", f"{base}/api/v1/rules/{name}")
        if (body["data"].get("status") or {}).get("state") == state:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"rule {name} not {state} within {timeout}s")


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def test_a_daemon_killed_mid_write_leaves_the_old_or_the_new_rules_never_a_mix(prometheus, tmp_path):
    """Writes in a loop, the daemon SIGKILLed at a different moment each round: the file always loads whole."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    written = {"0"}
    for round_ in range(3):
        port = free_port()
        daemon_process = subprocess.Popen(
            [sys.executable, "-m", "oa_exporter.entrypoints.cli", "run", "--rules", str(rules_file),
             "--prometheus-url", prometheus.url, "--web.listen-address", f"127.0.0.1:{port}",
             "--artifact.store", "noop", "--web.enable-rules-api", "--pool.workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            asyncio.run(wait_until_up(f"http://127.0.0.1:{port}"))
            stop = threading.Event()
            writer = threading.Thread(target=_write_forever, args=(port, round_, written, stop))
            writer.start()
            time.sleep(0.5 + 0.4 * round_)
            daemon_process.kill()
            daemon_process.wait(10)
            stop.set()
            writer.join(10)
        finally:
            daemon_process.kill()
            daemon_process.wait(10)
        loaded = yaml.safe_load(rules_file.read_text())
        assert [g["name"] for g in loaded["groups"]] == ["synthetic", "untouched"]
        rule = loaded["groups"][0]["rules"][0]
        assert rule["anomaly"] == "requests" and rule["expr"] == "oa_test_requests"
        assert rule.get("labels", {}).get("version", "0") in written
        assert len(written) > round_ + 1  # writes did happen before the kill
    assert subprocess.run([sys.executable, "-m", "oa_exporter.entrypoints.cli", "check", str(rules_file)],
                          capture_output=True).returncode == 0


def _write_forever(port: int, round_: int, written: set[str], stop: threading.Event) -> None:
    url = f"http://127.0.0.1:{port}/api/v1/rules/requests"
    for n in itertools.count():
        if stop.is_set():
            return
        version = f"{round_}-{n}"
        rule = {"anomaly": "requests", "expr": "oa_test_requests", "step": "1m", "train": {"window": "3d"},
                "min_history": "1d", "labels": {"version": version}, "annotations": {"padding": "x" * 20000}}
        written.add(version)  # before the request: the kill may land after the rename, before the answer
        request = urllib.request.Request(url, method="PUT", data=json.dumps({"group": "synthetic", "rule": rule})
                                         .encode(), headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).read()
        except (OSError, urllib.error.URLError):
            return


async def test_each_write_is_logged_with_the_basic_auth_user_and_unauthenticated_writes_are_refused(
        prometheus, tmp_path, caplog):
    config = web_config(tmp_path / "web.yaml", users={"alice": "wonderland"})
    async with daemon(prometheus, tmp_path, web_config_file=str(config)) as base:
        anonymous, _, _ = await _call_raw("PUT", f"{base}/api/v1/rules/requests_fast",
                                          json={"group": "new", "rule": NEW_RULE})
        with caplog.at_level(logging.INFO, logger="oa_exporter"):
            written, _, _ = await call("PUT", f"{base}/api/v1/rules/requests_fast",
                                       json={"group": "new", "rule": NEW_RULE}, headers=ALICE)
            deleted, _, _ = await call("DELETE", f"{base}/api/v1/rules/requests_fast", headers=ALICE)
    assert anonymous == 401 and written == 200 and deleted == 200
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rules API:")]
    assert lines[0].startswith("rules API: user 'alice' (127.0.0.1) wrote rule requests_fast in group new")
    assert lines[1] == "rules API: user 'alice' (127.0.0.1) deleted rule requests_fast"


async def _call_raw(method: str, url: str, **kwargs) -> tuple[int, CIMultiDict, str]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as response:
        return response.status, CIMultiDict(response.headers), await response.text()
