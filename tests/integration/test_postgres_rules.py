"""The postgres config store on the real PostgreSQL (127.0.0.1:5432, database `test`, a schema of its own):
two replicas share the rules; an API write on one reaches the other within 5 s; export/import round trip."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest
import yaml

from oa_exporter.entrypoints.cli import main
from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration

SERVER = "postgresql://postgres@127.0.0.1:5432/test"
RULES = """\
groups:
  - name: synthetic
    interval: 2s
    rules:
      - anomaly: requests
        expr: oa_test_requests
        step: 1m
        train: {window: 3d, every: 1d}
        min_history: 1d
"""
NEW_RULE = {"anomaly": "requests_fast", "expr": 'oa_test_requests{instance=~"host-0[0-4]"}', "step": "1m",
            "train": {"window": "2d", "every": "1d"}, "min_history": "1d"}


@pytest.fixture
def dsn() -> Iterator[str]:
    """A schema of this test's own on the shared server, dropped afterwards."""
    schema = f"oa_rules_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{SERVER}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    with PrometheusServer(tmp_path_factory.mktemp("prom"), series=Scenario(end=time.time()).build()) as server:
        yield server


@contextlib.asynccontextmanager
async def replica(prometheus: PrometheusServer, dsn: str, tmp_path: Path, name: str):
    port = free_port()
    settings = Settings(config_store="postgres", config_postgres_dsn=dsn, prometheus_url=prometheus.url,
                        web_listen_address=f"127.0.0.1:{port}", artifact_dir=str(tmp_path / name),
                        pool_workers=1, query_retries=1, web_enable_rules_api=True, rules_poll_interval=30.0)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    base = f"http://127.0.0.1:{port}"
    try:
        await _until(lambda: _rule_names(base), 30.0)
        yield base
    finally:
        stop.set()
        assert await task == 0


async def _rule_names(base: str) -> list[str] | None:
    with contextlib.suppress(aiohttp.ClientError):
        async with aiohttp.ClientSession() as session, session.get(f"{base}/api/v1/rules") as response:
            if response.status == 200:
                return [r["name"] for r in (await response.json())["data"]["rules"]]
    return None


async def _until(probe, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def _import(dsn: str, path: Path) -> int:
    return main(["rules", "import", "--config.postgres-dsn", dsn, str(path)])


async def test_a_rule_written_on_one_replica_reaches_the_other_within_5_seconds(prometheus, dsn, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    assert _import(dsn, rules) == 0
    async with replica(prometheus, dsn, tmp_path, "a") as a, replica(prometheus, dsn, tmp_path, "b") as b:
        assert await _rule_names(a) == await _rule_names(b) == ["requests"]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{a}/api/v1/rules/requests") as response:
                version = response.headers["ETag"]
            written = time.monotonic()
            async with session.put(f"{a}/api/v1/rules/requests_fast", json={"group": "fast", "rule": NEW_RULE}) as r:
                assert r.status == 200, await r.text()
            await _until(lambda: _has(b, "requests_fast"), 5.0)
            reached = time.monotonic() - written
            print(f"the write reached the other replica in {reached:.3f} s")
            async with session.put(f"{a}/api/v1/rules/requests", json={"group": "synthetic", "rule": {
                    **yaml.safe_load(RULES)["groups"][0]["rules"][0], "labels": {"edited": "yes"}}},
                    headers={"If-Match": version}) as first:
                assert first.status == 200
            async with session.put(f"{b}/api/v1/rules/requests", json={"group": "synthetic", "rule": {
                    **yaml.safe_load(RULES)["groups"][0]["rules"][0], "labels": {"edited": "no"}}},
                    headers={"If-Match": version}) as second:
                assert second.status == 409  # the other replica's write won: this one is stale
            async with session.put(f"{b}/api/v1/rules/bad", json={"group": "fast", "rule": {
                    "expr": "rate(x[5m]", "step": "1m"}}) as invalid:
                problems = (await invalid.json())["problems"]
                assert invalid.status == 422
    assert reached < 5.0
    assert len(problems) == 1 and problems[0].startswith("postgresql:oa_rules")
    assert problems[0].endswith('rule "bad": invalid PromQL in \'expr\': unclosed left parenthesis')

    out = tmp_path / "exported.yaml"
    assert main(["rules", "export", "--config.postgres-dsn", dsn, "--out", str(out)]) == 0
    exported = yaml.safe_load(out.read_text())
    assert [g["name"] for g in exported["groups"]] == ["synthetic", "fast"]
    assert exported["groups"][0]["interval"] == "2s"
    assert exported["groups"][0]["rules"][0]["labels"] == {"edited": "yes"}
    assert exported["groups"][1]["rules"] == [NEW_RULE]
    assert main(["check", str(out)]) == 0
    assert _import(dsn, out) == 0  # the round trip is a fixed point
    again = tmp_path / "again.yaml"
    assert main(["rules", "export", "--config.postgres-dsn", dsn, "--out", str(again)]) == 0
    assert again.read_text() == out.read_text()


def test_an_invalid_import_changes_nothing(dsn, tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(RULES)
    bad.write_text(RULES.replace("step: 1m", "step: often"))
    assert _import(dsn, good) == 0
    assert _import(dsn, bad) == 1
    out = tmp_path / "out.yaml"
    assert main(["rules", "export", "--config.postgres-dsn", dsn, "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(RULES)


async def _has(base: str, name: str) -> bool:
    return name in (await _rule_names(base) or [])
