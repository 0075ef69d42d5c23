"""Run events as JSON lines (``--log-file``), and fanning events out to several listeners.

Each line is one JSON object with ``time`` (UTC, ISO 8601 with milliseconds), ``event`` and the
event's fields: ``run-start``, ``run-end``, ``started``, ``resumed``, ``retried``, ``restarted``,
``note``, ``skipped``, ``verified``, ``failed``. Lines are appended whole (one ``write`` each, the
file opened in append mode), so several runs may share one log file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ecephys_dl.delivery import FetchListener
    from ecephys_dl.retry import RetryNotice

__all__ = ["JsonEventLog", "Tee"]


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class JsonEventLog:
    """A fetch listener that appends one JSON object per event to a file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: object) -> None:
        line = json.dumps({"time": _now(), "event": event, "pid": os.getpid(), **fields}, default=str) + "\n"
        with self._lock:
            os.write(self._fd, line.encode())

    def close(self) -> None:
        os.close(self._fd)

    # The fetch listener protocol.
    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        if resumed_from:
            self.emit("resumed", file=name, size=size, offset=resumed_from)
        else:
            self.emit("started", file=name, size=size)

    def advanced(self, name: str, nbytes: int) -> None:
        return None

    def retried(self, name: str, notice: RetryNotice) -> None:
        self.emit("retried", file=name, attempt=notice.attempt, wait=round(notice.wait, 3), reason=notice.reason)

    def restarted(self, name: str, reason: str) -> None:
        self.emit("restarted", file=name, reason=reason)

    def note(self, name: str, message: str) -> None:
        self.emit("note", file=name, message=message)

    def skipped(self, name: str, reason: str) -> None:
        self.emit("skipped", file=name, reason=reason)

    def verified(self, name: str, size: int) -> None:
        self.emit("verified", file=name, size=size)

    def failed(self, name: str, message: str, hint: str | None = None) -> None:
        self.emit("failed", file=name, message=message, **({"hint": hint} if hint else {}))


class Tee:
    """Sends every fetch event to each of several listeners (``None`` ones are left out)."""

    def __init__(self, *listeners: FetchListener | None) -> None:
        self._listeners = [listener for listener in listeners if listener is not None]

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        for listener in self._listeners:
            listener.started(name, size, resumed_from)

    def advanced(self, name: str, nbytes: int) -> None:
        for listener in self._listeners:
            listener.advanced(name, nbytes)

    def retried(self, name: str, notice: RetryNotice) -> None:
        for listener in self._listeners:
            listener.retried(name, notice)

    def restarted(self, name: str, reason: str) -> None:
        for listener in self._listeners:
            listener.restarted(name, reason)

    def note(self, name: str, message: str) -> None:
        for listener in self._listeners:
            listener.note(name, message)

    def skipped(self, name: str, reason: str) -> None:
        for listener in self._listeners:
            listener.skipped(name, reason)

    def verified(self, name: str, size: int) -> None:
        for listener in self._listeners:
            listener.verified(name, size)

    def failed(self, name: str, message: str, hint: str | None = None) -> None:
        for listener in self._listeners:
            listener.failed(name, message, hint)
