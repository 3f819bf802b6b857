"""History read once, through a counting proxy in front of a real Prometheus: 20 series, a 3-day window at a
1-minute step, a refit every 2 minutes reads a few times what arrived, and scores as a full-window refit does."""

from __future__ import annotations

import time

import numpy as np
import pytest

from oa_exporter.adapters.stores.history_local import LocalHistoryStore
from oa_exporter.adapters.stores.noop import NoopArtifactStore
from oa_exporter.adapters.telemetry.null import NullTelemetry
from oa_exporter.adapters.tsdb.prometheus import PrometheusClient
from oa_exporter.bootstrap import engine_registry
from oa_exporter.core.domain import Rule
from oa_exporter.core.presets import PRESETS
from oa_exporter.core.services.history import HistoryReader
from oa_exporter.core.services.trainer import Trainer
from tests.proxy import CountingProxy
from tests.servers import PrometheusServer
from tests.synthetic import Scenario
from tests.unit.fakes import FakeClock, InlineDispatcher

pytestmark = pytest.mark.integration
DAY = 86400.0
RULE = Rule("load", "g", "oa_test_requests", 60.0, PRESETS["default"].model, train_window=3 * DAY,
            train_every=120.0, level=PRESETS["default"].level, min_history=DAY)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    scenario = Scenario(end=float(int(time.time()) // 60 * 60), series=20, days=3.1)
    with PrometheusServer(tmp_path_factory.mktemp("prom"), series=scenario.build()) as server:
        server.scenario = scenario
        yield server


async def test_refits_read_what_arrived_and_score_as_full_window_refits(prometheus, tmp_path):
    first_fit = prometheus.scenario.end - 20 * 60  # the refits replay the last 20 minutes
    clock, engines = FakeClock(first_fit), engine_registry()
    proxy = await CountingProxy(prometheus.url).start()
    via_proxy, direct = PrometheusClient(proxy.url), PrometheusClient(prometheus.url)
    reader = HistoryReader(via_proxy, LocalHistoryStore(tmp_path, 2**30), 120.0, clock)
    kept = Trainer(via_proxy, engines, NoopArtifactStore(), InlineDispatcher(), NullTelemetry(), clock, history=reader)
    full = Trainer(direct, engines, NoopArtifactStore(), InlineDispatcher(), NullTelemetry(), clock)
    engine = engines[RULE.model.engine]
    try:
        await kept.train(RULE, first_fit)
        whole = proxy.counts.range_samples  # the first fit reads the window once (fewer where series have gaps)
        assert 0.7 * 20 * 4320 < whole <= 20 * 4320
        proxy.counts.reset()
        refits = 9
        for refit in range(1, refits + 1):
            clock.now = first_fit + 120 * refit
            models = [await trainer.train(RULE, clock.now) for trainer in (kept, full)]
            bands = [engine.predict(model, model.window_end + 60, 30, RULE.level) for model in models]
            assert models[0].keys == models[1].keys or set(models[0].keys) == set(models[1].keys)
            order = [models[1].keys.index(key) for key in models[0].keys]
            for name in ("yhat", "lower", "upper"):
                np.testing.assert_allclose(getattr(bands[0], name), getattr(bands[1], name)[order], rtol=0, atol=1e-9)
    finally:
        await via_proxy.close()
        await direct.close()
        await proxy.close()
    arrived = 20 * 2 * refits
    assert proxy.counts.range_samples <= 3 * arrived, (proxy.counts.range_samples, arrived)
    print(f"after the first fit: {proxy.counts.range_samples} samples read for {arrived} that arrived "
          f"({proxy.counts.range_samples / arrived:.2f}x; full-window refits would read {whole * refits}, "
          f"{whole / 40:.0f}x)")
