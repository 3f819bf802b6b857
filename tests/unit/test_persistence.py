"""Models that survive: what a restart loads, what it refuses (and counts), what GET /api/v1/rules says,
retention and fit records — the daemon wired through bootstrap() with fakes."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from oa_exporter.adapters.engines.statsforecast import StatsForecastEngine
from oa_exporter.adapters.stores.local import LocalArtifactStore
from oa_exporter.adapters.stores.noop import NoopArtifactStore
from oa_exporter.core.errors import ArtifactError
from oa_exporter.entrypoints.web import make_app
from tests.unit.fakes import DAY, value
from tests.unit.harness import END, write_rules
from tests.unit.test_runner import REQUESTS, RULES, SPIKED, fake_tsdb, stored_models

KEY = b"only the daemons know this"
READY_10 = {"ready": 10, "not-ready": 0, "failed": 0}


def spiked(daemon) -> set[str]:
    return {host for host, score in daemon.scores("requests").items() if score > 1}


async def test_the_rules_api_follows_a_rule_from_pending_to_fitted(start_daemon, tmp_path):
    daemon = await start_daemon(RULES, fake_tsdb())
    before = daemon.api()
    assert [(s.name, s.group, s.state, s.fits_since_start) for s in before.values()] == [
        ("requests", "web", "pending", 0), ("errors", "web", "pending", 0)]
    assert before["requests"].next_fit == END and before["requests"].last_fit is None

    daemon.dispatcher.gate = asyncio.Event()
    await daemon.cycle()
    assert daemon.api()["requests"].state == "fitting"
    assert daemon.api()["requests"].next_fit is None  # while a fit runs
    daemon.dispatcher.gate.set()
    await daemon.fits_done()
    await daemon.cycle()
    requests = daemon.api()["requests"]
    assert (requests.state, requests.series, requests.fits_since_start) == ("ok", READY_10, 1)
    assert (requests.last_fit, requests.next_fit) == (END, END + DAY)
    assert (tmp_path / "models" / requests.artifact).is_file()
    assert requests.error is None


async def test_a_restart_loads_every_model_and_refits_nothing(start_daemon):
    first = await start_daemon(RULES, fake_tsdb())
    await first.trained()
    artifacts = {name: status.artifact for name, status in first.api().items()}
    await first.close()

    second = await start_daemon(RULES, fake_tsdb(), now=END + 600)
    await second.trained()
    api = second.api()
    assert {name: s.fits_since_start for name, s in api.items()} == {"requests": 0, "errors": 0}
    assert {name: s.artifact for name, s in api.items()} == artifacts
    assert (api["requests"].state, api["requests"].last_fit, api["requests"].series) == ("ok", END, READY_10)
    assert second.dispatcher.jobs == 0
    assert spiked(second) == set()  # scored with the loaded model, ten minutes on: the spike is over


async def test_with_a_key_a_tampered_model_is_refused_refit_and_counted(start_daemon, tmp_path):
    store = LocalArtifactStore(tmp_path / "models", KEY)
    first = await start_daemon(RULES, fake_tsdb(), store=store)
    await first.trained()
    tampered = tmp_path / "models" / first.api()["requests"].artifact
    blob = tampered.read_bytes()
    tampered.write_bytes(blob[:-100] + bytes([blob[-100] ^ 1]) + blob[-99:])

    second = await start_daemon(RULES, fake_tsdb(), store=LocalArtifactStore(tmp_path / "models", KEY))
    await second.trained()
    assert second.rejected("requests", "signature") == 1
    assert {name: s.fits_since_start for name, s in second.api().items()} == {"requests": 1, "errors": 0}
    assert second.healthy("requests") == 1 and spiked(second) == set(SPIKED)

    third = await start_daemon(RULES, fake_tsdb(), store=LocalArtifactStore(tmp_path / "models", KEY))
    await third.trained()  # the refit model was stored signed: loaded, not refused
    assert third.api()["requests"].fits_since_start == 0
    assert third.rejected("requests", "signature") == 0


class _Marker:
    """A pickle that, when loaded, leaves a directory behind: proof that a forged payload ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


async def _forge(tmp_path, daemon, payload: bytes) -> None:
    """What an attacker with write access to the store but no key does: a newer, unsigned model."""
    writer = LocalArtifactStore(tmp_path / "models")
    for rule in daemon.app.rules.rules:
        stored, _ = await writer.get(daemon.api()[rule.name].artifact)
        await writer.put(replace(stored, trained_at=stored.trained_at + 1), payload)
    await writer.close()


async def test_with_a_key_a_forged_model_is_refused_before_it_is_unpickled(start_daemon, tmp_path):
    first = await start_daemon(RULES, fake_tsdb(), store=LocalArtifactStore(tmp_path / "models", KEY))
    await first.trained()
    import pickle

    await _forge(tmp_path, first, pickle.dumps(_Marker(str(tmp_path / "PWNED"))))
    second = await start_daemon(RULES, fake_tsdb(), store=LocalArtifactStore(tmp_path / "models", KEY))
    await second.trained(END + 60)
    assert not (tmp_path / "PWNED").exists()
    assert second.rejected("requests", "signature") == 1
    assert second.fits("requests") == 1 and second.healthy("requests") == 1


