"""Generated metric histories with known anomalies, for tests against real servers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DAY = 86400.0


@dataclass
class Scenario:
    """Series of one metric with a daily cycle and noise; some get a spike in their last samples."""

    end: float
    metric: str = "oa_test_requests"
    series: int = 20
    days: float = 3.0
    step: float = 60.0
    spiked: tuple[int, ...] = (0, 1, 2)
    spike_points: int = 3
    constant: int | None = 19
    gappy: int | None = 18
    short: int | None = 17
    seed: int = 7
    data: list = field(default_factory=list)

    def build(self) -> list[tuple[str, dict[str, str], np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        times = self.end - self.step * np.arange(int(self.days * DAY / self.step))[::-1]
        out = []
        for i in range(self.series):
            base = 100 + 10 * i + 20 * np.sin(2 * np.pi * times / DAY + i)
            values = base + rng.normal(0, 1.0, len(times))
            if i in self.spiked:
                values[-self.spike_points :] += 30.0
            if i == self.constant:
                values = np.full(len(times), 42.0)
            if i == self.gappy:
                values[len(times) // 3 : len(times) // 3 + 300] = np.nan
                values[-200:-100] = np.nan
            if i == self.short:
                values[: -int(0.25 * DAY / self.step)] = np.nan
            out.append((self.metric, {"instance": f"host-{i:02d}", "job": "synthetic"}, times, values))
        self.data = out
        return out
