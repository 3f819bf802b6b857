"""Shared checks of what operators deploy (image, compose, Helm chart): the validators' binaries, and that every
oa-exporter command line and OA_* variable in them is one the program knows."""

from __future__ import annotations

import os
import shutil
import sysconfig
from dataclasses import fields
from pathlib import Path

import pytest

from oa_exporter.entrypoints.cli import _parser
from oa_exporter.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    """A validator installed beside this interpreter (pip's scripts folder) or on PATH; fails when missing."""
    places = [Path(sysconfig.get_path("scripts")), Path(sysconfig.get_path("scripts", f"{os.name}_user"))]
    found = next((str(p / name) for p in places if (p / name).exists()), None) or shutil.which(name)
    if not found:
        pytest.fail(f"`{name}` is not installed: pip install -e '.[test]' (CI installs it in .ci/run)")
    return found


def oa_variables() -> set[str]:
    """Every OA_* variable that Settings reads."""
    return {f.metadata["env"] for f in fields(Settings)}


def assert_settings_accept(environ: dict[str, str], where: str) -> None:
    """Each OA_* name is one Settings reads (a typo would be silently ignored) and its value is one it takes."""
    unknown = sorted({n for n in environ if n.startswith("OA_")} - oa_variables())
    assert not unknown, f"{where}: oa-exporter reads no variable {unknown}"
    try:
        Settings.from_env(environ)
    except ValueError as e:
        raise AssertionError(f"{where}: {e}") from None


def assert_accepted_command(args: list[str], where: str) -> str:
    """`oa-exporter ARGS` parses (the subcommand exists and takes these flags); returns the subcommand."""
    try:
        parsed = _parser().parse_args(args)
    except SystemExit as e:
        raise AssertionError(f"{where}: `oa-exporter {' '.join(args)}` is refused (exit {e.code})") from None
    assert parsed.command, f"{where}: `oa-exporter {' '.join(args)}` names no command"
    return str(parsed.command)
