"""What the demo prints while it runs: a line when a series starts or stops paging (score above 1)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping

import numpy as np

from ..core.domain import RuleScores, SeriesKey


def _stdout(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def series_name(rule: str, labels: Mapping[str, str]) -> str:
    """`rule{label="value",...}`: the rule and the series' own labels (its metric name left out)."""
    shown = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{rule}{{{shown}}}"


class PagingLines:
    """ResultSink that writes one line per series whose paging state changed since the rule's last cycle."""

    def __init__(self, write: Callable[[str], None] = _stdout):
        self.write = write
        self._paging: dict[str, set[SeriesKey]] = {}
        self._lock = threading.Lock()  # sinks are called from worker threads

    def publish(self, scores: RuleScores) -> None:
        rule = scores.rule.name
        paging_rows = np.flatnonzero(scores.score > 1.0)  # NaN (not ready) compares False: not paging
        now = {scores.keys[i]: int(i) for i in paging_rows.tolist()}
        present = set(scores.keys)
        with self._lock:
            before = self._paging.get(rule, set())
            self._paging[rule] = set(now)
        for key, row in now.items():
            if key not in before:
                self.write(f"anomaly: {series_name(rule, scores.labels[row])} score {scores.score[row]:.1f}")
        for key in before - set(now):
            if key in present:
                row = scores.keys.index(key)
                self.write(f"resolved: {series_name(rule, scores.labels[row])} score {scores.score[row]:.1f}")

    def flush(self) -> None:
        """Lines are written as results arrive."""

    def forget(self, rule: str) -> None:
        with self._lock:
            self._paging.pop(rule, None)
