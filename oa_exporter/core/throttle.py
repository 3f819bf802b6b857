"""Log lines that repeat at a bounded rate: an outage says so once a period, not once per query."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

REPEAT_PERIOD = 60.0  # seconds between two lines of the same kind about the same thing


class Throttled:
    """Writes a line per key at most once per `period` seconds, and at once when its message changes; the next
    line says how many like it were held back."""

    def __init__(self, logger: logging.Logger, period: float = REPEAT_PERIOD,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.period = period
        self.clock = clock
        self._last: dict[Hashable, tuple[float, str, int]] = {}  # key -> (when written, message, held back since)
        self._lock = threading.Lock()

    def log(self, level: int, key: Hashable, message: str, **kwargs: object) -> bool:
        """Write `message` unless the same one was written for `key` within the period; True when written."""
        now = self.clock()
        with self._lock:
            written, last, held = self._last.get(key, (-float("inf"), "", 0))
            if message == last and now - written < self.period:
                self._last[key] = (written, last, held + 1)
                return False
            self._last[key] = (now, message, 0)
        suffix = f" ({held} more like it in the last {now - written:.0f} s)" if held and message == last else ""
        self.logger.log(level, "%s%s", message, suffix, **kwargs)  # type: ignore[arg-type]
        return True

    def clear(self, key: Hashable) -> None:
        """Forget `key`: its next line is written at once (the trouble ended)."""
        with self._lock:
            self._last.pop(key, None)
