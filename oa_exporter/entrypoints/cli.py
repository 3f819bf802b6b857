"""oa-exporter command line: run the daemon, check rules files."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import fields

from .. import __version__
from ..settings import Settings, flag_commands
from .flags import add_setting_flag

log = logging.getLogger("oa_exporter")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `oa-exporter` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args.handler(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oa-exporter", description="Forecasting and anomaly detection for Prometheus, as an exporter."
    )
    parser.add_argument("--version", action="version", version=f"oa-exporter {__version__}")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run the daemon", description="Score every rule and serve /metrics.")
    _add_settings_flags(run, "run")
    run.set_defaults(handler=_run)
    demo = commands.add_parser("demo", help="run the daemon on generated series: no infrastructure needed",
                               description="Score generated series served by an embedded Prometheus-API source.")
    _add_settings_flags(demo, "demo", ("web_listen_address", "log_level", "log_format"))
    demo.set_defaults(handler=_demo)
    worker = commands.add_parser("worker", help="run a celery worker for the training or inference queue",
                                 description="Consume one queue of the celery dispatcher (OA_CELERY_BROKER).")
    worker.add_argument("--queue", required=True, choices=("training", "inference"), help="the queue to consume")
    worker.add_argument("--concurrency", type=int, default=0, help="jobs at once (default: the number of cores)")
    _add_settings_flags(worker, "worker")
    worker.set_defaults(handler=_worker)
    check = commands.add_parser("check", help="validate rules files (exit 0 when valid, 1 otherwise)")
    check.add_argument("files", nargs="+", help="rules files, directories or globs")
    _add_settings_flags(check, "check", ("model_engine",))
    check.set_defaults(handler=_check)
    from .backtest import add_parser as add_backtest  # numpy and the services load with it

    add_backtest(commands)
    from .rules_cli import add_parser as add_rules

    add_rules(commands)
    return parser


def _add_settings_flags(parser: argparse.ArgumentParser, command: str, only: tuple[str, ...] = ()) -> None:
    """One flag per Settings field the command uses (`only` these, when given); each names its OA_* variable,
    which supplies the default."""
    for f in fields(Settings):
        if f.name in only if only else command in flag_commands(f.name):
            add_setting_flag(parser, f)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return Settings.from_env(preset=overrides.pop("preset", None)).with_overrides(overrides)


def _check(args: argparse.Namespace) -> int:
    from ..adapters.config.yaml_rules import expand
    from ..bootstrap import config_store
    from ..core.errors import RuleError

    settings = Settings.from_env().with_overrides({"rules": tuple(args.files), "model_engine": args.model_engine})
    store = config_store(settings)
    files = expand(settings.rules)
    if not files:
        print(f"no rules files match {' '.join(args.files)}", file=sys.stderr)
        return 1
    failed = False
    for path in files:
        print(f"Checking {path}")
        try:
            rules = store.load_files([path])
        except RuleError as e:
            failed = True
            print("  FAILED:\n" + "\n".join(str(p) for p in e.problems), file=sys.stderr)
            continue
        print(f"  SUCCESS: {len(rules.rules)} rules found")
    if not failed:
        try:  # names must also be unique across files
            store.load_files(files)
        except RuleError as e:
            print("FAILED across files:\n" + "\n".join(str(p) for p in e.problems), file=sys.stderr)
            failed = True
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    from .logs import configure

    settings = _settings(args)
    configure(settings.log_level, settings.log_format)
    if not settings.rules and settings.config_store == "yaml":
        log.error("no rules given: pass --rules FILE|DIR|GLOB or set OA_RULES")
        return 2
    _install_uvloop()
    from .daemon import serve

    try:
        return asyncio.run(serve(settings))
    except ValueError as e:  # settings that cannot work together, found while wiring
        log.error("not started: %s", e)
        return 2


def _worker(args: argparse.Namespace) -> int:
    import os

    from .logs import configure

    settings = _settings(args)
    configure(settings.log_level, settings.log_format)
    from .worker import run_worker

    try:
        return run_worker(settings, args.queue, args.concurrency or os.cpu_count() or 1)
    except (ValueError, OSError) as e:  # bad settings; --worker.listen-address taken or not ours
        log.error("worker not started: %s", e)
        return 2


def _demo(args: argparse.Namespace) -> int:
    from ..demo.run import run_demo
    from .logs import configure

    settings = _settings(args)
    configure(settings.log_level, settings.log_format)
    _install_uvloop()
    return asyncio.run(run_demo(settings))


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":  # pragma: no cover
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
