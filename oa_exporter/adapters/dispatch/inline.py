"""Inline dispatcher: runs a job on the caller's thread, for processes that are already workers (a backtest)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class InlineDispatcher:
    """JobDispatcher that runs fn(*args) at once; a backtest worker has no event loop to keep free."""

    async def run(self, fn: Callable[..., T], *args: Any, gpu: bool = False) -> T:
        return fn(*args)

    async def split(self, series: int, points: int) -> tuple[int, int]:
        """One job: a separable fit is not split here."""
        return series, 1

    async def close(self) -> None:
        pass
