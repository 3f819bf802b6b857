"""A TSDB that cannot be reached: one clear line at a bounded rate, and not ready until it has answered."""

from __future__ import annotations

import logging

from aiohttp import web

from oa_exporter.adapters.dispatch.inline import InlineDispatcher
from oa_exporter.adapters.tsdb.prometheus import PrometheusClient
from oa_exporter.bootstrap import bootstrap
from oa_exporter.settings import Settings
from tests.servers import free_port
from tests.unit.harness import END, write_rules

RULES = """
groups:
  - name: g
    interval: 15s
    rules:
      - {anomaly: requests, expr: requests}
      - {anomaly: errors, expr: errors}
"""


async def cycles(tmp_path, url: str, count: int):
    settings = Settings(rules=(str(write_rules(tmp_path / "rules.yaml", RULES)),), artifact_store="noop")
    app = bootstrap(settings, tsdb=PrometheusClient(url, retries=3, backoff=0.001), dispatcher=InlineDispatcher(),
                    clock=lambda: END)
    assert await app.load_rules()
    await app.runner.pause()
    assert not app.ready()  # the rules are loaded, but the TSDB has not answered yet
    for i in range(count):
        await app.runner.cycle(app.rules.groups[0], END + 15 * i)
    return app


async def test_an_unreachable_tsdb_is_one_clear_line_at_a_bounded_rate(tmp_path, caplog):
    url = f"http://127.0.0.1:{free_port()}"
    caplog.set_level(logging.INFO)
    app = await cycles(tmp_path, url, 30)  # 30 cycles of 2 rules, 4 attempts per query
    try:
        assert not app.ready()
        status = {rule.name: rule for rule in app.rules_status()}
    finally:
        await app.close()
    lines = [r.getMessage() for r in caplog.records if "TSDB" in r.getMessage() and "training" not in r.getMessage()]
    assert f"cannot reach the TSDB at {url}: connection refused" in lines[0]
    assert len(lines) == 3, lines  # one retry line, one scoring line per rule: within a minute, no repeats
    assert status["requests"].state == "error" and "cannot reach the TSDB" in (status["requests"].error or "")


async def test_the_daemon_is_ready_once_the_tsdb_has_answered(tmp_path, aiohttp_server):
    async def query(request: web.Request) -> web.Response:
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

    app = web.Application()
    app.router.add_post("/api/v1/query", query)
    server = await aiohttp_server(app)
    daemon = await cycles(tmp_path, str(server.make_url("")), 1)
    try:
        assert daemon.ready()
    finally:
        await daemon.close()
