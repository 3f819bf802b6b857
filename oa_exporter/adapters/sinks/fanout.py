"""Fan-out: one ResultSink that hands every result to several (the /metrics page, remote write, ...)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ...core.domain import RuleScores
from ...core.ports import ResultSink

log = logging.getLogger(__name__)


@runtime_checkable
class Background(Protocol):
    """A sink with work of its own to start and stop (remote write's senders)."""

    async def start(self) -> None:
        """Begin the background work; safe to call again."""

    async def close(self) -> None:
        """Stop it, keeping what is not yet delivered where a restart finds it; safe to call twice."""


class FanOut:
    """ResultSink over several sinks, called in order; one failing sink never keeps results from the others
    (its error is logged with the traceback)."""

    def __init__(self, sinks: Sequence[ResultSink]):
        self.sinks = tuple(sinks)

    def publish(self, scores: RuleScores) -> None:
        for sink in self.sinks:
            _guarded(sink, "publish", sink.publish, scores)

    def flush(self) -> None:
        for sink in self.sinks:
            _guarded(sink, "flush", sink.flush)

    def forget(self, rule: str) -> None:
        for sink in self.sinks:
            _guarded(sink, "forget", sink.forget, rule)

    async def start(self) -> None:
        """Start the sinks that work in the background."""
        for sink in self.sinks:
            if isinstance(sink, Background):
                await sink.start()

    async def close(self) -> None:
        """Stop them; every sink is closed even if one fails."""
        for sink in self.sinks:
            if isinstance(sink, Background):
                try:
                    await sink.close()
                except Exception:
                    log.exception("closing the %s result sink failed", type(sink).__name__)


class FlushOnly:
    """A sink that takes no results, only the per-cycle flush: the /metrics page when results go elsewhere
    keeps re-rendering its self-monitoring."""

    def __init__(self, sink: ResultSink):
        self.sink = sink

    def publish(self, scores: RuleScores) -> None:
        """Results go elsewhere."""

    def flush(self) -> None:
        self.sink.flush()

    def forget(self, rule: str) -> None:
        """Nothing was published here."""


def _guarded(sink: ResultSink, what: str, call: Callable[..., None], *args: Any) -> None:
    try:
        call(*args)
    except Exception:  # a bug in one sink: the others still get the results
        log.exception("the %s result sink failed to %s", type(sink).__name__, what)
