"""Parse functions for the PromQL parser process's tests: the real parser, except on marked expressions.

They run in the parser's child process, which imports them by name: this module imports nothing heavy.
"""

from __future__ import annotations

import os
import signal
import time

from oa_exporter.adapters.config.promql import parse_error


def crash_on_marked(expr: str) -> str | None:
    """Segfault on an expression that mentions `segfault_here`, abort on `abort_here`, else parse."""
    if "segfault_here" in expr:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "abort_here" in expr:
        os.abort()
    return parse_error(expr)


def hang_on_marked(expr: str) -> str | None:
    """Never answer on an expression that mentions `hang_here`, else parse."""
    while "hang_here" in expr:
        time.sleep(3600)
    return parse_error(expr)
