"""File-system events on the rules' directories (watchdog), to reload as soon as a file changes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = logging.getLogger(__name__)


class _Poke(FileSystemEventHandler):
    def __init__(self, on_change: Callable[[], object]):
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("opened", "closed_no_write"):
            self.on_change()


class RulesWatcher:
    """Calls `on_change` (from watchdog's thread) on any change in the directories; stop() is idempotent."""

    def __init__(self, directories: list[Path], on_change: Callable[[], object]):
        self.directories = directories
        self.on_change = on_change
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        observer = Observer()
        for directory in self.directories:
            observer.schedule(_Poke(self.on_change), str(directory), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.debug("watching %s for rule changes", ", ".join(map(str, self.directories)))

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
