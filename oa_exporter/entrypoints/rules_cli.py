"""oa-exporter rules export / import / alerts: move rules between YAML files and the postgres config store;
write the Prometheus alerting rules of rules files.

    oa-exporter rules export --config.postgres-dsn DSN [--out rules.yaml]     (stdout by default)
    oa-exporter rules import --config.postgres-dsn DSN rules/*.yaml           (replaces what the tables hold)
    oa-exporter rules alerts rules/*.yaml [-o alerts.yaml] [--for 5m]         (stdout by default)

An import is validated as `oa-exporter check` validates the files, then written in one transaction; every
replica hears of it (NOTIFY) and reloads. An export writes one rules file that `check` accepts. `alerts`
validates the files as `check` does, then writes one alert per anomaly rule (core/alerting_rules.py) as a
Prometheus rules file that `promtool check rules` accepts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import RuleError
from ..settings import Settings

log = logging.getLogger("oa_exporter")


def add_parser(commands: Any) -> None:
    """Register `oa-exporter rules export|import`."""
    rules = commands.add_parser("rules", help="export or import the rules of the postgres config store; write "
                                "the Prometheus alerts of rules files",
                                description="Move rules between YAML rules files and PostgreSQL, or write one "
                                "Prometheus alert per anomaly rule.")
    actions = rules.add_subparsers(dest="action", required=True)
    alerts = actions.add_parser(
        "alerts", help="write a Prometheus alerting rules file: one alert per anomaly rule",
        description="Write one Prometheus alert per anomaly rule of the files (AnomalyDetected on the rule's "
        "oa_anomaly_score > 1, with the rule's labels and annotations, whose templates Prometheus expands per "
        "series). Load it in Prometheus in place of the openanomaly-anomalies group of rules/alerts/openanomaly.yaml.")
    alerts.add_argument("files", nargs="+", help="rules files, directories or globs")
    alerts.add_argument("-o", "--out", default="-", help="file to write (default: stdout)")
    alerts.add_argument("--for", dest="wait", default="5m",
                        help="how long a series scores above 1 before its alert fires (default 5m; 0: at once)")
    alerts.add_argument("--model.engine", dest="model_engine", default=None, help="default engine (OA_MODEL_ENGINE)")
    alerts.set_defaults(handler=run_alerts)
    for name, help_text in (("export", "write the database's rules as one YAML rules file"),
                            ("import", "replace the database's rules by those of rules files (validated first)")):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument("--config.postgres-dsn", dest="config_postgres_dsn", default=None,
                            help="PostgreSQL of the config store (env OA_CONFIG_POSTGRES_DSN)")
        action.add_argument("--model.engine", dest="model_engine", default=None,
                            help="default engine (OA_MODEL_ENGINE)")
        if name == "export":
            action.add_argument("--out", default="-", help="file to write (default: stdout)")
        else:
            action.add_argument("files", nargs="+", help="rules files, directories or globs")
        action.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `oa-exporter rules export|import`; returns the exit code."""
    from ..bootstrap import config_store, postgres_store

    settings = Settings.from_env().with_overrides(
        {"config_postgres_dsn": args.config_postgres_dsn, "model_engine": args.model_engine,
         "rules": tuple(getattr(args, "files", ()) or ()) or None})
    try:
        database = postgres_store(settings)
        if args.action == "export":
            return _export(database.groups(), args.out)
        files = config_store(settings)
        files.load()  # as `check` validates them: every problem, with file:line
        from ..adapters.config.postgres_rules import groups_of
        from ..adapters.config.yaml_rules import parse

        database.replace_all(groups_of([parse(path).content for path in files.files()]))
    except RuleError as e:
        print("FAILED:\n" + "\n".join(str(p) for p in e.problems), file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"rules {args.action}: {e}", file=sys.stderr)
        return 2
    print(f"imported {sum(1 for _ in database.load().rules)} rules into {database.origin}", file=sys.stderr)
    return 0


def _export(groups: list[dict[str, Any]], out: str) -> int:
    text = yaml.safe_dump({"groups": groups}, sort_keys=False, width=120)
    if out == "-":
        sys.stdout.write(text)
    else:
        Path(out).write_text(text)
    return 0


def run_alerts(args: argparse.Namespace) -> int:
    """Handler of `oa-exporter rules alerts`; returns the exit code."""
    from ..adapters.config.yaml_rules import expand
    from ..bootstrap import config_store
    from ..core.alerting_rules import alerting_rules
    from ..core.durations import parse_duration

    settings = Settings.from_env().with_overrides({"rules": tuple(args.files), "model_engine": args.model_engine})
    try:
        wait = parse_duration(args.wait) if args.wait not in ("0", 0) else 0.0
    except ValueError as e:
        print(f"rules alerts: --for: {e}", file=sys.stderr)
        return 2
    files = expand(settings.rules)
    if not files:
        print(f"no rules files match {' '.join(args.files)}", file=sys.stderr)
        return 1
    try:
        rules = config_store(settings).load_files(files)  # as `check` validates them: every problem, file:line
    except RuleError as e:
        print("FAILED:\n" + "\n".join(str(p) for p in e.problems), file=sys.stderr)
        return 1
    header = (f"# Prometheus alerting rules written by `oa-exporter rules alerts` from {', '.join(map(str, files))}:\n"
              "# one alert per anomaly rule. Load it (rule_files) in place of the openanomaly-anomalies group of\n"
              "# rules/alerts/openanomaly.yaml; write it again whenever the rules change.\n")
    text = header + yaml.dump(alerting_rules(rules, wait), Dumper=_BlockDumper, sort_keys=False, width=1 << 16,
                              allow_unicode=True)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    print(f"{len(rules.rules)} alerts written" + ("" if args.out == "-" else f" to {args.out}"), file=sys.stderr)
    return 0


class _BlockDumper(yaml.SafeDumper):
    """Writes text of several lines as a literal block (|), as a person writes an alert's description, and
    indents lists under their key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value.strip("\n") and not value.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _text)
