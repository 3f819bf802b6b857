"""`oa-exporter demo` as a new user runs it: scores within a minute, the scheduled anomaly flagged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.integration.test_daemon_prometheus import samples
from tests.servers import free_port

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict:
    try:
        return samples(urllib.request.urlopen(url, timeout=2).read().decode())
    except OSError:
        return {}


def test_demo_scores_every_rule_and_flags_the_injected_anomaly(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "oa_exporter", "demo", "--web.listen-address",
                                f"127.0.0.1:{port}"], cwd=tmp_path, env=os.environ.copy(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rules_scored: set = set()
        while time.monotonic() - started < 60 and rules_scored != {"demo_requests", "demo_cpu", "demo_queue_depth"}:
            rules_scored = {s.labels["rule"] for s in scrape(url).get("oa_anomaly_score", [])}
            time.sleep(0.5)
        assert rules_scored == {"demo_requests", "demo_cpu", "demo_queue_depth"}
        assert time.monotonic() - started < 60

        flagged: list = []
        while time.monotonic() - started < 100 and not flagged:
            found = scrape(url).get("oa_anomaly_score", [])
            flagged = [s.labels for s in found if s.value > 1]
            time.sleep(1)
        # the first scheduled anomaly: checkout on web-1 more than doubles its request rate
        assert {"rule": "demo_requests", "service": "checkout", "instance": "web-1"}.items() <= flagged[0].items()
        calm = [s for s in found if s.labels.get("service") != "checkout" or s.labels.get("instance") != "web-1"]
        assert sum(s.value < 1 for s in calm) >= 0.9 * len(calm)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
    assert not list(tmp_path.iterdir())  # the demo leaves nothing behind in the working directory
