"""The only place where adapters are chosen and objects wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .adapters.config.promql_process import PromqlChecker
from .adapters.config.watcher import RulesWatcher
from .adapters.config.yaml_editor import YamlRulesEditor
from .adapters.config.yaml_rules import YamlConfigStore
from .adapters.dispatch.local_pool import LocalPoolDispatcher
from .adapters.engines.darts import DartsEngine
from .adapters.engines.mlforecast import MLForecastEngine
from .adapters.engines.neuralforecast import NeuralForecastEngine
from .adapters.engines.sklearn import SklearnEngine
from .adapters.engines.statsforecast import StatsForecastEngine
from .adapters.sinks.exposition import ExpositionPage
from .adapters.sinks.fanout import FanOut, FlushOnly
from .adapters.stores.history_local import LocalHistoryStore
from .adapters.stores.local import LocalArtifactStore
from .adapters.stores.noop import NoopArtifactStore
from .adapters.stores.sharded import ShardedArtifactStore
from .adapters.telemetry.prometheus_client import PrometheusTelemetry
from .adapters.tsdb.prometheus import HttpAuth, PrometheusClient
from .core.domain import ModelSpec, Rule, RuleSet, RuleStatus, StoredRule
from .core.errors import ConflictError, NotFound, RuleError
from .core.ports import (
    ArtifactStore,
    HistoryStore,
    JobDispatcher,
    JobQueue,
    ModelEngine,
    Reachable,
    ResultSink,
    RulesEditor,
    Telemetry,
    TsdbClient,
)
from .core.rule_definition import definition
from .core.rules import SourceDocument, build_rule_set
from .core.services.history import HistoryReader
from .core.services.inferencer import Inferencer
from .core.services.preview import Preview, Previewer, PreviewLimits
from .core.services.queued_trainer import QueuedTrainer
from .core.services.runner import Runner
from .core.services.trainer import Trainer
from .core.services.worker import JobWorker
from .core.sharding import Shard
from .settings import Settings

if TYPE_CHECKING:
    from .adapters.config.postgres_rules import PostgresConfigStore
    from .adapters.dispatch.celery import CeleryOptions
    from .adapters.sinks.remote_write import RemoteDestination
    from .core.domain import SeriesMatrix
    from .core.services.backtester import Backtester, Replay, Samples

    RulesStore = YamlConfigStore | PostgresConfigStore

log = logging.getLogger(__name__)
Watch = Callable[[Callable[[], object]], Callable[[], None]]  # start hearing of rule changes; returns the stop


def engine_registry() -> dict[str, ModelEngine]:
    """Every engine by the names a rule may give it; each imports its library only when a rule uses it."""
    statsforecast = StatsForecastEngine()
    engines: list[ModelEngine] = [statsforecast, MLForecastEngine(), NeuralForecastEngine(), DartsEngine(),
                                  SklearnEngine()]
    return {"nixtla": statsforecast, **{engine.name: engine for engine in engines}}


def default_model(settings: Settings, engines: Mapping[str, ModelEngine]) -> ModelSpec:
    """The model of rules that name none (unless their preset gives one): OA_MODEL_ENGINE's default model."""
    if settings.model_engine not in engines:
        raise ValueError(f"OA_MODEL_ENGINE={settings.model_engine!r} is not one of {sorted(engines)}")
    return engine_defaults(engines)(settings.model_engine)


def engine_defaults(engines: Mapping[str, ModelEngine]) -> Callable[[str], ModelSpec]:
    """An engine's default model by any name of the engine, under the engine's own name (nixtla: statsforecast)."""

    def default(name: str) -> ModelSpec:
        engine = engines.get(name)
        if engine is None:
            raise ValueError(f"unknown engine {name!r} (available: {', '.join(sorted(engines))})")
        return ModelSpec(engine.name, engine.default_model, {})

    return default


# the pyproject extra that installs each optional engine's library
ENGINE_EXTRAS = {"mlforecast": "mlforecast", "neuralforecast": "neural", "darts": "darts", "sklearn": "sklearn"}