async def test_without_a_key_the_store_is_trusted_like_the_code(start_daemon, tmp_path):
    """What the README warns about: with no OA_ARTIFACT_KEY, whoever writes the store runs code in the daemon."""
    first = await start_daemon(RULES, fake_tsdb())
    await first.trained()
    import pickle

    await _forge(tmp_path, first, pickle.dumps(_Marker(str(tmp_path / "PWNED"))))
    second = await start_daemon(RULES, fake_tsdb())
    await second.trained(END + 60)
    assert (tmp_path / "PWNED").exists()
    assert second.rejected("requests", "unreadable") == 1  # it was not a model: refit all the same
    assert second.fits("requests") == 1


async def test_a_model_fitted_under_other_library_versions_is_refit(start_daemon, monkeypatch):
    first = await start_daemon(RULES, fake_tsdb())
    await first.trained()
    upgraded = {**StatsForecastEngine().versions, "statsforecast": "99.0"}
    monkeypatch.setattr(StatsForecastEngine, "versions", property(lambda self: upgraded))
    second = await start_daemon(RULES, fake_tsdb())
    await second.trained()
    assert second.rejected("requests", "version") == 1 and second.rejected("errors", "version") == 1
    assert second.fits("requests") == 1 and second.fits("errors") == 1


async def test_changing_one_rule_refits_only_that_rule_across_a_restart(start_daemon, tmp_path):
    first = await start_daemon(RULES, fake_tsdb())
    await first.trained()
    await first.close()
    changed = REQUESTS.replace("rate(", "irate(")
    tsdb = fake_tsdb()
    tsdb.data[changed] = tsdb.data[REQUESTS]
    second = await start_daemon(RULES.replace(REQUESTS, changed), tsdb)
    await second.trained()
    assert {name: s.fits_since_start for name, s in second.api().items()} == {"requests": 1, "errors": 0}
    assert second.rejected("requests", "fingerprint") == 1
    assert second.rejected("errors", "fingerprint") == 0


async def test_only_the_newest_models_of_a_rule_are_kept(start_daemon, tmp_path):
    daemon = await start_daemon(RULES, fake_tsdb(), artifact_keep=2)
    for day in range(4):
        await daemon.trained(END + day * DAY)
    assert daemon.fits("requests") == 4
    names = [p.name for p in stored_models(tmp_path) if p.parent.name == "requests"]
    assert len(names) == 2 and names[-1] == daemon.api()["requests"].artifact.split("/")[1]


async def test_the_noop_store_keeps_models_for_the_life_of_the_process(start_daemon):
    first = await start_daemon(RULES, fake_tsdb(), store=NoopArtifactStore())
    await first.trained()
    assert first.api()["requests"].artifact.startswith("requests/")
    second = await start_daemon(RULES, fake_tsdb(), store=NoopArtifactStore())  # a restart
    await second.trained()
    assert second.api()["requests"].fits_since_start == 1
    assert spiked(second) == set(SPIKED)


async def test_a_failed_fit_is_recorded_beside_the_models_with_the_last_good_one(start_daemon, tmp_path):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()
    good = daemon.api()["requests"].artifact
    daemon.dispatcher.fail = True
    await daemon.trained(END + DAY)  # the daily refit fails; yesterday's model keeps scoring
    record = json.loads((tmp_path / "models" / "requests" / "fit.json").read_text())
    assert (record["ok"], record["artifact"], record["trained_at"]) == (False, good, END)
    assert "ran out of memory" in record["error"] and record["series"] == READY_10
    api = daemon.api()["requests"]
    assert (api.state, api.artifact, api.fits_since_start) == ("error", good, 2)
    assert "ran out of memory" in api.error


async def test_another_replica_sees_the_last_fit_from_the_record(start_daemon):
    first = await start_daemon(RULES, fake_tsdb())
    await first.trained()
    other = await start_daemon(RULES, fake_tsdb(), now=END + DAY - 60)
    await other.app.runner.trainer.load(other.app.rules.rules[0], END + DAY - 60)  # what its first cycle does
    requests = other.api()["requests"]
    assert (requests.state, requests.last_fit, requests.series) == ("pending", END, READY_10)


class _BrokenStore(NoopArtifactStore):
    """A store whose disk is full."""

    async def put(self, model, payload):
        raise ArtifactError("/models: No space left on device")


async def test_a_store_that_cannot_write_leaves_the_daemon_scoring_and_says_so(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb(), store=_BrokenStore())
    page = await daemon.trained()
    assert spiked(daemon) == set(SPIKED) and daemon.healthy("requests") == 1
    assert value(page, "oa_artifact_failures_total", rule="requests", operation="write") == 1
    assert daemon.api()["requests"].artifact is None


async def test_get_api_v1_rules_serves_it_as_json(start_daemon):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()

    async def reload() -> bool:
        return True

    app = make_app(daemon.app.page, lambda: True, reload, daemon.app.rules_status)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/api/v1/rules")
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "success"
    [requests, errors] = body["data"]["rules"]
    assert {"name", "group", "state", "series", "last_fit", "next_fit", "fits_since_start", "artifact"} <= set(requests)
    assert (requests["name"], requests["group"], requests["state"]) == ("requests", "web", "ok")
    assert (requests["series"], requests["fits_since_start"], requests["last_fit"]) == (READY_10, 1, END)
    assert errors["series"] == {"ready": 3, "not-ready": 0, "failed": 0}


@pytest.mark.parametrize("removed", ["errors"])
async def test_a_removed_rule_leaves_the_api(start_daemon, tmp_path, removed):
    daemon = await start_daemon(RULES, fake_tsdb())
    await daemon.trained()
    write_rules(tmp_path / "rules.yaml", RULES.split("      - anomaly: errors")[0])
    assert await daemon.load()
    assert list(daemon.api()) == ["requests"]
