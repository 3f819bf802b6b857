"""The dask dispatcher on a real Dask cluster on loopback (`dask scheduler`, two `dask worker` processes)."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed", reason="needs the dask extra: pip install 'oa-exporter[dask]'")

from oa_exporter.adapters.dispatch.dask import DaskDispatcher
from oa_exporter.adapters.stores.local import LocalArtifactStore
from oa_exporter.adapters.telemetry.prometheus_client import PrometheusTelemetry
from oa_exporter.bootstrap import App, bootstrap, engine_registry
from oa_exporter.core.domain import Model, ModelSpec, SeriesMatrix
from oa_exporter.core.errors import DispatchError
from oa_exporter.core.services.trainer import fit_rule
from oa_exporter.settings import Settings
from tests.dask_cluster import DaskCluster
from tests.unit.fakes import DAY, FakeClock, FakeTsdb, seasonal_series, value, values
from tests.unit.harness import END

pytestmark = pytest.mark.integration
EXPR = "sum by (instance) (rate(requests_total[5m]))"


def history(series: int = 8, days: int = 3) -> SeriesMatrix:
    rng = np.random.default_rng(3)
    points = days * 288
    t = np.arange(points) * 300.0
    values = 100 + 20 * np.sin(2 * np.pi * t / DAY)[None, :] + rng.normal(0, 1, (series, points))
    keys = [f'{{"instance":"h{i}"}}'.encode() for i in range(series)]
    return SeriesMatrix(keys, [{"instance": f"h{i}"} for i in range(series)], END - t[-1], 300.0, values)


def slow_fit_on(marker: str, seconds: float) -> int:
    """A job that says where it started (its worker's pid), then works for a while."""
    import time

    Path(marker + ".tmp").write_text(str(os.getpid()))
    os.replace(marker + ".tmp", marker)  # whole or not there: the test reads it as soon as it exists
    time.sleep(seconds)
    return os.getpid()


async def test_a_fit_on_the_cluster_gives_the_local_fit_and_runs_on_a_worker(dask_cluster):
    engine = engine_registry()["statsforecast"]
    spec, data = ModelSpec("statsforecast", "SeasonalProfile"), history()
    telemetry = PrometheusTelemetry()
    dispatcher = DaskDispatcher(dask_cluster.address, timeout=120, telemetry=telemetry)
    try:
        remote = await dispatcher.run(engine.fit, data, spec, 99.0)
        where = await dispatcher.run(os.getpid)
    finally:
        await dispatcher.close()
    local = engine.fit(data, spec, 99.0)
    model = Model("r", "f", engine.name, data.keys, data.labels, END, data.start, END, 300.0, remote)
    ours = engine.predict(model, END + 300, 12, 99.0)
    theirs = engine.predict(Model("r", "f", engine.name, data.keys, data.labels, END, data.start, END, 300.0, local),
                            END + 300, 12, 99.0)
    np.testing.assert_array_equal(ours.upper, theirs.upper)
    np.testing.assert_array_equal(ours.lower, theirs.lower)
    assert where != os.getpid() and where in worker_pids(dask_cluster)
    page = telemetry.render().decode()
    assert 'oa_jobs_succeeded_total{queue="training"} 2.0' in page and 'oa_jobs_queued{queue="training"} 0.0' in page


def worker_pids(cluster: DaskCluster) -> set[int]:
    """The worker processes (children of each nanny, in the nanny's process group)."""
    pids = set()
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            if os.getpgid(pid) in {p.pid for p in cluster.workers.values()}:
                pids.add(pid)
        except ProcessLookupError:
            continue
    return pids


async def test_a_worker_killed_mid_fit_gets_its_job_retried_on_the_other(dask_cluster, tmp_path):
    marker = tmp_path / "started"
    dispatcher = DaskDispatcher(dask_cluster.address, timeout=120)
    victim = None
    try:
        job = asyncio.create_task(dispatcher.run(slow_fit_on, str(marker), 3.0))
        while not marker.exists():
            await asyncio.sleep(0.05)
        first = int(marker.read_text())
        victim = next(name for name, nanny in dask_cluster.workers.items() if os.getpgid(first) == nanny.pid)
        dask_cluster.kill_worker(victim)
        finished_on = await asyncio.wait_for(job, 60)
        assert finished_on != first and finished_on in worker_pids(dask_cluster)
    finally:
        await dispatcher.close()
        if victim is not None:  # the session's cluster has two workers again
            await asyncio.to_thread(dask_cluster.add_worker, victim)


def daemon(tmp_path: Path, scheduler: str) -> tuple[App, FakeClock]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent(f"""
        groups:
          - name: web
            interval: 1m
            rules:
              - anomaly: requests
                expr: {EXPR}
    """))
    clock = FakeClock(END)
    tsdb = FakeTsdb({EXPR: seasonal_series("requests", 6, END - 3 * DAY + 60, END + 3 * DAY, seed=5)})
    settings = Settings(rules=(str(rules),), dispatcher="dask", dask_scheduler=scheduler)
    return bootstrap(settings, tsdb=tsdb, store=LocalArtifactStore(tmp_path / "models"), clock=clock), clock