def model_checker(engines: Mapping[str, ModelEngine]) -> Callable[[ModelSpec], None]:
    """Validates a rule's model spec against the engines, for `check` and every load."""

    def check(spec: ModelSpec) -> None:
        engine = engines.get(spec.engine)
        if engine is None:
            raise ValueError(f"unknown engine {spec.engine!r} (available: {', '.join(sorted(engines))})")
        try:
            engine.validate(spec)
        except ImportError as e:  # the engine's library is an optional extra
            extra = ENGINE_EXTRAS.get(engine.name, "all")
            raise ValueError(f"engine {spec.engine} needs `pip install 'oa-exporter[{extra}]'` ({e})") from e

    return check


# One PromQL parser process for every store of this process, started at the first check (daemon, `check`)
PROMQL = PromqlChecker()


def config_store(settings: Settings, engines: Mapping[str, ModelEngine] | None = None) -> YamlConfigStore:
    """The YAML rules store with PromQL and model validation wired in."""
    PROMQL.start()
    engines = engines or engine_registry()
    return YamlConfigStore(settings.rules, default_model(settings, engines), PROMQL, model_checker(engines),
                           engine_defaults(engines))


def postgres_store(settings: Settings, engines: Mapping[str, ModelEngine] | None = None) -> PostgresConfigStore:
    """The PostgreSQL rules store (--config.postgres-dsn); psycopg is imported only when it is chosen."""
    from .adapters.config.postgres_rules import PostgresConfigStore

    if not settings.config_postgres_dsn:
        raise ValueError("--config.store=postgres needs --config.postgres-dsn (OA_CONFIG_POSTGRES_DSN)")
    PROMQL.start()
    engines = engines or engine_registry()
    return PostgresConfigStore(settings.config_postgres_dsn, default_model(settings, engines), PROMQL,
                               model_checker(engines))


def rules_source(settings: Settings, engines: Mapping[str, ModelEngine]) -> tuple[RulesStore, RulesEditor, Watch]:
    """The config store OA_CONFIG_STORE names, its write side, and how to hear of its changes at once."""
    if settings.config_store == "postgres":
        store = postgres_store(settings, engines)
        return store, store, store.listen
    files = config_store(settings, engines)
    return files, YamlRulesEditor(files), lambda poke: _watch_files(files, poke)


def _watch_files(store: YamlConfigStore, poke: Callable[[], object]) -> Callable[[], None]:
    watcher = RulesWatcher(store.directories(), poke)
    watcher.start()
    return watcher.stop


def tsdb_client(settings: Settings) -> PrometheusClient:
    headers = dict(_header(h) for h in settings.headers)
    auth = HttpAuth(
        basic_user=settings.basic_auth_user, basic_password_file=settings.basic_auth_password_file,
        bearer_token_file=settings.bearer_token_file, ca_file=settings.ca_file, cert_file=settings.cert_file,
        key_file=settings.key_file, insecure_skip_verify=settings.insecure_skip_verify, headers=headers,
    )
    return PrometheusClient(settings.prometheus_url, auth, settings.query_timeout, settings.query_retries,
                            max_samples=settings.max_samples_per_query,
                            compression=settings.query_compression)


def history_reader(settings: Settings, tsdb: TsdbClient, clock: Callable[[], float]) -> HistoryReader | None:
    """Each rule's training window kept between fits, beside the models (local directory or S3 bucket) unless
    --history.dir names a directory; None, every fit reading its whole window, when --history.max-bytes is 0
    or models are kept in memory only."""
    if settings.history_max_bytes <= 0 or (settings.artifact_store == "noop" and not settings.history_dir):
        return None  # a daemon told to keep models in memory only keeps no history on disk either, unless told
    # shards read the same expr at different times: each keeps its own history, never writing another's blocks
    suffix = f"-shard-{settings.shard_index}" if settings.shard_index > 0 and not settings.history_dir else ""
    store: HistoryStore
    if settings.artifact_store == "s3" and not settings.history_dir:  # shared by every worker fitting the rule
        from .adapters.stores.history_s3 import S3HistoryStore

        store = S3HistoryStore(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint, settings.s3_region,
                               settings.history_max_bytes, folder=f"history{suffix}")
    else:
        directory = settings.history_dir or str(Path(settings.artifact_dir) / ".history") + suffix
        store = LocalHistoryStore(directory, settings.history_max_bytes)
    return HistoryReader(tsdb, store, settings.history_overlap, clock, source=settings.prometheus_url)


