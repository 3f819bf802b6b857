"""A daemon wired through bootstrap() with fakes, driven cycle by cycle at times the test chooses."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

from oa_exporter.adapters.stores.local import LocalArtifactStore
from oa_exporter.bootstrap import App, bootstrap
from oa_exporter.core.domain import RuleStatus
from oa_exporter.core.ports import ArtifactStore, JobQueue
from oa_exporter.settings import Settings
from tests.unit.fakes import FakeClock, FakeTsdb, InlineDispatcher, value, values

END = 1_700_006_400.0  # a midnight (UTC), on the one-minute grid


class Daemon:
    """The wired app plus its fakes; `cycle()` scores every group once at the clock's time."""

    def __init__(self, rules: Path, tsdb: FakeTsdb, models: Path, now: float = END,
                 store: ArtifactStore | None = None, queue: JobQueue | None = None, **settings: Any):
        self.clock = FakeClock(now)
        self.tsdb = tsdb
        self.dispatcher = InlineDispatcher()
        self.store = store if store is not None else LocalArtifactStore(models)
        settings.setdefault("history_max_bytes", 0)  # every fit reads the fake TSDB whole (tests/unit/test_history.py)
        self.app: App = bootstrap(
            Settings(rules=(str(rules),), **settings), tsdb=tsdb, store=self.store,
            dispatcher=self.dispatcher, queue=queue, clock=self.clock,
        )

    async def load(self) -> bool:
        """(Re)load the rules; the group tickers are stopped so that only the test drives cycles."""
        ok = await self.app.load_rules()
        await self.app.runner.pause()  # they would tick on real time, racing the test's cycles
        return ok

    async def cycle(self, at: float | None = None) -> bytes:
        """One scoring cycle of every group at `at` (default: the clock); returns the /metrics page."""
        if at is not None:
            self.clock.now = at
        for group in self.app.rules.groups:
            await self.app.runner.cycle(group, self.clock.now)
        return self.page

    async def fits_done(self) -> None:
        """Wait for every fit started so far."""
        await asyncio.gather(*(s.fit_task for s in self.app.runner.slots.values() if s.fit_task))

    async def trained(self, at: float | None = None) -> bytes:
        """A cycle that starts the fits, the fits, and a cycle that scores with the models."""
        await self.cycle(at)
        await self.fits_done()
        return await self.cycle()

    @property
    def page(self) -> bytes:
        return self.app.page.page()

    def scores(self, rule: str) -> dict[str, float]:
        return values(self.page, "oa_anomaly_score", rule=rule)

    def states(self, rule: str) -> dict[str, float]:
        return values(self.page, "oa_rule_series", by="state", rule=rule)

    def healthy(self, rule: str) -> float | None:
        return value(self.page, "oa_rule_healthy", rule=rule)

    def fits(self, rule: str) -> float:
        return value(self.page, "oa_fits_total", rule=rule) or 0.0

    def rejected(self, rule: str, reason: str) -> float:
        return value(self.page, "oa_artifact_rejected_total", rule=rule, reason=reason) or 0.0

    def api(self) -> dict[str, RuleStatus]:
        """GET /api/v1/rules as the app computes it, by rule name."""
        return {status.name: status for status in self.app.rules_status()}

    async def close(self) -> None:
        await self.app.close()


def write_rules(path: Path, text: str) -> Path:
    """Write a rules file, dedented, and return its path."""
    path.write_text(textwrap.dedent(text).lstrip())
    return path
