"""Rules in PostgreSQL, shared by every replica: loaded as a rules file would be, changes announced by NOTIFY.

Two tables in the connection's schema (the DSN's `options=-csearch_path=...` picks another): rule groups, and
rules with their keys as JSON (what a rules file would say of them). A write runs in one transaction that
locks the rules table against other writers, checks the version the caller read, validates the whole rule set
it would make (the messages of `oa-exporter check`, located at `postgresql:<table>`), writes, and sends a
NOTIFY; every replica LISTENs and reloads, and polls the version as well, in case a notification is lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ...core.domain import ModelSpec, RuleSet, StoredRule
from ...core.errors import ConflictError, NotFound, Problem, RuleError
from ...core.rule_definition import etag
from ...core.rules import ExprChecker, ModelChecker, SourceDocument, build_rule_set

log = logging.getLogger(__name__)
CHANNEL = "oa_rules_changed"
GROUPS, RULES = "oa_rule_groups", "oa_rules"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {GROUPS} (
    name text PRIMARY KEY, interval text, position bigserial);
CREATE TABLE IF NOT EXISTS {RULES} (
    name text PRIMARY KEY, group_name text NOT NULL REFERENCES {GROUPS} (name) ON DELETE CASCADE,
    position bigserial, source jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
"""
Groups = list[dict[str, Any]]  # [{"name", "interval"?, "rules": [source, ...]}] in order, as a rules file's groups