def artifact_key(settings: Settings) -> bytes | None:
    """The secret that signs stored models: the key file's content (trailing newline dropped), or the key."""
    if settings.artifact_key_file:
        key = Path(settings.artifact_key_file).read_bytes().rstrip(b"\r\n")
        if not key:
            raise ValueError(f"--artifact.key-file {settings.artifact_key_file} is empty")
        return key
    return settings.artifact_key.encode() if settings.artifact_key else None


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store OA_ARTIFACT_STORE names; boto3 is imported only when S3 is chosen."""
    if settings.artifact_store == "noop":
        return NoopArtifactStore()
    key = artifact_key(settings)
    if key is None and settings.artifact_require_signature:
        raise ValueError("--artifact.require-signature: set OA_ARTIFACT_KEY or --artifact.key-file, the key that "
                         "signs and checks stored models")
    if key is None:
        where = f"s3://{settings.s3_bucket}/{settings.s3_prefix}" if settings.artifact_store == "s3" else \
            settings.artifact_dir
        log.warning("the %s artifact store %s is unsigned (OA_ARTIFACT_KEY is not set): stored models are "
                    "checksummed, not signed; whoever can write there can run code in this process (models are "
                    "pickles); set OA_ARTIFACT_KEY, and --artifact.require-signature to insist on it",
                    settings.artifact_store, where)
    if settings.artifact_store == "s3":
        from .adapters.stores.s3 import S3ArtifactStore

        if not settings.s3_bucket:
            raise ValueError("--artifact.store=s3 needs a bucket: set --artifact.s3.bucket (OA_S3_BUCKET)")
        return S3ArtifactStore(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint, settings.s3_region, key)
    return LocalArtifactStore(settings.artifact_dir, key)


def remote_destinations(settings: Settings) -> list[RemoteDestination]:
    """The --remote-write.url receivers (with the --remote-write.* credentials), then the config file's."""
    from .adapters.config.remote_write import load_destinations
    from .adapters.sinks.remote_write import RemoteDestination

    auth = HttpAuth(
        basic_user=settings.remote_write_basic_auth_user,
        basic_password_file=settings.remote_write_basic_auth_password_file,
        bearer_token_file=settings.remote_write_bearer_token_file, ca_file=settings.remote_write_ca_file,
        cert_file=settings.remote_write_cert_file, key_file=settings.remote_write_key_file,
        insecure_skip_verify=settings.remote_write_insecure_skip_verify,
        headers=dict(_header(h) for h in settings.remote_write_headers),
    )
    found = [RemoteDestination(url, auth) for url in settings.remote_write_urls]
    if settings.remote_write_config_file:
        found += [RemoteDestination(d.url, HttpAuth(**d.auth))
                  for d in load_destinations(settings.remote_write_config_file)]
    return found


def result_sink(settings: Settings, page: ExpositionPage, telemetry: PrometheusTelemetry) -> FanOut:
    """Where results go (OA_OUTPUT_MODE): the /metrics page, remote write, or both; the page always serves the
    self-monitoring. Remote write's modules are imported only when it is used."""
    destinations, mode = remote_destinations(settings), settings.outputs
    if mode == "metrics":
        if destinations:
            log.warning("remote-write destinations are configured but --output.mode is metrics: nothing is written "
                        "to them (set --output.mode to remote-write or both, or leave it unset)")
        return FanOut([page])
    if not destinations:
        raise ValueError(f"--output.mode={mode} needs a destination: set --remote-write.url "
                         "(OA_REMOTE_WRITE_URL) or --remote-write.config-file")
    from .adapters.sinks.remote_write import RemoteWriteOptions, RemoteWriteSink

    options = RemoteWriteOptions(
        max_samples_per_send=settings.remote_write_max_samples_per_send, shards=settings.remote_write_shards,
        queue_max_bytes=settings.remote_write_queue_max_bytes, timeout=settings.remote_write_timeout,
        min_backoff=settings.remote_write_min_backoff, max_backoff=settings.remote_write_max_backoff,
    )
    remote = RemoteWriteSink(destinations, settings.remote_write_queue_dir, options, telemetry.registry)
    # the page renders first: its oa_remote_write_queue_* show what the last interval left unsent (0 when the
    # receivers keep up), not the batches this very flush is about to queue
    return FanOut([page if mode == "both" else FlushOnly(page), remote])


