"""Fixtures: a daemon wired with fakes, closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.unit.fakes import FakeTsdb
from tests.unit.harness import Daemon, write_rules

StartDaemon = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[StartDaemon]:
    """Start a daemon on a rules text and a fake TSDB; every daemon of a test shares tmp_path/models."""
    started: list[Daemon] = []

    async def start(rules: str, tsdb: FakeTsdb, rules_file: str = "rules.yaml", **kwargs) -> Daemon:
        path = write_rules(tmp_path / rules_file, rules)
        daemon = Daemon(path, tsdb, tmp_path / "models", **kwargs)
        started.append(daemon)
        assert await daemon.load()
        return daemon

    yield start
    for daemon in started:
        await daemon.close()
