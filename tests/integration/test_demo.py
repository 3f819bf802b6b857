"""`oa-exporter demo` as a new user runs it: scores within a minute, the scheduled anomaly flagged."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from tests.integration.test_daemon_prometheus import samples
from tests.servers import free_port

pytestmark = pytest.mark.integration
RULES = {"demo_requests", "demo_cpu", "demo_queue_depth"}
FIRST_ANOMALY_ENDS = 30 + 240  # seconds after the start (oa_exporter/demo/signals.py): web-1's turn, then the next


def cpu_seconds(pid: int) -> float:
    """CPU time spent so far by a process and its descendants, those that exited included."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


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
        # within a minute of work: wall time on an idle machine; a loaded one stretches the wall time, not the work
        rules_scored: set = set()
        while time.monotonic() - started < 200 and rules_scored != RULES:
            work = cpu_seconds(process.pid)
            rules_scored = {s.labels["rule"] for s in scrape(url).get("oa_anomaly_score", [])}
            time.sleep(0.5)
        assert rules_scored == RULES
        assert work < 60, f"{work:.0f} s of CPU before every rule was scored"

        flagged: list = []
        while time.monotonic() - started < FIRST_ANOMALY_ENDS - 30 and not flagged:
            found = scrape(url).get("oa_anomaly_score", [])
            flagged = [s.labels for s in found if s.value > 1]
            time.sleep(1)
        # the first scheduled anomaly, and only it: checkout on web-1 more than doubles its request rate (the
        # demo's noise is bounded and its rules paging-grade, so calm series never page: tests/unit/test_demo_rules.py)
        assert len(flagged) == 1, flagged
        assert {"rule": "demo_requests", "service": "checkout", "instance": "web-1"}.items() <= flagged[0].items()
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0
    finally:
        process.kill()
    assert not list(tmp_path.iterdir())  # the demo leaves nothing behind in the working directory
    assert f"scores on http://127.0.0.1:{port}/metrics" in output
    assert 'anomaly: demo_requests{instance="web-1",job="shop",service="checkout"} score ' in output
    assert "OA_ARTIFACT_KEY is not set" not in output  # its temporary store signs with a throwaway key