@dataclass
class App:
    """The wired daemon: load rules, run, close."""

    settings: Settings
    rules_store: RulesStore
    tsdb: TsdbClient
    dispatcher: JobDispatcher
    telemetry: PrometheusTelemetry
    page: ExpositionPage
    runner: Runner
    clock: Callable[[], float]
    store: ArtifactStore | None = None
    output: FanOut | None = None  # where the runner's results go; its senders start with the first load
    queue: JobQueue | None = None  # the celery dispatcher's queues, when fits run on workers
    rules: RuleSet | None = None
    rules_version: str = ""
    shards: Callable[[], Shard] = Shard  # this replica's shard layout, read again at every (re)load
    reload_problems: list[str] = field(default_factory=list)  # why the last load failed, file:line first
    editor: RulesEditor | None = None  # the config store's write side, when it has one
    watch: Watch | None = None  # how to hear of rule changes at once (else only the poll finds them)
    previewer: Previewer | None = None
    preview_pool: LocalPoolDispatcher | None = None
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def load_rules(self) -> bool:
        """(Re)load the rules; a bad load keeps the current rules and says why, with file:line."""
        async with self._reloading:
            if self.output is not None:
                await self.output.start()  # safe to call again
            try:
                self.rules_version = await asyncio.to_thread(self._version)
                shard = await asyncio.to_thread(self.shards)
                rules = await asyncio.to_thread(self.rules_store.load)
            except Exception as e:  # noqa: BLE001 - any failure to load is a failed reload, never a dead watcher
                self.reload_problems = _problems_of(e)
                for problem in self.reload_problems:
                    log.error("rules not loaded, the previous rules stay in force: %s", problem)
                self.telemetry.rules_loaded(None, False, self.clock())
                self.page.flush()  # the failure shows on /metrics now, not at the next cycle
                return False
            self.reload_problems = []
            self.rules = rules
            self.runner.reshard(shard)
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
        stop = (self.watch or _unwatched)(lambda: loop.call_soon_threadsafe(poked.set))
        try:
            while True:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that meets
                # a finished wait, and this loop would then never stop
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_interval):
                        await poked.wait()
                    await asyncio.sleep(0.2)  # let an editor or a ConfigMap swap finish writing
                poked.clear()
                try:
                    changed = await asyncio.to_thread(self._version) != self.rules_version
                except Exception as e:  # noqa: BLE001 - the watcher keeps going; the next look decides
                    log.warning("cannot read the rules files: %s", e)
                    continue
                if changed:
                    await self.load_rules()
        finally:
            stop()

    def _version(self) -> str:
        """The rules files' version and the shard count file's content: either changing means reload."""
        count_file = self.settings.shard_count_file
        return self.rules_store.version() + (f"|{Path(count_file).read_text().strip()}" if count_file else "")

    def ready(self) -> bool:
        """GET /-/ready: the rules are loaded and the TSDB has answered at least once since the start."""
        return self.rules is not None and (not isinstance(self.tsdb, Reachable) or self.tsdb.answered)

    def rules_status(self) -> list[RuleStatus]:
        """Every rule's state, models and fits, for GET /api/v1/rules."""
        return self.runner.status(self.clock())

    async def rule_detail(self, name: str, top: int = 20) -> dict[str, Any]:
        """One rule for GET /api/v1/rules/NAME: as written and as in force, its state, top scores, fits."""
        rule = next((r for r in self.rules.rules if r.name == name), None) if self.rules else None
        stored = await asyncio.to_thread(self.editor.rule, name) if self.editor else None
        if rule is None and stored is None:
            raise NotFound(f"no rule named {name!r}")
        status = next((s for s in self.rules_status() if s.name == name), None)
        return {
            "name": name, "group": stored.group if stored else rule.group if rule else None,
            "etag": stored.etag if stored else None, "origin": stored.origin if stored else rule.file if rule else "",
            "source": dict(stored.source) if stored else None,
            "source_yaml": yaml.safe_dump(dict(stored.source), sort_keys=False, width=120) if stored else None,
            "definition": definition(rule) if rule else None,  # None: written, not loaded yet
            "status": asdict(status) if status else None,
            "top_scores": self.runner.top_scores(name, top),
            "fit_history": [asdict(f) for f in self.runner.fit_history(name)],
        }

    def parse_rule(self, source: Mapping[str, Any]) -> Rule:
        """A rule's keys validated as a rules file's would be (RuleError with the same messages)."""
        store = self.rules_store
        wrapped = SourceDocument("<request>", {"groups": [{"name": "preview", "rules": [dict(source)]}]})
        rules = build_rule_set([wrapped], store.default_model, store.check_expr, store.check_model)
        return rules.rules[0]

    async def preview(self, source: Mapping[str, Any], start: float, end: float,
                      labels: Mapping[str, str] | None = None) -> tuple[Rule, Preview]:
        """Replay a rule that is not saved over [start, end] of the live TSDB."""
        assert self.previewer is not None, "bootstrap wires a previewer"
        rule = self.parse_rule(source)
        return rule, await self.previewer.preview(rule, start, end, labels)

    async def put_rule(self, group: str, rule: Mapping[str, Any], if_match: str | None, who: str,
                       dry_run: bool = False) -> StoredRule:
        """Create or replace a rule in the config store, then reload through the usual path."""
        editor = self._editor()
        stored = await asyncio.to_thread(editor.put_rule, group, rule, if_match, dry_run)
        if not dry_run:
            log.info("rules API: %s wrote rule %s in group %s (%s, version %s)", who, stored.name, group,
                     stored.origin, stored.etag)
            await self.load_rules()
        return stored

    async def delete_rule(self, name: str, if_match: str | None, who: str) -> None:
        """Remove a rule from the config store, then reload."""
        await asyncio.to_thread(self._editor().delete_rule, name, if_match)
        log.info("rules API: %s deleted rule %s", who, name)
        await self.load_rules()

    def _editor(self) -> RulesEditor:
        if self.editor is None:
            raise ConflictError(f"the {self.settings.config_store} config store cannot be written")
        return self.editor

    async def close(self) -> None:
        """Stop scoring and training, release connections; safe to call twice."""
        await self.runner.close()
        if self.preview_pool is not None:
            await self.preview_pool.close()
        if self.output is not None:
            await self.output.close()  # after the runner: its last results are queued, not lost
        await self.dispatcher.close()
        if self.queue is not None:
            await self.queue.close()
        await self.tsdb.close()
        if self.store is not None:
            await self.store.close()


