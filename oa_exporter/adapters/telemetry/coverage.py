"""oa_band_coverage_ratio: how often the samples of a rule fell inside their forecast band, lately.

A rule's band is drawn at `forecast.level` %, so about that share of samples should fall inside it. The
share actually seen over the last hour of scoring cycles (every ready series of the rule, every cycle)
tells when a model's bands lie: far below the level, the band is too narrow (alerts will be noisy); at 1
with a level well below 100, too wide (anomalies will be missed).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

WINDOW_SECONDS = 3600.0


class BandCoverage(Collector):
    """Per rule, the cycles of the last `window` seconds as (time, inside, scored); the ratio at render time."""

    def __init__(self, window: float = WINDOW_SECONDS):
        self.window = window
        self._cycles: dict[str, deque[tuple[float, int, int]]] = {}
        self._totals: dict[str, list[int]] = {}
        self._lock = threading.Lock()  # cycles are scored in worker threads, the page renders in another

    def add(self, rule: str, inside: int, scored: int, at: float) -> None:
        """Count one cycle and drop the cycles that left the window."""
        with self._lock:
            cycles = self._cycles.setdefault(rule, deque())
            totals = self._totals.setdefault(rule, [0, 0])
            cycles.append((at, inside, scored))
            totals[0] += inside
            totals[1] += scored
            while cycles and cycles[0][0] <= at - self.window:
                _, old_inside, old_scored = cycles.popleft()
                totals[0] -= old_inside
                totals[1] -= old_scored

    def forget(self, rule: str) -> None:
        with self._lock:
            self._cycles.pop(rule, None)
            self._totals.pop(rule, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "oa_band_coverage_ratio", "Share of the rule's scored samples inside their forecast band over the last "
            "hour of cycles; compare with the rule's forecast.level / 100.", labels=["rule"])
        with self._lock:
            ratios = [(rule, inside / scored) for rule, (inside, scored) in self._totals.items() if scored > 0]
        for rule, ratio in ratios:
            family.add_metric([rule], ratio)
        yield family
