"""Generated metrics for the demo: daily and weekly seasonality, noise, and anomalies on a schedule.

Every value is a pure function of (series, time), so any history is available at once and a range
query and an instant query always agree. Before the demo starts the series are clean; from
`ANOMALY_START` seconds after it, one series after another misbehaves for `ANOMALY_LENGTH` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESOLUTION = 15.0  # seconds between generated samples, like a scrape interval
HISTORY = 15 * 86400.0
ANOMALY_START = 30.0
ANOMALY_LENGTH = 240.0
NOISE_LIMIT = 3.0


@dataclass(frozen=True)
class DemoSeries:
    """One generated series: a level, how strongly it follows the day, its noise, how it misbehaves."""

    name: str
    labels: tuple[tuple[str, str], ...]
    level: float
    daily: float
    noise: float
    anomaly: float  # multiplier applied to the level during its anomaly (>1 spike, <1 drop)

    @property
    def metric(self) -> dict[str, str]:
        return dict(sorted({"__name__": self.name, **dict(self.labels)}.items()))


def catalogue() -> list[DemoSeries]:
    """The demo's series: request rates per service and instance, CPU, queue depth."""
    series = []
    for i, service in enumerate(("checkout", "search", "login", "cart")):
        for j, instance in enumerate(("web-1", "web-2")):
            labels = (("instance", instance), ("job", "shop"), ("service", service))
            series.append(DemoSeries("demo_http_requests_per_second", labels, 120.0 + 60 * i + 10 * j, 0.45,
                                     0.04, 2.2 if (i + j) % 2 == 0 else 0.25))
    for j, instance in enumerate(("db-1", "db-2", "cache-1", "cache-2")):
        series.append(DemoSeries("demo_cpu_utilisation_ratio", (("instance", instance), ("job", "node")),
                                 0.35 + 0.05 * j, 0.35, 0.05, 2.3))
    for queue in ("emails", "payments"):
        series.append(DemoSeries("demo_queue_depth", (("job", "worker"), ("queue", queue)), 40.0, 0.2, 0.1, 4.0))
    return series


class DemoSignals:
    """Values of the catalogue's series at any times up to now."""

    def __init__(self, started_at: float, series: list[DemoSeries] | None = None, seed: int = 11):
        self.started_at = started_at
        self.series = series or catalogue()
        self.seed = seed
        self._level = np.array([s.level for s in self.series])[:, None]
        self._daily = np.array([s.daily for s in self.series])[:, None]
        self._noise = np.array([s.noise for s in self.series])[:, None]
        self._anomaly = np.array([s.anomaly for s in self.series])[:, None]

    def values(self, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Values of series `rows` at `times` (each snapped to the sample at or before it)."""
        t = np.floor(np.asarray(times, dtype=np.float64) / RESOLUTION) * RESOLUTION
        day = 2 * np.pi * (t / 86400.0 - 0.35)
        weekend = ((np.floor(t / 86400.0) + 4) % 7 >= 5).astype(float)  # 1970-01-01 was a Thursday
        shape = 1 + self._daily[rows] * np.sin(day) - 0.15 * weekend
        noise = np.clip(_gaussian(rows, t, self.seed), -NOISE_LIMIT, NOISE_LIMIT)
        noisy = shape * (1 + self._noise[rows] * noise)
        return self._level[rows] * noisy * self._anomaly_factor(rows, t)

    def anomalous(self, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Whether each series misbehaves at each time (the demo's ground truth)."""
        since = np.asarray(times, dtype=np.float64)[None, :] - self.started_at - ANOMALY_START
        turn = np.floor(since / ANOMALY_LENGTH) % len(self.series)
        return (since >= 0) & (turn == rows[:, None])

    def _anomaly_factor(self, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
        return np.where(self.anomalous(rows, times), self._anomaly[rows], 1.0)


def _gaussian(rows: np.ndarray, times: np.ndarray, seed: int) -> np.ndarray:
    """Standard normal noise that depends only on (series, sample time): a hash, then Box-Muller."""
    index = (times / RESOLUTION).astype(np.int64)[None, :]
    u1 = _uniform(index * 2 + 1, rows[:, None], seed)
    u2 = _uniform(index * 2, rows[:, None], seed)
    return np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)


def _uniform(index: np.ndarray, row: np.ndarray, seed: int) -> np.ndarray:
    x = (index * 0x9E3779B1 + row * 0x85EBCA77 + seed * 0xC2B2AE3D) & 0xFFFFFFFF
    x = (x ^ (x >> 16)) * 0x45D9F3B & 0xFFFFFFFF
    x = (x ^ (x >> 16)) * 0x45D9F3B & 0xFFFFFFFF
    x = x ^ (x >> 16)
    return (x.astype(np.float64) + 0.5) / 2**32