def bootstrap(
    settings: Settings,
    *,
    tsdb: TsdbClient | None = None,
    store: ArtifactStore | None = None,
    dispatcher: JobDispatcher | None = None,
    queue: JobQueue | None = None,
    clock: Callable[[], float] = time.time,
    watchers: Sequence[ResultSink] = (),
) -> App:
    """Wire the daemon from settings; tests pass their own adapters, the demo `watchers` of the results."""
    engines = engine_registry()
    tsdb = tsdb or tsdb_client(settings)
    store = store or artifact_store(settings)
    telemetry = PrometheusTelemetry(clock)
    first = shard_layout(settings)
    if first.index > 0:  # shard 0 keeps the plain names: a single daemon's models stay when sharding starts
        store = ShardedArtifactStore(store, first.index)
    dispatcher = dispatcher or job_dispatcher(settings, telemetry)
    page = ExpositionPage(extra=telemetry.render)
    if settings.dispatcher == "celery":  # a sharded daemon's jobs name its shard: workers fit that share
        _check_shared_store(settings, store)
        queue = queue or celery_queue(settings, telemetry)
        trainer: Trainer = QueuedTrainer(tsdb, engines, store, dispatcher, telemetry, clock,
                                         keep=settings.artifact_keep, queue=queue)  # workers read the history
        inferencer = Inferencer(tsdb, engines, telemetry, queue, offload_policy(settings, engines))
    else:
        trainer = Trainer(tsdb, engines, store, dispatcher, telemetry, clock, keep=settings.artifact_keep,
                          history=history_reader(settings, tsdb, clock))
        inferencer = Inferencer(tsdb, engines, telemetry)
    output = result_sink(settings, page, telemetry)
    if watchers:
        output = FanOut([*output.sinks, *watchers])
    runner = Runner(trainer, inferencer, output, telemetry, clock)
    rules_store, editor, watch = rules_source(settings, engines)
    # a preview is one person's wait, the scrapes and cycles everyone's: it gets only the CPU they leave
    preview_pool = LocalPoolDispatcher(1, settings.preview_timeout, retries=0, idle=True)
    limits = PreviewLimits(settings.preview_max_series, settings.preview_max_points, settings.preview_timeout)
    return App(settings, rules_store, tsdb, dispatcher, telemetry, page, runner, clock, store,
               output=output, queue=queue, editor=editor, watch=watch,
               previewer=Previewer(tsdb, _replay_in(preview_pool, preview_threads(settings)), limits, clock),
               preview_pool=preview_pool,
               shards=lambda: shard_layout(settings))