async def cycle(app: App, at: float) -> bytes:
    for group in app.rules.groups:
        await app.runner.cycle(group, at)
    await asyncio.gather(*(s.fit_task for s in app.runner.slots.values() if s.fit_task), return_exceptions=True)
    for group in app.rules.groups:
        await app.runner.cycle(group, at)
    return app.page.page()


async def test_with_the_scheduler_down_the_rule_is_unhealthy_and_keeps_its_model(tmp_path):
    with DaskCluster(tmp_path, workers=1) as cluster:
        app, clock = daemon(tmp_path, cluster.address)
        try:
            assert await app.load_rules()
            await app.runner.pause()
            page = await cycle(app, END)
            assert len(values(page, "oa_anomaly_score", rule="requests")) == 6
            assert value(page, "oa_rule_healthy", rule="requests") == 1

            cluster.kill_scheduler()
            app.dispatcher.connect_timeout = 1.0  # type: ignore[attr-defined]  # fail fast in the test
            page = await cycle(app, END + DAY + 60)  # the daily refit is due: it cannot reach the cluster
            assert value(page, "oa_rule_healthy", rule="requests") == 0
            assert value(page, "oa_fit_failures_total", rule="requests") == 1
            assert len(values(page, "oa_anomaly_score", rule="requests")) == 6  # the model in use still scores
            assert value(page, "oa_jobs_failed_total", queue="training", reason="broker") == 1
            status = {s.name: s for s in app.rules_status()}["requests"]
            assert status.state == "error" and "dask" in (status.error or "")
        finally:
            await app.close()


async def test_an_unreachable_scheduler_fails_the_job_with_a_dispatch_error():
    dispatcher = DaskDispatcher("tcp://127.0.0.1:9", timeout=10, connect_timeout=0.5)
    with pytest.raises(DispatchError, match="unreachable"):
        await dispatcher.run(os.getpid)
    await dispatcher.close()


async def test_a_large_statsforecast_rule_fitted_through_fugue_gives_the_single_process_bands(dask_cluster):
    single = engine_registry()["statsforecast"]
    spread = engine_registry()["statsforecast"]
    spread.distributed_from = 4  # type: ignore[attr-defined]  # "large" from 4 series: the switch, made small
    spec, data = ModelSpec("statsforecast", "AutoETS", {"model": "ZZN"}), history(series=6, days=2)
    dispatcher = DaskDispatcher(dask_cluster.address, timeout=300)
    try:
        remote = await dispatcher.run(spread.fit, data, spec, 99.0)
    finally:
        await dispatcher.close()
    local = single.fit(data, spec, 99.0)
    assert remote.payload.forecast is not None  # distributed: the forecast is kept
    assert not remote.errors

    def bands(fitted):
        model = Model("r", "f", "statsforecast", data.keys, data.labels, END, data.start, END, 300.0, fitted)
        return single.predict(model, END + 300, 24, 99.0)

    ours, theirs = bands(remote), bands(local)
    for name in ("yhat", "lower", "upper"):  # Fugue's results are float32 (statsforecast's own tolerance there)
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-5)


