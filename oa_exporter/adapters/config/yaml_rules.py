"""Rules files in YAML: files, directories and globs, parsed with line numbers for every key."""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ...core.domain import ModelSpec, RuleSet
from ...core.errors import Problem, RuleError
from ...core.rules import ExprChecker, ModelChecker, SourceDocument, build_rule_set

RULE_SUFFIXES = (".yaml", ".yml")


class LocatedDict(dict):
    """A YAML mapping that remembers where it and each of its keys are (1-based lines)."""

    line: int = 0
    key_lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings carry line numbers and which refuses duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    mapping = LocatedDict()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def expand(patterns: Sequence[str]) -> list[Path]:
    """Rules files named by files, directories (their *.yaml/*.yml, hidden entries skipped) and globs."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for match in map(Path, matches):
            if match.is_dir():
                found.extend(sorted(p for p in match.iterdir() if _is_rules_file(p)))
            else:
                found.append(match)
    return list(dict.fromkeys(found))


def parse(path: Path) -> SourceDocument:
    """One rules file as a located document; RuleError with file:line when it is not valid YAML."""
    try:
        text = path.read_text()
    except OSError as e:
        raise RuleError([Problem(f"cannot read: {e.strerror or e}", str(path))]) from e
    try:
        return SourceDocument(str(path), yaml.load(text, Loader=_Loader))  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise RuleError([Problem(f"invalid YAML: {e.problem or e}", str(path), line)]) from e


class YamlConfigStore:
    """ConfigStore over YAML rules files."""

    def __init__(
        self,
        patterns: Sequence[str],
        default_model: ModelSpec,
        check_expr: ExprChecker,
        check_model: ModelChecker,
    ):
        self.patterns = list(patterns)
        self.default_model = default_model
        self.check_expr = check_expr
        self.check_model = check_model

    def files(self) -> list[Path]:
        """The rules files the patterns name now."""
        return expand(self.patterns)

    def load(self) -> RuleSet:
        return self.load_files(self.files())

    def version(self) -> str:
        """Hash of which files the patterns name and what they hold: changes whenever a reload would."""
        digest = hashlib.sha256()
        for path in self.files():
            digest.update(str(path).encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError as e:
                digest.update(f"unreadable: {e}".encode())
        return digest.hexdigest()

    def directories(self) -> list[Path]:
        """Directories whose changes may change the rules: watched for events."""
        found = []
        for pattern in self.patterns:
            path = Path(pattern)
            if glob.has_magic(pattern):
                path = _deepest_plain_directory(pattern)
            found.append(path if path.is_dir() else path.parent)
        return list(dict.fromkeys(p for p in found if p.is_dir()))

    def load_files(self, files: Sequence[Path]) -> RuleSet:
        """Parse and validate these files together (rule names must be unique across them)."""
        documents, problems = [], []
        for path in files:
            try:
                documents.append(parse(path))
            except RuleError as e:
                problems.extend(e.problems)
        try:
            rules = build_rule_set(documents, self.default_model, self.check_expr, self.check_model)
        except RuleError as e:
            problems.extend(e.problems)
        if problems:
            raise RuleError(problems)
        return rules


def _deepest_plain_directory(pattern: str) -> Path:
    parts = Path(pattern).parts
    plain = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    return Path(*parts[:plain]) if plain else Path(".")


def _is_rules_file(path: Path) -> bool:
    return path.suffix in RULE_SUFFIXES and not path.name.startswith(".") and path.is_file()
