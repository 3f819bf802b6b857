"""Writes to YAML rules files: one rule at a time, validated as `oa-exporter check` validates, atomic on disk.

Files are edited with ruamel.yaml's round trip, so comments and the layout of what a write does not touch
stay as they were. A write renders the changed file, validates it together with every other rules file
(the messages are those of `check`, with the lines of the file as it would be written), then replaces the
file by a temporary file in the same directory (fsync, rename): a reader, or a daemon killed mid-write,
sees the old file or the new one, never a mix. Writers take a lock on the directory, so the version a
caller read (`if_match`) is checked and replaced in one step.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from ...core.domain import StoredRule
from ...core.errors import ConflictError, NotFound, Problem, RuleError
from ...core.rule_definition import etag
from ...core.rules import SourceDocument, build_rule_set
from .yaml_rules import YamlConfigStore, parse, parse_text

NEW_FILE = "rules.yaml"  # created in the rules directory when no rules file exists yet


@dataclass
class _Located:
    """Where a rule sits: its file's round-trip document, its group and its index in the group."""

    path: Path
    document: Any
    group: CommentedMap
    index: int

    @property
    def node(self) -> Any:
        return self.group["rules"][self.index]


class YamlRulesEditor:
    """RulesEditor over the rules files of a YamlConfigStore."""

    def __init__(self, store: YamlConfigStore):
        self.store = store
        self._lock = threading.Lock()

    def rule(self, name: str) -> StoredRule | None:
        documents = self._documents()
        found = _find(documents, name)
        return _stored(found) if found else None

    def put_rule(self, group: str, rule: Mapping[str, Any], if_match: str | None,
                 dry_run: bool = False) -> StoredRule:
        name = str(rule.get("anomaly", ""))
        with contextlib.nullcontext() if dry_run else self._locked():
            documents = self._documents()
            found = _find(documents, name)
            _check_version(found, if_match, name)
            if found is not None and str(found.group.get("name")) == group:
                _update(found.node, rule)
                changed = {found.path}
            else:
                changed = {found.path} if found else set()
                if found is not None:
                    _remove(found)
                changed.add(self._append(documents, group, rule, found.path if found else None))
            self._write(documents, changed, dry_run)
            stored = _find(documents, name)
            assert stored is not None
            return _stored(stored)

    def delete_rule(self, name: str, if_match: str | None) -> None:
        with self._locked():
            documents = self._documents()
            found = _find(documents, name)
            if found is None:
                raise NotFound(f"no rule named {name!r}")
            _check_version(found, if_match, name)
            _remove(found)
            self._write(documents, {found.path})

    def _documents(self) -> dict[Path, Any]:
        """Every rules file as a round-trip document (None for an empty file)."""
        documents = {}
        for path in self.store.files():
            try:
                documents[path] = _yaml().load(path.read_text())
            except (OSError, YAMLError) as e:
                raise RuleError([Problem(f"cannot edit: {e}", str(path))]) from e
        return documents

    def _append(self, documents: dict[Path, Any], group: str, rule: Mapping[str, Any], near: Path | None) -> Path:
        """Add the rule to its group, creating the group (in `near`, else the first file) when new."""
        for path, document in documents.items():
            for node in _groups(document):
                if str(node.get("name")) == group:
                    node.setdefault("rules", CommentedSeq()).append(_commented(rule))
                    return path
        path = near or next(iter(documents), None) or self._new_file()
        document = documents.get(path)
        if not isinstance(document, CommentedMap):
            document = documents[path] = CommentedMap(groups=CommentedSeq())
        document.setdefault("groups", CommentedSeq()).append(
            CommentedMap(name=group, rules=CommentedSeq([_commented(rule)])))
        return path

    def _new_file(self) -> Path:
        patterns = self.store.patterns
        if len(patterns) == 1 and Path(patterns[0]).is_dir():
            return Path(patterns[0]) / NEW_FILE
        if len(patterns) == 1 and Path(patterns[0]).suffix in (".yaml", ".yml"):
            return Path(patterns[0])
        raise ConflictError("no rules file to add the group to: the rules patterns name no file")

    def _write(self, documents: dict[Path, Any], changed: set[Path], dry_run: bool = False) -> None:
        """Validate the rule set the change makes; then replace each changed file atomically."""
        texts = {path: _dump(documents[path]) for path in changed}
        parsed = [_document(path, texts[path]) if path in texts else parse(path) for path in documents | texts]
        store = self.store
        build_rule_set(parsed, store.default_model, store.check_expr, store.check_model)  # RuleError when invalid
        for path, text in [] if dry_run else texts.items():
            _replace(path, text)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's writers one at a time, and other processes' writers through a lock on the directory."""
        directories = sorted({str(p.parent) for p in self.store.files()} | {str(d) for d in self.store.directories()})
        with self._lock, contextlib.ExitStack() as stack:
            for directory in directories:
                fd = os.open(directory, os.O_RDONLY)
                stack.callback(os.close, fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield


def _document(path: Path, text: str) -> SourceDocument:
    return SourceDocument(str(path), parse_text(text.encode(), str(path)))


def _check_version(found: _Located | None, if_match: str | None, name: str) -> None:
    """No If-Match: no condition; `*`: the rule must exist; an ETag: it must be the rule's version now."""
    if if_match is None:
        return
    current, wanted = _stored(found).etag if found else None, if_match.strip()
    if wanted == "*" and current is not None:
        return
    if current is None or wanted not in {current, f"W/{current}"}:
        raise ConflictError(f"rule {name!r} changed since it was read (If-Match {if_match}, now "
                            f"{current or 'absent'}): read it again and redo the change")