def _unwatched(poke: Callable[[], object]) -> Callable[[], None]:
    return lambda: None


def _replay_in(pool: LocalPoolDispatcher,
               threads: int) -> Callable[[Rule, SeriesMatrix, Samples, float], Awaitable[Replay]]:
    """Previews replayed in a child process of their own pool: killable at the time limit, never on the loop."""

    async def run(rule: Rule, history: SeriesMatrix, samples: Samples, timeout: float) -> Replay:
        return await pool.run(replay_in_child, rule, history, samples, threads)

    return run


def preview_threads(settings: Settings) -> int:
    """Threads one preview fits on: --preview.threads, or by default (0) one per core. The preview's process
    runs at JOB_NICENESS, so a scrape or a cycle of the daemon still takes a core first when it needs one."""
    return settings.preview_threads or os.cpu_count() or 1


def replay_in_child(rule: Rule, history: SeriesMatrix, samples: Samples, threads: int = 1) -> Replay:
    """Replay one rule over history held in memory (in a worker process) with the daemon's services, its
    refits on `threads` threads (see backtester)."""

    async def replay() -> Replay:
        tool = backtester(history, threads)
        try:
            return await tool.replay(rule, samples)
        finally:
            await tool.close()

    return asyncio.run(replay())


def shard_layout(settings: Settings) -> Shard:
    """This replica's shard: the count from --shard.count-file (read now) or --shard.count, the index from
    --shard.index or the hostname's ordinal; ValueError when they do not fit together."""
    count = settings.shard_count
    if settings.shard_count_file:
        try:
            text = Path(settings.shard_count_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"--shard.count-file {settings.shard_count_file}: {e.strerror or e}") from e
        try:
            count = int(text)
        except ValueError as e:
            raise ValueError(f"--shard.count-file {settings.shard_count_file}: {text!r} is not a number") from e
    if count == 1:
        return Shard()
    if settings.shard_index < 0:
        raise ValueError(f"--shard.count {count} needs --shard.index (OA_SHARD_INDEX), or a hostname ending in "
                         "the pod's ordinal as a StatefulSet gives (openanomaly-2)")
    return Shard(settings.shard_index, count)


def job_dispatcher(settings: Settings, telemetry: Telemetry) -> JobDispatcher:
    """Where the daemon's fits run: its process pool, or a Dask cluster (imported only when chosen). With
    celery, whole jobs go to the workers and the pool only serves what the daemon still fits itself."""
    if settings.dispatcher == "dask":
        from .adapters.dispatch.dask import DaskDispatcher

        return DaskDispatcher(settings.dask_scheduler, settings.job_timeout, settings.job_retries, telemetry)
    return LocalPoolDispatcher(settings.pool_workers or None, settings.job_timeout, settings.job_retries, telemetry)


def celery_options(settings: Settings) -> CeleryOptions:
    """The celery dispatcher's settings, shared by the daemon and its workers."""
    from .adapters.dispatch.celery import CeleryOptions

    if not settings.celery_broker:
        raise ValueError("--dispatcher=celery needs a broker: set --celery.broker (OA_CELERY_BROKER), e.g. "
                         "redis://localhost:6379/0")
    return CeleryOptions(settings.celery_broker, settings.celery_result_backend, settings.job_timeout,
                         settings.job_retries, visibility_timeout=settings.celery_visibility_timeout)


def celery_queue(settings: Settings, telemetry: Telemetry) -> JobQueue:
    """The daemon's side of the celery dispatcher; celery is imported only when it is chosen."""
    from .adapters.dispatch.celery import CeleryJobQueue, celery_app

    options = celery_options(settings)
    return CeleryJobQueue(celery_app(options), options, telemetry)


