"""Rules files in YAML: files, directories and globs, parsed with line numbers for every key."""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.resolver import Resolver

from ...core.domain import ModelSpec, RuleSet
from ...core.errors import Problem, RuleError
from ...core.rules import EngineDefaults, ExprChecker, ModelChecker, SourceDocument, build_rule_set

RULE_SUFFIXES = (".yaml", ".yml")


MAX_FILE_BYTES = 4 << 20  # a rules file of 10,000 rules is ~2 MB
MAX_DEPTH = 32  # nesting of mappings and lists; a rules file needs 6
MAX_NODES = 200_000  # nodes once aliases are expanded: a small file of nested aliases can stand for billions


class LocatedDict(dict):
    """A YAML mapping that remembers where it and each of its keys are (1-based lines)."""

    line: int = 0
    key_lines: dict[Any, int]


def _loader_base() -> Any:
    """libyaml's parser (6x faster) under Python's composer, where nesting and aliases can be bounded."""
    try:
        from yaml._yaml import CParser
    except ImportError:  # pragma: no cover - PyYAML built without libyaml
        return yaml.SafeLoader

    class Base(Composer, CParser, SafeConstructor, Resolver):
        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            Composer.__init__(self)

    return Base


class _Loader(_loader_base()):  # type: ignore[misc]
    """A safe loader whose mappings carry line numbers, which refuses duplicate keys, deep nesting, alias bombs
    and lone surrogates, and which reports every failure as a YAML error with a position."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self.line = 1  # of the node being composed: where an unexpected failure is reported

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            mark = self.peek_event().start_mark
            self.line = mark.line + 1
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        _bound_expanded_size(node)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            value = super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as e:  # noqa: BLE001 - a constructor's own failure, e.g. a date 2020-02-30
            raise ConstructorError(None, None, f"cannot read value: {e}", node.start_mark) from e
        if isinstance(value, str) and not _encodes(value):
            raise ConstructorError(None, None, "text is not valid Unicode (a lone surrogate)", node.start_mark)
        return value


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _bound_expanded_size(root: yaml.Node | None) -> None:
    """Refuse a document whose node graph, with every alias expanded, exceeds MAX_NODES (cycles included)."""
    stack, seen = [root], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            assert root is not None
            raise ComposerError(None, None, f"more than {MAX_NODES} values once aliases are expanded",
                                root.start_mark)
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


class LocatedList(list):
    """A YAML sequence that remembers where it and each of its items are (1-based lines)."""

    line: int = 0
    item_lines: list[int]


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    items = LocatedList(loader.construct_object(child, deep=True) for child in node.value)
    items.line = node.start_mark.line + 1
    items.item_lines = [child.start_mark.line + 1 for child in node.value]
    return items


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    mapping = LocatedDict()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable) or isinstance(key, list | dict):
            raise ConstructorError(None, None, "a mapping key must be a plain value", key_node.start_mark)
        if key in mapping:
            raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


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
        data = _read(path)
    except OSError as e:
        raise RuleError([Problem(f"cannot read: {e.strerror or e}", str(path))]) from e
    return SourceDocument(str(path), parse_text(data, str(path)))


def _read(path: Path) -> bytes:
    with path.open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(f"larger than {MAX_FILE_BYTES >> 20} MiB")
    return data


def parse_text(data: bytes, where: str) -> Any:
    """The YAML document in `data`; RuleError at `where`:line for anything that is not a valid document."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RuleError([Problem(f"not UTF-8 text: byte 0x{data[e.start]:02x} cannot be decoded", where, line)]) from e
    loader = None
    try:
        loader = _Loader(text)  # refuses unprintable characters at once
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise RuleError([Problem(f"invalid YAML: {e.problem or e}", where, line)]) from e
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise RuleError([Problem(f"invalid YAML: unacceptable character {e.character!r}", where, line)]) from e
    except (yaml.YAMLError, RecursionError, MemoryError) as e:
        line = loader.line if loader else 1
        raise RuleError([Problem(f"invalid YAML: {type(e).__name__}: {e}", where, line)]) from e
    finally:
        if loader is not None:
            loader.dispose()


class YamlConfigStore:
    """ConfigStore over YAML rules files."""

    def __init__(
        self,
        patterns: Sequence[str],
        default_model: ModelSpec,
        check_expr: ExprChecker,
        check_model: ModelChecker,
        engine_defaults: EngineDefaults | None = None,
    ):
        self.patterns = list(patterns)
        self.default_model = default_model
        self.check_expr = check_expr
        self.check_model = check_model
        self.engine_defaults = engine_defaults

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
            rules = build_rule_set(documents, self.default_model, self.check_expr, self.check_model,
                                   self.engine_defaults)
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
