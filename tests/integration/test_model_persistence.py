"""Models that survive, as an operator sees them: `python -m oa_exporter run` against a real Prometheus, killed
with SIGKILL while it writes models, restarted; tampered models and changed rules; the S3 store on SeaweedFS.
Judged by GET /api/v1/rules, /metrics and the files and objects left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from oa_exporter.adapters.stores import codec
from tests.integration.test_daemon_prometheus import samples
from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "a signing key for the tests"
SERIES = 400
# Six rules over 400 series: with a 12 h season of 720 buckets each model is ~5 MB, so its write takes long
# enough (write + fsync) for the test to see it in progress and kill the daemon there.
BIG_RULES = 6
BIG_MODEL = "{name: SeasonalProfile, params: {seasons: [12h], buckets: 720}}"
KILLS = 8  # daemons killed at most: on a loaded machine a kill aimed inside a write can land just after it


def rules_text(count: int, selector: str = "", model: str = BIG_MODEL, exprs: dict[int, str] | None = None) -> str:
    rules = []
    for i in range(count):
        expr = (exprs or {}).get(i, f"oa_test_requests{selector} * {i + 1}")
        rules.append(f"""
      - anomaly: r{i}
        expr: {expr}
        step: 1m
        preset: none
        train: {{window: 1d, every: 1d}}
        min_history: 12h
        model: {model}""")
    return "groups:\n  - name: persistence\n    interval: 1s\n    rules:" + "".join(rules) + "\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    scenario = Scenario(end=time.time(), series=SERIES, days=1.2, spiked=(0,), constant=None, gappy=None, short=None)
    with PrometheusServer(tmp_path_factory.mktemp("prom"), series=scenario.build()) as server:
        yield server


@dataclass
class Daemon:
    """One `oa-exporter run` process."""

    process: subprocess.Popen
    url: str
    log: Path

    def api(self) -> dict[str, dict]:
        body = json.loads(urllib.request.urlopen(f"{self.url}/api/v1/rules", timeout=5).read())
        return {rule["name"]: rule for rule in body["data"]["rules"]}

    def metrics(self) -> dict[str, list]:
        return samples(urllib.request.urlopen(f"{self.url}/metrics", timeout=5).read().decode())

    def metric(self, name: str, **labels: str) -> float | None:
        found = [s.value for s in self.metrics().get(name, []) if labels.items() <= s.labels.items()]
        return sum(found) if found else None

    def wait(self, condition: Callable[[dict[str, dict]], bool], timeout: float = 240.0) -> dict[str, dict]:
        """Poll the rules API until `condition(rules)` holds."""
        deadline, rules = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the daemon exited: {self.log_tail()}"
            try:
                rules = self.api()
                if condition(rules):
                    return rules
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"rules API never got there: {rules}\n{self.log_tail()}")

    def all_ok(self, count: int) -> dict[str, dict]:
        """Wait until every rule scores with a model."""
        return self.wait(lambda rules: len(rules) == count and all(
            r["state"] == "ok" and r["series"]["ready"] > 0 for r in rules.values()))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start(tmp_path: Path, prometheus: PrometheusServer, rules: str, **env: str) -> Daemon:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    port = free_port()
    environment = {**os.environ, "OA_WEB_LISTEN_ADDRESS": f"127.0.0.1:{port}", "OA_POOL_WORKERS": "1",
                   "OA_ARTIFACT_DIR": str(tmp_path / "models"), "OA_HISTORY_DIR": str(tmp_path / "history"),
                   "OA_RULES_POLL_INTERVAL": "0", **env}
    log = tmp_path / f"daemon-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "oa_exporter", "run", "--rules", str(rules_file), "--prometheus-url", prometheus.url,
         "--log.format", "json"], cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )
    return Daemon(process, f"http://127.0.0.1:{port}", log)


def artifacts(models: Path) -> dict[str, list[Path]]:
    """The finished model files per rule folder, newest last."""
    found: dict[str, list[Path]] = {}
    for path in sorted(models.glob(f"*/*{codec.SUFFIX}")):
        found.setdefault(path.parent.name, []).append(path)
    return found


def torn_models(models: Path) -> list[Path]:
    """Temporary files of model writes in progress (or cut short)."""
    return list(models.glob(f"*/.tmp-*{codec.SUFFIX}.*"))


def kill_while_writing(daemon: Daemon, models: Path, whole_first: int, rules: int, timeout: float = 240.0) -> None:
    """SIGKILL the daemon the moment a model write is in progress, once `whole_first` models are finished (or
    once every rule's model is, when each write was too quick to be seen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.process.poll() is None, daemon.log_tail()
        whole = sum(map(len, artifacts(models).values()))
        if (whole >= whole_first and torn_models(models)) or whole == rules:
            daemon.kill()
            return
        time.sleep(0.0005)
    raise AssertionError(f"the daemon stored no models in {timeout:.0f} s\n{daemon.log_tail()}")


def test_sigkill_while_models_are_written_then_restarts_load_them_without_refitting(prometheus, tmp_path):
    env = {"OA_ARTIFACT_KEY": KEY}
    rules = rules_text(BIG_RULES)
    for attempt in range(KILLS):  # the kill must land inside a write: retry when the write won the race
        workdir = tmp_path / f"attempt-{attempt}"
        workdir.mkdir()
        models = workdir / "models"
        first = start(workdir, prometheus, rules, **env)
        try:
            kill_while_writing(first, models, whole_first=2, rules=BIG_RULES)
        finally:
            first.stop()
        if torn_models(models):
            break
    else:
        raise AssertionError(f"{KILLS} kills, none inside a model write")

    # what the crash left: whole, verifiable models, and the torn write under a name no listing shows
    whole = artifacts(models)
    assert sum(map(len, whole.values())) >= 2
    for paths in whole.values():
        for path in paths:
            codec.decode(path.read_bytes(), str(path), KEY.encode())

    second = start(workdir, prometheus, rules, **env)
    try:
        api = second.all_ok(BIG_RULES)
        for name, rule in api.items():
            if name in whole:  # finished before the kill: loaded, not refit
                assert (rule["fits_since_start"], rule["artifact"]) == (0, f"{name}/{whole[name][-1].name}"), rule
            else:  # its write was torn (or never began): refit, never read
                assert rule["fits_since_start"] == 1, rule
        assert second.metric("oa_artifact_rejected_total") is None  # nothing torn was ever taken for a model
        assert len([s for s in second.metrics()["oa_anomaly_score"] if s.labels["rule"] == "r0"]) == SERIES
    finally:
        second.kill()  # a second crash, this time with every model stored

    third = start(workdir, prometheus, rules, **env)
    try:
        api = third.all_ok(BIG_RULES)
        assert {name: rule["fits_since_start"] for name, rule in api.items()} == {f"r{i}": 0 for i in range(BIG_RULES)}
        assert all(rule["series"]["ready"] == SERIES for rule in api.values())
        assert not third.metric("oa_fits_total")  # absent or 0
        assert third.metric("oa_artifact_rejected_total") is None
    finally:
        third.stop()


SMALL = '{instance=~"host-0.*"}'  # ten series: these tests are about which rules refit, not about size


def test_a_tampered_model_is_refused_and_a_changed_rule_alone_is_refit(prometheus, tmp_path):
    env = {"OA_ARTIFACT_KEY": KEY}
    first = start(tmp_path, prometheus, rules_text(4, SMALL, "{}"), **env)
    try:
        stored = first.all_ok(4)
    finally:
        first.stop()
    tampered = tmp_path / "models" / stored["r1"]["artifact"]
    blob = tampered.read_bytes()
    tampered.write_bytes(blob[:100] + bytes([blob[100] ^ 0x20]) + blob[101:])  # e.g. a label value changed

    changed = rules_text(4, SMALL, "{}", exprs={2: f"oa_test_requests{SMALL} * 30"})
    second = start(tmp_path, prometheus, changed, **env)
    try:
        api = second.all_ok(4)
        assert {name: rule["fits_since_start"] for name, rule in api.items()} == {"r0": 0, "r1": 1, "r2": 1, "r3": 0}
        assert second.metric("oa_artifact_rejected_total", rule="r1", reason="signature") == 1
        assert second.metric("oa_artifact_rejected_total", rule="r2", reason="fingerprint") == 1
        assert second.metric("oa_artifact_rejected_total") == 2
        assert urllib.request.urlopen(f"{second.url}/-/healthy", timeout=5).status == 200
        log = second.log.read_text()
        assert "signature does not match" in log and "another version of the rule" in log
    finally:
        second.stop()
    assert second.process.returncode == 0


def test_the_s3_store_on_a_real_server_keeps_models_across_a_crash(prometheus, tmp_path, seaweed, s3_env, s3_bucket):
    env = {"OA_ARTIFACT_STORE": "s3", "OA_S3_ENDPOINT": seaweed.url, "OA_S3_BUCKET": s3_bucket,
           "OA_S3_PREFIX": "prod/oa", "OA_ARTIFACT_KEY": KEY, **s3_env}
    rules = rules_text(3, SMALL, "{}")
    first = start(tmp_path, prometheus, rules, **env)
    try:
        stored = first.all_ok(3)
    finally:
        first.kill()
    keys = {o["Key"] for o in seaweed.client().list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert {f"prod/oa/{rule['artifact']}" for rule in stored.values()} | {f"prod/oa/r{i}/fit.json" for i in range(3)} \
        == keys
    assert not (tmp_path / "models").exists()

    second = start(tmp_path, prometheus, rules, **env)
    try:
        api = second.all_ok(3)
        assert {name: rule["fits_since_start"] for name, rule in api.items()} == {"r0": 0, "r1": 0, "r2": 0}
        assert {name: rule["artifact"] for name, rule in api.items()} == {n: r["artifact"] for n, r in stored.items()}
    finally:
        second.stop()


def test_wrong_s3_credentials_are_logged_clearly_and_the_daemon_scores_on(prometheus, tmp_path, seaweed, s3_env,
                                                                          s3_bucket):
    env = {**s3_env, "OA_ARTIFACT_STORE": "s3", "OA_S3_ENDPOINT": seaweed.url, "OA_S3_BUCKET": s3_bucket,
           "AWS_SECRET_ACCESS_KEY": "wrong"}
    daemon = start(tmp_path, prometheus, rules_text(1, SMALL, "{}"), **env)
    try:
        [rule] = daemon.all_ok(1).values()
        assert rule["artifact"] is None and rule["fits_since_start"] == 1
        assert daemon.metric("oa_anomaly_score", rule="r0", instance="host-00") > 1
        assert daemon.metric("oa_artifact_failures_total", rule="r0", operation="write") == 1
        assert "the secret access key is wrong" in daemon.log.read_text()
    finally:
        daemon.stop()
