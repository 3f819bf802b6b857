"""Shards beside a real Prometheus: three replicas split a rule's series, a fourth joins on a reload."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from oa_exporter.entrypoints.daemon import serve
from oa_exporter.settings import Settings
from tests.integration.test_daemon_prometheus import scrape
from tests.servers import PrometheusServer, free_port
from tests.synthetic import Scenario

pytestmark = pytest.mark.integration
SERIES = 60
RULES = """
groups:
  - name: synthetic
    interval: 1s
    rules:
      - anomaly: requests
        expr: oa_test_requests
        step: 1m
        train: {window: 3d, every: 1d}
        min_history: 1d
"""


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    scenario = Scenario(end=time.time(), series=SERIES, short=None)
    with PrometheusServer(tmp_path_factory.mktemp("prom"), series=scenario.build()) as server:
        yield server


class Replica:
    """One daemon of the StatefulSet: its own port and index, the shared count file and artifact store."""

    def __init__(self, prometheus: PrometheusServer, tmp_path: Path, index: int):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        settings = Settings(
            rules=(str(tmp_path / "rules.yaml"),), prometheus_url=prometheus.url,
            web_listen_address=f"127.0.0.1:{port}", artifact_dir=str(tmp_path / "models"), pool_workers=1,
            query_retries=1, shard_count_file=str(tmp_path / "shards"), shard_index=index,
            remote_write_queue_dir=str(tmp_path / f"queue-{index}"), web_enable_lifecycle=True,
        )
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(serve(settings, stop=self.stop))

    async def exported(self) -> dict[str, float]:
        """instance → its fits so far, for every series this replica exports."""
        found = await scrape(f"{self.url}/metrics")
        return {s.labels["instance"]: s.value for s in found.get("oa_yhat", []) if s.labels.get("rule") == "requests"}

    async def fits(self) -> float:
        found = await scrape(f"{self.url}/metrics")
        return next(s.value for s in found["oa_fits_total"] if s.labels["rule"] == "requests")

    async def cycles(self) -> float:
        """Scoring cycles of the group finished so far."""
        found = await scrape(f"{self.url}/metrics")
        return next((s.value for s in found.get("oa_cycle_duration_seconds_count", [])
                     if s.labels["group"] == "synthetic"), 0.0)

    async def through_a_cycle(self, timeout: float = 120.0) -> None:
        """Wait until a whole cycle started after this call has finished (one may be under way now)."""
        deadline = time.monotonic() + timeout
        before = await self.cycles()
        while await self.cycles() < before + 2:
            assert time.monotonic() < deadline, f"{self.url}: no whole cycle within {timeout}s"
            await asyncio.sleep(0.3)

    async def modelled(self, timeout: float = 180.0) -> set[str]:
        """The series it scores once its first model is in (waits for it; long on a loaded machine)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with_model = set(await self._ignoring_startup())
            if with_model:
                await self.through_a_cycle()  # the page of a whole cycle
                return set(await self.exported())
            await asyncio.sleep(0.5)
        raise AssertionError(f"{self.url}: no forecasts within {timeout}s")

    async def reload(self) -> None:
        async with aiohttp.ClientSession() as session, session.post(f"{self.url}/-/reload") as response:
            assert response.status == 200, await response.text()

    async def close(self) -> None:
        self.stop.set()
        assert await self.task == 0

    async def _ignoring_startup(self) -> dict[str, float]:
        try:
            return await self.exported()
        except aiohttp.ClientError:
            return {}


async def test_three_shards_export_every_series_once_and_a_fourth_moves_a_quarter(prometheus, tmp_path):
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "shards").write_text("3\n")
    replicas = [Replica(prometheus, tmp_path, i) for i in range(3)]
    try:
        owned = [await replica.modelled() for replica in replicas]
        assert sorted(sum(map(list, owned), [])) == sorted(f"host-{i:02d}" for i in range(SERIES))

        (tmp_path / "shards").write_text("4\n")
        for replica in replicas:
            await replica.reload()
        replicas.append(Replica(prometheus, tmp_path, 3))
        fourth = await replicas[3].modelled()
        for replica in replicas[:3]:
            await replica.through_a_cycle()  # every old replica through a cycle under the new layout
        now = [set(await replica.exported()) for replica in replicas[:3]] + [fourth]
        assert sorted(sum(map(list, now), [])) == sorted(f"host-{i:02d}" for i in range(SERIES))
        assert all(now[i] <= owned[i] for i in range(3))  # the series that moved left their old shard's /metrics
        assert len(fourth) <= 0.35 * SERIES
        assert [await replica.fits() for replica in replicas[:3]] == [1, 1, 1]  # the rest kept their models
        histories = sorted(p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".history"))
        assert histories == [".history", ".history-shard-1", ".history-shard-2", ".history-shard-3"]
    finally:
        for replica in replicas:
            await replica.close()