def _find(documents: dict[Path, Any], name: str) -> _Located | None:
    for path, document in documents.items():
        for group in _groups(document):
            for index, node in enumerate(group.get("rules") or []):
                if isinstance(node, Mapping) and node.get("anomaly") == name:
                    return _Located(path, document, group, index)
    return None


def _groups(document: Any) -> list[CommentedMap]:
    groups = document.get("groups") if isinstance(document, Mapping) else None
    return [g for g in groups or [] if isinstance(g, CommentedMap)]


def _remove(found: _Located) -> None:
    del found.group["rules"][found.index]
    if not found.group["rules"]:  # an empty group goes with its last rule
        found.document["groups"].remove(found.group)


def _stored(found: _Located) -> StoredRule:
    source, group = _plain(found.node), str(found.group.get("name"))
    return StoredRule(str(source.get("anomaly")), group, source, etag(group, source), str(found.path))


def _plain(node: Any) -> Any:
    """Round-trip YAML nodes as plain dicts, lists and scalars (JSON-ready)."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    for kind in (bool, int, float, str):  # ruamel's scalars subclass these
        if isinstance(node, kind):
            return kind(node)
    return node if node is None else str(node)


def _update(node: Any, new: Mapping[str, Any]) -> None:
    """Make a round-trip mapping hold `new`, key by key: the comments of the keys that stay stay with them."""
    for key in [k for k in node if k not in new]:
        del node[key]
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(node.get(key), CommentedMap):
            _update(node[key], value)
        elif key not in node or _plain(node[key]) != value:
            node[key] = _commented(value)


def _commented(node: Any) -> Any:
    if isinstance(node, Mapping):
        return CommentedMap((str(k), _commented(v)) for k, v in node.items())
    if isinstance(node, list):
        return CommentedSeq(_commented(v) for v in node)
    return node


def _yaml() -> YAML:
    yaml = YAML()  # round trip: comments, key order and quoting of what is not edited are kept
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 120
    return yaml


def _dump(document: Any) -> str:
    out = io.StringIO()
    _yaml().dump(document, out)
    return out.getvalue()


def _read_only(path: Path) -> bool:
    """A read-only mount (a ConfigMap), no permission, or a file nobody may write (mode a-w: kept as it is)."""
    if not os.access(path.parent, os.W_OK):
        return True
    return path.exists() and (not os.access(path, os.W_OK) or path.stat().st_mode & 0o222 == 0)


def _replace(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary file beside it, flushed to disk, renamed over it."""
    directory = path.parent
    if _read_only(path):
        raise ConflictError(f"{path} is read-only (a ConfigMap or read-only mount?): change it where it comes "
                            "from (e.g. git), or run with a writable rules file")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ConflictError(f"cannot write {path}: {e.strerror or e}") from e
    with contextlib.suppress(OSError):  # the rename itself survives a crash once the directory is synced
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
