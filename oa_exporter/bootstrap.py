"""The only place where adapters are chosen and objects wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .adapters.config.promql import check_promql
from .adapters.config.watcher import RulesWatcher
from .adapters.config.yaml_rules import YamlConfigStore
from .adapters.dispatch.local_pool import LocalPoolDispatcher
from .adapters.engines.statsforecast import StatsForecastEngine
from .adapters.sinks.exposition import ExpositionPage
from .adapters.stores.local import LocalArtifactStore
from .adapters.telemetry.prometheus_client import PrometheusTelemetry
from .adapters.tsdb.prometheus import HttpAuth, PrometheusClient
from .core.domain import ModelSpec, RuleSet
from .core.errors import RuleError
from .core.ports import ArtifactStore, JobDispatcher, ModelEngine, TsdbClient
from .core.services.inferencer import Inferencer
from .core.services.runner import Runner
from .core.services.trainer import Trainer
from .settings import Settings

log = logging.getLogger(__name__)


def engine_registry() -> dict[str, ModelEngine]:
    """Every engine by the names a rule may give it."""
    statsforecast = StatsForecastEngine()
    return {"statsforecast": statsforecast, "nixtla": statsforecast}


def default_model(settings: Settings, engines: Mapping[str, ModelEngine]) -> ModelSpec:
    """The model of rules that name none: OA_MODEL_ENGINE's default model."""
    engine = engines.get(settings.model_engine)
    if engine is None:
        raise ValueError(f"OA_MODEL_ENGINE={settings.model_engine!r} is not one of {sorted(engines)}")
    return ModelSpec(settings.model_engine, engine.default_model, {})


def model_checker(engines: Mapping[str, ModelEngine]) -> Callable[[ModelSpec], None]:
    """Validates a rule's model spec against the engines, for `check` and every load."""

    def check(spec: ModelSpec) -> None:
        engine = engines.get(spec.engine)
        if engine is None:
            raise ValueError(f"unknown engine {spec.engine!r} (available: {', '.join(sorted(engines))})")
        engine.validate(spec)

    return check


def config_store(settings: Settings, engines: Mapping[str, ModelEngine] | None = None) -> YamlConfigStore:
    """The YAML rules store with PromQL and model validation wired in."""
    engines = engines or engine_registry()
    return YamlConfigStore(settings.rules, default_model(settings, engines), check_promql, model_checker(engines))


def tsdb_client(settings: Settings) -> PrometheusClient:
    headers = dict(_header(h) for h in settings.headers)
    auth = HttpAuth(
        basic_user=settings.basic_auth_user, basic_password_file=settings.basic_auth_password_file,
        bearer_token_file=settings.bearer_token_file, ca_file=settings.ca_file, cert_file=settings.cert_file,
        key_file=settings.key_file, insecure_skip_verify=settings.insecure_skip_verify, headers=headers,
    )
    return PrometheusClient(settings.prometheus_url, auth, settings.query_timeout, settings.query_retries)


@dataclass
class App:
    """The wired daemon: load rules, run, close."""

    settings: Settings
    rules_store: YamlConfigStore
    tsdb: TsdbClient
    dispatcher: JobDispatcher
    telemetry: PrometheusTelemetry
    page: ExpositionPage
    runner: Runner
    clock: Callable[[], float]
    rules: RuleSet | None = None
    rules_version: str = ""
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def load_rules(self) -> bool:
        """(Re)load the rules; a bad load keeps the current rules and says why, with file:line."""
        async with self._reloading:
            self.rules_version = await asyncio.to_thread(self.rules_store.version)
            try:
                rules = await asyncio.to_thread(self.rules_store.load)
            except RuleError as e:
                for problem in e.problems:
                    log.error("rules not loaded, the previous rules stay in force: %s", problem)
                self.telemetry.rules_loaded(None, False, self.clock())
                self.page.flush()  # the failure shows on /metrics now, not at the next cycle
                return False
            self.rules = rules
            await self.runner.apply(rules)
            self.telemetry.rules_loaded(rules, True, self.clock())
            self.page.flush()
            log.info("loaded %d rules in %d groups", len(rules.rules), len(rules.groups))
            return True

    async def watch_rules(self, poll_interval: float) -> None:
        """Reload when the rules files change: file events at once, a content-hash poll for lost events
        (a Kubernetes ConfigMap swaps a symlink, which watchers can miss)."""
        loop = asyncio.get_running_loop()
        poked = asyncio.Event()
        watcher = RulesWatcher(self.rules_store.directories(), lambda: loop.call_soon_threadsafe(poked.set))
        watcher.start()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poked.wait(), poll_interval)
                    await asyncio.sleep(0.2)  # let an editor or a ConfigMap swap finish writing
                poked.clear()
                if await asyncio.to_thread(self.rules_store.version) != self.rules_version:
                    await self.load_rules()
        finally:
            watcher.stop()

    async def close(self) -> None:
        """Stop scoring and training, release connections; safe to call twice."""
        await self.runner.close()
        await self.dispatcher.close()
        await self.tsdb.close()


def bootstrap(
    settings: Settings,
    *,
    tsdb: TsdbClient | None = None,
    store: ArtifactStore | None = None,
    dispatcher: JobDispatcher | None = None,
    clock: Callable[[], float] = time.time,
) -> App:
    """Wire the daemon from settings; tests pass their own adapters."""
    engines = engine_registry()
    tsdb = tsdb or tsdb_client(settings)
    store = store or LocalArtifactStore(settings.artifact_dir)
    dispatcher = dispatcher or LocalPoolDispatcher(settings.pool_workers or None)
    telemetry = PrometheusTelemetry(clock)
    page = ExpositionPage(extra=telemetry.render)
    trainer = Trainer(tsdb, engines, store, dispatcher, telemetry, clock)
    inferencer = Inferencer(tsdb, engines, telemetry)
    runner = Runner(trainer, inferencer, page, telemetry, clock)
    return App(settings, config_store(settings, engines), tsdb, dispatcher, telemetry, page, runner, clock)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"header {text!r} must look like 'Name: value'")
    return name.strip(), value.strip()
