"""oa-exporter rules export / import: move rules between YAML files and the postgres config store.

    oa-exporter rules export --config.postgres-dsn DSN [--out rules.yaml]     (stdout by default)
    oa-exporter rules import --config.postgres-dsn DSN rules/*.yaml           (replaces what the tables hold)

An import is validated as `oa-exporter check` validates the files, then written in one transaction; every
replica hears of it (NOTIFY) and reloads. An export writes one rules file that `check` accepts.
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
    rules = commands.add_parser("rules", help="export or import the rules of the postgres config store",
                                description="Move rules between YAML rules files and PostgreSQL.")
    actions = rules.add_subparsers(dest="action", required=True)
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
