"""Hot reload under a running daemon: edits, broken edits, removals, a ConfigMap-style symlink swap."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.integration.test_daemon_prometheus import scrape, value
from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration


def rule(name: str, expr: str = "oa_test_requests", extra: str = "") -> str:
    return f"""
groups:
  - name: {name}-group
    interval: 1s
    rules:
      - anomaly: {name}
        expr: {expr}
        step: 1m
        train: {{window: 3d}}
        min_history: 1d
{extra}"""


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    scenario = Scenario(end=time.time(), series=6, spiked=(0,), constant=None, gappy=None, short=None)
    with PrometheusServer(tmp_path_factory.mktemp("prom"), series=scenario.build()) as server:
        yield server


async def until(url: str, check: Callable[[dict], bool], timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await scrape(url)
        except aiohttp.ClientError:  # not listening yet
            found = {}
        if check(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached; last page has rules "
                                 f"{sorted({s.labels.get('rule') for s in found.get('oa_y', [])})}")
        await asyncio.sleep(0.3)


class Daemon:
    def __init__(self, prometheus, tmp_path: Path, rules: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.settings = Settings(
            rules=(str(rules),), prometheus_url=prometheus.url, web_listen_address=f"127.0.0.1:{self.port}",
            artifact_dir=str(tmp_path / "models"), pool_workers=1, rules_poll_interval=1.0, web_enable_lifecycle=True,
        )
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Daemon:
        self.task = asyncio.create_task(serve(self.settings, stop=self.stop))
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        assert await self.task == 0


def scored(rule_name: str) -> Callable[[dict], bool]:
    return lambda found: value(found, "oa_anomaly_score", rule=rule_name) is not None


async def test_edits_reload_only_what_changed_and_bad_edits_keep_the_old_rules(prometheus, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text(rule("requests"))
    async with Daemon(prometheus, tmp_path, rules) as daemon:
        await until(daemon.url, scored("requests"))

        (rules / "b.yaml").write_text(rule("subset", 'oa_test_requests{instance=~"host-0[0-2]"}'))
        found = await until(daemon.url, scored("subset"))
        assert value(found, "oa_fits_total", rule="requests") == 1  # adding a rule fits only that rule
        assert value(found, "oa_rules_loaded") == 2

        (rules / "b.yaml").write_text(rule("subset", 'oa_test_requests{instance=~"host-0[0-3]"}'))
        found = await until(daemon.url, lambda f: value(f, "oa_fits_total", rule="subset") == 2)
        assert value(found, "oa_fits_total", rule="requests") == 1

        (rules / "a.yaml").write_text(rule("requests") + "        stepp: 1m\n")
        found = await until(daemon.url, lambda f: value(f, "oa_rules_last_reload_successful") == 0)
        assert value(found, "oa_rules_reload_failures_total") >= 1
        await asyncio.sleep(1.5)
        found = await scrape(daemon.url)
        assert scored("requests")(found) and scored("subset")(found)  # the old rules keep serving
        async with aiohttp.ClientSession() as session, session.post(daemon.url.replace("metrics", "-/reload")) as r:
            assert r.status == 400
            assert f"{rules / 'a.yaml'}:" in await r.text() and "'stepp'" in await r.text()

        (rules / "a.yaml").write_text(rule("requests", extra="        labels: {team: sre}\n"))
        found = await until(daemon.url, lambda f: value(f, "oa_anomaly_score", rule="requests", team="sre") is not None)
        assert value(found, "oa_rules_last_reload_successful") == 1
        assert value(found, "oa_fits_total", rule="requests") == 1  # a label change keeps the model

        (rules / "b.yaml").unlink()
        found = await until(daemon.url, lambda f: not scored("subset")(f) and value(f, "oa_rules_loaded") == 1)
        assert value(found, "oa_rule_series", rule="subset") is None
        async with aiohttp.ClientSession() as session, session.post(daemon.url.replace("metrics", "-/reload")) as r:
            assert r.status == 200


def configmap(directory: Path, version: str, files: dict[str, str]) -> None:
    """Lay out files the way the kubelet does: a timestamped dir, ..data → it, each file → ..data/file."""
    payload = directory / f"..{version}"
    payload.mkdir()
    for name, text in files.items():
        (payload / name).write_text(text)
    link = directory / "..data_tmp"
    link.symlink_to(payload.name)
    os.replace(link, directory / "..data")  # the atomic swap
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


async def test_a_configmap_symlink_swap_is_picked_up(prometheus, tmp_path):
    rules = tmp_path / "configmap"
    rules.mkdir()
    configmap(rules, "2026_11_27_1", {"anomaly.yaml": rule("requests")})
    async with Daemon(prometheus, tmp_path, rules) as daemon:
        await until(daemon.url, scored("requests"))
        configmap(rules, "2026_11_27_2", {"anomaly.yaml": rule("requests", extra="        direction: above\n"
                                                                           "        labels: {swapped: 'yes'}\n")})
        found = await until(daemon.url, lambda f: value(f, "oa_y", rule="requests", swapped="yes") is not None)
        assert value(found, "oa_rules_last_reload_successful") == 1