class PostgresConfigStore:
    """ConfigStore and RulesEditor over PostgreSQL tables."""

    def __init__(self, dsn: str, default_model: ModelSpec, check_expr: ExprChecker, check_model: ModelChecker):
        self.dsn = dsn
        self.default_model = default_model
        self.check_expr = check_expr
        self.check_model = check_model
        self.origin = f"postgresql:{RULES}"
        self._ready = False

    # -- reading --
    def load(self) -> RuleSet:
        return self._build(self.groups())

    def version(self) -> str:
        return hashlib.sha256(json.dumps(self.groups(), sort_keys=True).encode()).hexdigest()

    def directories(self) -> list:
        """No files to watch: changes come by LISTEN (see `listen`)."""
        return []

    def groups(self) -> Groups:
        """Every group and its rules, in order."""
        with self._connection() as conn:
            return _read(conn)

    def rule(self, name: str) -> StoredRule | None:
        for group in self.groups():
            for source in group["rules"]:
                if source.get("anomaly") == name:
                    return StoredRule(name, group["name"], source, etag(group["name"], source), self.origin)
        return None

    # -- writing --
    def put_rule(self, group: str, rule: Mapping[str, Any], if_match: str | None,
                 dry_run: bool = False) -> StoredRule:
        name, source = str(rule.get("anomaly", "")), dict(rule)
        if dry_run:
            self._check(self.groups(), group, source, if_match)
            return StoredRule(name, group, source, etag(group, source), self.origin)
        with self._writing() as conn:
            self._check(_read(conn), group, source, if_match)
            conn.execute(f"INSERT INTO {GROUPS} (name) VALUES (%s) ON CONFLICT DO NOTHING", (group,))
            conn.execute(f"INSERT INTO {RULES} (name, group_name, source) VALUES (%s, %s, %s) ON CONFLICT (name) DO "
                         "UPDATE SET group_name = EXCLUDED.group_name, source = EXCLUDED.source, updated_at = now(), "
                         f"position = CASE WHEN {RULES}.group_name = EXCLUDED.group_name THEN {RULES}.position "
                         f"ELSE EXCLUDED.position END", (name, group, Jsonb(source)))
            _drop_empty_groups(conn)
        return StoredRule(name, group, source, etag(group, source), self.origin)

    def delete_rule(self, name: str, if_match: str | None) -> None:
        with self._writing() as conn:
            found = _find(_read(conn), name)
            if found is None:
                raise NotFound(f"no rule named {name!r}")
            _check_version(found, if_match, name)
            conn.execute(f"DELETE FROM {RULES} WHERE name = %s", (name,))
            _drop_empty_groups(conn)

    def replace_all(self, groups: Groups) -> None:
        """Make the tables hold exactly these groups (`oa-exporter rules import`), validated first."""
        self._build(groups)
        with self._writing() as conn:
            conn.execute(f"DELETE FROM {GROUPS}")
            for group in groups:
                conn.execute(f"INSERT INTO {GROUPS} (name, interval) VALUES (%s, %s)",
                             (group["name"], group.get("interval")))
                for source in group.get("rules") or []:
                    conn.execute(f"INSERT INTO {RULES} (name, group_name, source) VALUES (%s, %s, %s)",
                                 (source.get("anomaly"), group["name"], Jsonb(source)))

    # -- change notifications --
    def listen(self, on_change: Callable[[], object]) -> Callable[[], None]:
        """Call `on_change` (from a thread) on every NOTIFY of a write; returns the function that stops it."""
        stop = threading.Event()
        thread = threading.Thread(target=self._listen, args=(on_change, stop), name="rules-listen", daemon=True)
        thread.start()

        def stopper() -> None:
            stop.set()
            thread.join(5)

        return stopper

    def _listen(self, on_change: Callable[[], object], stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff = 0.5
                    on_change()  # changes made while this was not listening
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            on_change()
            except psycopg.Error as e:  # the poll still reloads; say why the fast path is gone
                log.warning("rules store: LISTEN %s failed, retrying in %.1f s: %s", CHANNEL, backoff, e)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    # -- helpers --
    def _check(self, groups: Groups, group: str, source: dict[str, Any], if_match: str | None) -> None:
        """ConflictError when the caller's version is stale, RuleError when the rule set it makes is invalid."""
        name = str(source.get("anomaly", ""))
        _check_version(_find(groups, name), if_match, name)
        self._build(_replaced(groups, group, source))

    def _build(self, groups: Groups) -> RuleSet:
        document = SourceDocument(self.origin, {"groups": [_group_node(g) for g in groups]})
        return build_rule_set([document], self.default_model, self.check_expr, self.check_model)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        try:
            with psycopg.connect(self.dsn, connect_timeout=10) as conn:
                if not self._ready:
                    conn.execute(SCHEMA)
                    conn.commit()
                    self._ready = True
                yield conn
        except psycopg.Error as e:
            raise RuleError([Problem(f"cannot reach the rules database: {e}", self.origin)]) from e

    @contextlib.contextmanager
    def _writing(self) -> Iterator[psycopg.Connection]:
        """One transaction that other writers wait for (readers do not); NOTIFY is sent when it commits."""
        with self._connection() as conn, conn.transaction():
            conn.execute(f"LOCK TABLE {GROUPS}, {RULES} IN SHARE ROW EXCLUSIVE MODE")
            yield conn
            conn.execute(f"NOTIFY {CHANNEL}")


def _read(conn: psycopg.Connection) -> Groups:
    groups: dict[str, dict[str, Any]] = {}
    for name, interval in conn.execute(f"SELECT name, interval FROM {GROUPS} ORDER BY position"):
        groups[name] = {"name": name, **({"interval": interval} if interval else {}), "rules": []}
    for group, source in conn.execute(f"SELECT group_name, source FROM {RULES} ORDER BY position"):
        groups[group]["rules"].append(source)
    return list(groups.values())


def _find(groups: Groups, name: str) -> tuple[str, dict[str, Any]] | None:
    for group in groups:
        for source in group["rules"]:
            if source.get("anomaly") == name:
                return group["name"], source
    return None


def _replaced(groups: Groups, group: str, source: dict[str, Any]) -> Groups:
    """The groups with the rule put in `group` (replacing it where it was, else appended; group made if new)."""
    name, out, placed = source.get("anomaly"), [], False
    for g in groups:
        rules = []
        for r in g["rules"]:
            if r.get("anomaly") != name:
                rules.append(r)
            elif g["name"] == group:
                rules.append(source)
                placed = True
        if g["name"] == group and not placed:
            rules.append(source)
            placed = True
        if rules:
            out.append({**g, "rules": rules})
    return out if placed else [*out, {"name": group, "rules": [source]}]


def _check_version(found: tuple[str, dict[str, Any]] | None, if_match: str | None, name: str) -> None:
    if if_match is None:
        return
    current, wanted = etag(*found) if found else None, if_match.strip()
    if wanted == "*" and current is not None:
        return
    if current is None or wanted not in {current, f"W/{current}"}:
        raise ConflictError(f"rule {name!r} changed since it was read (If-Match {if_match}, now "
                            f"{current or 'absent'}): read it again and redo the change")


def _drop_empty_groups(conn: psycopg.Connection) -> None:
    conn.execute(f"DELETE FROM {GROUPS} g WHERE NOT EXISTS (SELECT 1 FROM {RULES} r WHERE r.group_name = g.name)")


def _group_node(group: Mapping[str, Any]) -> dict[str, Any]:
    node = {"name": group["name"], "rules": list(group.get("rules") or [])}
    if group.get("interval"):
        node["interval"] = group["interval"]
    return node


def groups_of(documents: Sequence[Any]) -> Groups:
    """Groups as rules files hold them (parsed YAML documents), for `replace_all`."""
    found: Groups = []
    for content in documents:
        for group in (content or {}).get("groups") or []:
            found.append({"name": group.get("name"), **({"interval": group["interval"]} if "interval" in group
                                                        else {}), "rules": list(group.get("rules") or [])})
    return found