def offload_policy(settings: Settings, engines: Mapping[str, ModelEngine]) -> Callable[[Rule], bool]:
    """Which rules' band refreshes go to the inference queue (OA_CELERY_INFERENCE)."""
    if settings.celery_inference == "always":
        return lambda rule: True
    if settings.celery_inference == "never":
        return lambda rule: False
    return lambda rule: engines[rule.model.engine].capabilities(rule.model).gpu


def _check_shared_store(settings: Settings, store: ArtifactStore) -> None:
    if isinstance(store, NoopArtifactStore):
        raise ValueError("--dispatcher=celery needs an artifact store that daemon and workers share (s3, or local "
                         "on a shared volume): models travel through it, never through the broker")


@dataclass
class WorkerServices:
    """What a worker process runs jobs with: the daemon's Trainer code over the same TSDB and store."""

    worker: JobWorker
    tsdb: TsdbClient
    store: ArtifactStore
    pool: LocalPoolDispatcher

    async def close(self) -> None:
        await self.pool.close()
        await self.tsdb.close()
        await self.store.close()


def worker_services(settings: Settings, concurrency: int) -> WorkerServices:
    """A worker's JobWorker: fits run in child processes (killable, one per job), nothing is exported."""
    engines = engine_registry()
    tsdb, store = tsdb_client(settings), artifact_store(settings)
    _check_shared_store(settings, store)
    pool = LocalPoolDispatcher(concurrency, settings.job_timeout, retries=0)  # celery retries the whole job
    return WorkerServices(JobWorker(shard_trainers(settings, tsdb, store, pool, engines), engines), tsdb, store, pool)


def shard_trainers(settings: Settings, tsdb: TsdbClient, store: ArtifactStore, dispatcher: JobDispatcher,
                   engines: Mapping[str, ModelEngine]) -> Callable[[int], Trainer]:
    """A worker's Trainer of each shard, made at the shard's first job: shard i's names in the shared store and
    its history, as its replica would have them, so the shards' models and records stay apart."""
    import typing

    from .adapters.telemetry.null import NullTelemetry

    trainers: dict[int, Trainer] = {}

    def trainer_of(shard: int) -> Trainer:
        if shard not in trainers:
            own = store if shard == 0 else ShardedArtifactStore(store, shard)
            history = history_reader(replace(settings, shard_index=shard), tsdb, time.time)
            trainers[shard] = Trainer(tsdb, engines, own, dispatcher, typing.cast(Telemetry, NullTelemetry()),
                                      keep=settings.artifact_keep, history=history)
        return trainers[shard]

    return trainer_of


def backtester(history: SeriesMatrix, threads: int = 1) -> Backtester:
    """The daemon's Trainer and Inferencer over history held in memory: fits run inline (a backtest job is
    already a worker), or with `threads` > 1 that many at once on threads of this process, the next refits
    started ahead of the replay (the same fits: see FitsAhead); models are kept in memory, telemetry goes
    nowhere."""
    import typing

    from .adapters.dispatch.inline import InlineDispatcher
    from .adapters.dispatch.threads import ThreadDispatcher
    from .adapters.telemetry.null import NullTelemetry
    from .adapters.tsdb.replay import ReplayTsdb
    from .core.ports import Telemetry
    from .core.services.backtester import Backtester

    engines = engine_registry()
    tsdb, telemetry = ReplayTsdb(history), typing.cast(Telemetry, NullTelemetry())
    dispatcher: JobDispatcher = ThreadDispatcher(threads) if threads > 1 else InlineDispatcher()
    trainer = Trainer(tsdb, engines, NoopArtifactStore(), dispatcher, telemetry, keep=1)
    return Backtester(trainer, Inferencer(tsdb, engines, telemetry), ahead=threads if threads > 1 else 0)


def _problems_of(error: Exception) -> list[str]:
    """The file:line messages of a failed load; another failure in one line, with its traceback at debug."""
    if isinstance(error, RuleError):
        return [str(p) for p in error.problems]
    log.debug("loading the rules failed", exc_info=error)
    return [f"loading the rules failed: {type(error).__name__}: {error}"]


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"header {text!r} must look like 'Name: value'")
    return name.strip(), value.strip()