async def test_a_seasonal_profile_rule_goes_to_the_cluster_in_row_blocks_and_gives_the_one_job_model(dask_cluster):
    engine, spec = engine_registry()["statsforecast"], ModelSpec("statsforecast", "SeasonalProfile")
    data = history(series=7, days=2)
    dispatcher = DaskDispatcher(dask_cluster.address, timeout=300)
    dispatcher.block_bytes = 2 * data.values[0].nbytes  # two series a job: 4 jobs, 4 at once on 2 workers
    before = await tasks_named(dask_cluster.address, "fit-")
    try:
        assert await dispatcher.split(7, data.values.shape[1]) == (2, 4)
        remote = await fit_rule(dispatcher, engine, data, spec, 99.0)
    finally:
        await dispatcher.close()
    assert await tasks_named(dask_cluster.address, "fit-") - before == 4
    local = engine.fit(data, spec, 99.0)

    def bands(fitted):
        model = Model("r", "f", "statsforecast", data.keys, data.labels, END, data.start, END, 300.0, fitted)
        return engine.predict(model, END + 300, 24, 99.0)

    ours, theirs = bands(remote), bands(local)
    for name in ("yhat", "lower", "upper"):  # row by row: the same numbers, not merely close
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
    np.testing.assert_array_equal(remote.ok, local.ok)


async def tasks_named(address: str, prefix: str) -> int:
    """How many tasks whose key starts with `prefix` the cluster has run so far."""
    from distributed import Client

    async with Client(address, asynchronous=True) as client:
        stream = await client.get_task_stream()  # the first call installs the scheduler's recorder
    return sum(str(task["key"]).lstrip("('\"").startswith(prefix) for task in stream)


async def moments_tasks(address: str) -> int:
    """How many partition-moments tasks (DistributedMLForecast's regressor fit) the cluster has run so far."""
    from distributed import Client

    async with Client(address, asynchronous=True) as client:
        stream = await client.get_task_stream()  # the first call installs the scheduler's recorder
    return sum("partition_moments" in str(task["key"]) for task in stream)


async def test_a_large_mlforecast_rule_fitted_by_distributed_mlforecast_gives_the_single_process_bands(dask_cluster):
    pytest.importorskip("mlforecast", reason="needs the mlforecast extra")
    single = engine_registry()["mlforecast"]
    spread = engine_registry()["mlforecast"]
    spread.distributed_from = 4  # type: ignore[attr-defined]  # "large" from 4 series: the switch, made small
    spec, data = ModelSpec("mlforecast", "Ridge", {"n_windows": 4}), history(series=6, days=2)
    before = await moments_tasks(dask_cluster.address)
    dispatcher = DaskDispatcher(dask_cluster.address, timeout=300)
    try:
        remote = await dispatcher.run(spread.fit, data, spec, 99.0)
    finally:
        await dispatcher.close()
    # two regressor fits (the calibration windows' and the final one), each over 4 partitions (2 per worker)
    assert await moments_tasks(dask_cluster.address) - before == 2 * 4
    local = single.fit(data, spec, 99.0)
    assert not remote.errors and type(remote.payload.state).__name__ == "MLForecast"

    def bands(fitted):
        model = Model("r", "f", "mlforecast", data.keys, data.labels, END, data.start, END, 300.0, fitted)
        return single.predict(model, END + 300, 24, 99.0)

    ours, theirs = bands(remote), bands(local)
    for name in ("yhat", "lower", "upper"):  # the regressor solved from moments: float rounding apart
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-9)
    np.testing.assert_allclose(remote.payload.state.models_["model"].coef_, local.payload.state.models_["model"].coef_,
                               rtol=1e-9)
    stored = bands(single.loads(single.dumps(remote)))  # stored and loaded as any model
    np.testing.assert_array_equal(stored.upper, ours.upper)
