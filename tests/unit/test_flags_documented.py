"""Every flag of every command is in docs/configuration.md, and each command's --help lists exactly the flags
documented for it: a flag added without documentation, or offered by a command that does not use it, fails here."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path

import pytest

from oa_exporter.entrypoints.cli import _parser
from oa_exporter.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TICKED = re.compile(r"`([^`]+)`")


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def offered(parser: argparse.ArgumentParser) -> set[str]:
    """The flags a command's --help lists (a --no-X of a boolean flag counts as X)."""
    flags = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    return {f for f in flags if not (f.startswith("--no-") and "--" + f[5:] in flags)}


def flags_in(cell: str) -> list[str]:
    """`--a.b.c` / `.d` / `--x 'Name: value'` -> ['--a.b.c', '--a.b.d', '--x']: a shorthand `.d` replaces the
    last part of the cell's first flag."""
    found: list[str] = []
    for token in TICKED.findall(cell):
        token = token.split(" ")[0]
        if token.startswith("--no-"):
            continue
        if token.startswith("--"):
            found.append(token)
        elif token.startswith(".") and found:
            found.append(found[0].rsplit(".", 1)[0] + token)
    return found


def table_rows(header: str) -> list[list[str]]:
    lines = DOC.read_text().splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def documented() -> tuple[dict[str, set[str]], dict[str, str]]:
    """Per command, the flags the docs give it; per flag, its row's variable cell."""
    per_command: dict[str, set[str]] = {}
    variables: dict[str, str] = {}
    for flag_cell, variable, used_by, *_ in table_rows("| flag | variable | commands | default | meaning |"):
        for flag in flags_in(flag_cell):
            variables[flag] = variable
            for command in TICKED.findall(used_by):
                per_command.setdefault(command, set()).add(flag)
    for command, flag_cell, _ in table_rows("| command | flag | meaning |"):
        per_command.setdefault(command.strip("`"), set()).update(flags_in(flag_cell))
    return per_command, variables


@pytest.mark.parametrize("command", list(commands()))
def test_each_command_offers_exactly_the_flags_documented_for_it(command):
    per_command, _ = documented()
    help_flags, doc_flags = offered(commands()[command]), per_command.get(command, set())
    assert help_flags - doc_flags == set(), f"`oa-exporter {command}` flags missing from {DOC.name}"
    assert doc_flags - help_flags == set(), f"{DOC.name} gives `{command}` flags its --help does not list"


def test_every_setting_is_documented_with_its_variable():
    _, variables = documented()
    for f in fields(Settings):
        flag, env = f.metadata["flag"], f.metadata["env"]
        assert flag in variables, f"{flag} is not in {DOC.name}"
        cell = variables[flag]
        shorthands = [t for t in TICKED.findall(cell) if t.startswith("_")]
        assert env in cell or any(env.endswith(t) for t in shorthands), f"{flag}: {env} not in its row ({cell})"


def test_every_flag_has_help_text():
    for command, parser in commands().items():
        for action in parser._actions:
            if action.option_strings and action.option_strings[0] != "-h":
                assert action.help, f"`oa-exporter {command} {action.option_strings[0]}` has no help text"
