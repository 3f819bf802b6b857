"""A real Prometheus scrapes the daemon over TLS with basic auth (`--web.config.file`)."""

from __future__ import annotations

import asyncio
import time

import pytest

from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.certs import make_pki, web_config
from tests.servers import PrometheusServer, free_port

pytestmark = pytest.mark.integration

RULES = """
groups:
  - name: g
    interval: 1s
    rules:
      - anomaly: scrape_health
        expr: up
"""


async def test_prometheus_scrapes_the_daemon_over_tls_with_basic_auth(tmp_path):
    pki = make_pki(tmp_path / "pki")
    config = web_config(tmp_path / "web.yml", pki, {"prometheus": "scrape-secret"})
    port = free_port()
    job = {"job_name": "oa", "scheme": "https", "scrape_interval": "1s",
           "basic_auth": {"username": "prometheus", "password": "scrape-secret"},
           "tls_config": {"ca_file": str(pki.ca)}, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
    wrong = {**job, "job_name": "oa-wrong-password", "basic_auth": {"username": "prometheus", "password": "x"}}
    with PrometheusServer(tmp_path, extra_config={"scrape_configs": [job, wrong]},
                          scrape_interval="1s") as prometheus:
        (tmp_path / "rules.yaml").write_text(RULES)
        settings = Settings(rules=(str(tmp_path / "rules.yaml"),), prometheus_url=prometheus.url,
                            web_listen_address=f"127.0.0.1:{port}", web_config_file=str(config),
                            artifact_store="noop", pool_workers=1)
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, stop=stop))
        try:
            up = await _until_up(prometheus)
        finally:
            stop.set()
            assert await task == 0
    assert up == {"oa": "1", "oa-wrong-password": "0"}


async def _until_up(prometheus: PrometheusServer, timeout: float = 60.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(prometheus.query, 'up{job=~"oa.*"}')
        up = {r["metric"]["job"]: r["value"][1] for r in found["result"]}
        scraped = await asyncio.to_thread(prometheus.query, 'oa_rules_loaded{job="oa"}')
        if up.get("oa") == "1" and scraped["result"] and "oa-wrong-password" in up:
            return up
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus did not scrape the daemon over TLS: up = {up}")
        await asyncio.sleep(0.5)
