"""Secrets never leave: each one is set, the daemon runs against receivers that cannot be reached (so that every
error path logs), and logs at every level, /metrics, /api/v1/* and `check` output are searched for them."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp import web

from oa_exporter.adapters.tsdb.prometheus import PrometheusClient
from oa_exporter.bootstrap import artifact_store
from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.certs import web_config
from tests.servers import free_port

SECRETS = {
    "url": "url-secret-1", "token": "token-secret-2", "artifact": "artifact-secret-3", "rw_url": "rw-secret-4",
    "rw_password": "rw-file-secret-5", "web": "web-secret-6",
}
RULES = """
groups:
  - name: g
    interval: 1s
    rules:
      - anomaly: requests
        expr: sum(rate(http_requests_total[5m]))
"""


async def test_no_secret_reaches_logs_metrics_or_the_api(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    closed = free_port()  # nothing listens there: every query and write fails and says so
    (tmp_path / "token").write_text(SECRETS["token"])
    (tmp_path / "rw-password").write_text(SECRETS["rw_password"])
    (tmp_path / "rules.yaml").write_text(RULES)
    port = free_port()
    settings = Settings(
        rules=(str(tmp_path / "rules.yaml"),), web_listen_address=f"127.0.0.1:{port}",
        prometheus_url=f"http://oa:{SECRETS['url']}@127.0.0.1:{closed}", query_retries=1,
        bearer_token_file=str(tmp_path / "token"), artifact_key=SECRETS["artifact"],
        artifact_dir=str(tmp_path / "models"), output_mode="both",
        remote_write_urls=(f"http://rw:{SECRETS['rw_url']}@127.0.0.1:{closed}/api/v1/write",),
        remote_write_basic_auth_user="rw", remote_write_basic_auth_password_file=str(tmp_path / "rw-password"),
        remote_write_queue_dir=str(tmp_path / "queue"), remote_write_max_backoff=0.2,
        web_config_file=str(web_config(tmp_path / "web.yml", users={"alice": SECRETS["web"]})), pool_workers=1,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    answers = []
    try:
        started = time.monotonic()  # a few cycles of failing queries and writes (longer on a loaded machine)
        while time.monotonic() - started < 4 or "cannot reach the TSDB" not in caplog.text:
            assert time.monotonic() - started < 120, "no failing query within 120 s"
            await asyncio.sleep(0.2)
        auth = {"Authorization": "Basic " + base64.b64encode(f"alice:{SECRETS['web']}".encode()).decode()}
        async with aiohttp.ClientSession(headers=auth) as session:
            for path in ("/metrics", "/api/v1/rules", "/-/ready"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    answers.append(await response.text())
    finally:
        stop.set()
        assert await task == 0
    assert "cannot reach the TSDB" in caplog.text  # the error paths did run
    assert '"requests"' in answers[1]
    seen = caplog.text + "".join(answers) + "".join(repr(r.args) for r in caplog.records)
    for name, secret in SECRETS.items():
        assert secret not in seen, name


def test_check_prints_no_secret(tmp_path):
    (tmp_path / "rules.yaml").write_text(RULES + "        labels: {a: [1]}\n")
    env = {"OA_PROMETHEUS_URL": f"http://oa:{SECRETS['url']}@127.0.0.1:1", "OA_ARTIFACT_KEY": SECRETS["artifact"],
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "oa_exporter", "check", str(tmp_path / "rules.yaml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "rules.yaml:8" in done.stderr
    for secret in SECRETS.values():
        assert secret not in done.stdout + done.stderr


async def test_credentials_in_the_tsdb_url_are_sent_but_not_shown(tmp_path):
    seen = []

    async def query(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

    app = web.Application()
    app.router.add_post("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = PrometheusClient(f"http://oa:{SECRETS['url']}@127.0.0.1:{port}")
    try:
        await client.query("up", 1_700_000_000)
    finally:
        await client.close()
        await runner.cleanup()
    assert seen == ["Basic " + base64.b64encode(f"oa:{SECRETS['url']}".encode()).decode()]
    assert client.url == f"http://127.0.0.1:{port}"


def test_require_signature_refuses_a_store_without_a_key(tmp_path, caplog):
    with pytest.raises(ValueError, match="require-signature"):
        artifact_store(Settings(artifact_dir=str(tmp_path), artifact_require_signature=True))
    artifact_store(Settings(artifact_dir=str(tmp_path)))
    assert any(r.levelno == logging.WARNING and "is unsigned" in r.getMessage() for r in caplog.records)


def test_the_compose_demo_ships_no_artifact_key():
    from pathlib import Path

    import yaml

    compose = yaml.safe_load((Path(__file__).parents[2] / "deploy" / "compose" / "compose.yaml").read_text())
    keys = [service.get("environment", {}).get("OA_ARTIFACT_KEY") for service in compose["services"].values()]
    assert any(keys) and all(key is None or key.startswith("${OA_ARTIFACT_KEY:?") for key in keys)
