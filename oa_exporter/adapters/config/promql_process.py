"""The PromQL parser in a child process: a parse that crashes or runs away costs one rule's error.

The parser is native code. The bounds in promql.py keep the expressions it sees small, but a crash they did
not foresee (a segfault, a stack overflow, an allocation failure) would otherwise take the daemon with it.
Here one long-lived child (a fresh interpreter that imports only the parser) parses; its address
space is limited, and every answer must come within `timeout`. The exprs of a reload go in one batch and
come back one answer each, in order; when the child dies or falls silent, the expression it was on gets
`the PromQL parser failed on this expression (...)`, a new child starts, and the rest of the batch goes on.
Answers are kept per expression string, so a reload parses only what changed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from typing import Any, cast

from .promql import bound_error, parse_error

log = logging.getLogger(__name__)
Parse = Callable[[str], "str | None"]  # the parser's message, or None when the expression parses
DEFAULT_TIMEOUT = 10.0  # seconds per expression; a bounded parse takes at most ~35 ms
DEFAULT_MEMORY = 512 << 20  # the child's address space; a bounded parse takes at most ~50 MB
START_TIMEOUT = 60.0  # seconds for a new child to import the parser, not counted in `timeout`
DEFAULT_CACHE = 8192  # expressions whose answers are kept (the current reload's are always kept)
# The child's program: this process's import path, then serve() on the pipes and the parse function named
_CHILD = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
          "from oa_exporter.adapters.config.promql_process import serve; serve(sys.argv[2:])")


class PromqlChecker:
    """ExprChecker for rules: bounds checked here, the parse in a child process, answers cached."""

    def __init__(self, parse: Parse = parse_error, timeout: float = DEFAULT_TIMEOUT,
                 memory: int = DEFAULT_MEMORY, cache_size: int = DEFAULT_CACHE):
        self.parse = parse  # runs in the child: a module-level function (it travels by name)
        self.timeout = timeout
        self.memory = memory
        self.cache_size = cache_size
        self._cache: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._ready = False  # the child said it has imported the parser
        self._owner = os.getpid()  # a forked copy of this object must not talk over its parent's pipes

    def __call__(self, expr: str) -> str | None:
        return self.check_all([expr])[expr]

    def start(self) -> None:
        """Start the child now, so that its start-up overlaps what the caller does before the first check."""
        with self._lock:
            self._connection()

    def check_all(self, exprs: Iterable[str]) -> dict[str, str | None]:
        """Each expression's problem (None when it parses), parsing the new ones in one round trip."""
        wanted = list(dict.fromkeys(exprs))
        with self._lock:
            missing = [e for e in wanted if e not in self._cache]
            unstarted: dict[str, str | None] = {}  # not kept: the next load tries a new child
            if missing:
                if len(self._cache) + len(missing) > self.cache_size:
                    self._cache = {e: self._cache[e] for e in wanted if e in self._cache}
                self._cache.update(self._checked(missing, unstarted))
            return {e: unstarted[e] if e in unstarted else self._cache[e] for e in wanted}

    def close(self) -> None:
        """Stop the child (a later check starts another); safe to call twice."""
        with self._lock:
            self._stop()

    def _checked(self, exprs: list[str], unstarted: dict[str, str | None]) -> dict[str, str | None]:
        results: dict[str, str | None] = {}
        pending = []
        for expr in exprs:
            bound = bound_error(expr)
            if bound:
                results[expr] = _invalid(bound)
            else:
                pending.append(expr)
        while pending:
            failure = self._started()
            if failure is not None:  # no parser to ask: every expression waiting gets why
                log.error("the PromQL parser process did not start: %s", failure)
                unstarted.update((e, f"the PromQL parser did not start ({failure})") for e in pending)
                break
            answers, failure = self._round_trip(pending)
            results.update(zip(pending, map(_invalid, answers)))
            if failure is None:
                break
            culprit = pending[len(answers)]
            log.warning("the PromQL parser failed (%s) on an expression of %d characters; a new parser process "
                        "takes the rest", failure, len(culprit))
            results[culprit] = f"the PromQL parser failed on this expression ({failure})"
            pending = pending[len(answers) + 1:]
        return results

    def _started(self) -> str | None:
        """None once the child is ready to parse, else why it is not."""
        try:
            _, from_child = self._connection()
        except OSError as e:  # no process to be had (descriptors, memory)
            return f"{type(e).__name__}: {e}"
        if self._ready:
            return None
        try:
            if not from_child.poll(START_TIMEOUT):
                self._stop()
                return f"not ready within {START_TIMEOUT:g} s"
            from_child.recv()
        except (EOFError, OSError):
            return self._died()
        self._ready = True
        return None

    def _round_trip(self, exprs: list[str]) -> tuple[list[str | None], str | None]:
        """The child's answers in order, up to the first expression it gave none for, and why it gave none."""
        to_child, from_child = self._connection()
        answers: list[str | None] = []
        try:
            to_child.send(exprs)
            for _ in exprs:
                if not from_child.poll(self.timeout):
                    self._stop()
                    return answers, f"no answer within {self.timeout:g} s"
                answers.append(from_child.recv())
        except (EOFError, OSError):
            return answers, self._died()
        return answers, None

    def _connection(self) -> tuple[Connection, Connection]:
        if self._owner != os.getpid():  # forked: the child and its pipes are the parent's, leave them be
            self._child = self._to_child = self._from_child = None
            self._ready, self._owner = False, os.getpid()
        if self._child is not None and self._child.poll() is None and self._to_child and self._from_child:
            return self._to_child, self._from_child
        self._stop()
        child_reads, to_child = os.pipe()
        from_child, child_writes = os.pipe()
        path = json.dumps([p for p in sys.path if p])
        target = f"{self.parse.__module__}:{self.parse.__qualname__}"
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, path, str(child_reads), str(child_writes), target,
                 str(self.memory)], stdin=subprocess.DEVNULL, pass_fds=(child_reads, child_writes))
        finally:
            os.close(child_reads)
            os.close(child_writes)
        self._to_child, self._from_child = Connection(to_child, readable=False), Connection(from_child, writable=False)
        return self._to_child, self._from_child

    def _died(self) -> str:
        code = None
        if self._child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._child.wait(5)
        self._stop()
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"its process was killed by {signal.Signals(-code).name}"
        return f"its process exited with code {code}"

    def _stop(self) -> None:
        for conn in (self._to_child, self._from_child):
            if conn is not None:
                conn.close()
        if self._child is not None:
            if self._child.poll() is None:
                self._child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(5)
        self._child = self._to_child = self._from_child = None
        self._ready = False


def _invalid(message: str | None) -> str | None:
    return None if message is None else f"invalid PromQL in 'expr': {message}"


def serve(argv: Sequence[str]) -> None:
    """The child: answer each batch one expression at a time, until the daemon closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle; it stops this child
    reads, writes, target, memory = argv
    parse = _resolve(target)
    _limit_memory(int(memory))
    requests, answers = Connection(int(reads), writable=False), Connection(int(writes), readable=False)
    answers.send("ready")
    while True:
        try:
            batch = requests.recv()
        except (EOFError, OSError):
            return
        for expr in batch:
            answers.send(_answer(parse, expr))


def _resolve(target: str) -> Parse:
    """The function `module:qualified.name` names."""
    module, _, name = target.partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return cast(Parse, found)


def _answer(parse: Parse, expr: str) -> str | None:
    try:
        return parse(expr)
    except Exception as e:  # noqa: BLE001 - whatever the parser raises is that expression's error
        return f"{type(e).__name__}: {e}"


def _limit_memory(memory: int) -> None:
    """Cap the address space at `memory`, or at the hard limit this process inherited when that is lower."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
