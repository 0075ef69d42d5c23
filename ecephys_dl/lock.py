"""One run at a time per cache (or per shard): a lock file that names its holder.

The lock is ``<cache>/.ecephys-dl/<name>.lock``. It is held with ``fcntl.flock``, which the
kernel releases when the holder dies, and it carries the holder's host, pid, start time and a
heartbeat refreshed every few seconds, so another run can say who holds it, and a lock left by a
dead process (this host) or by a silent host (no heartbeat for ``stale_after`` seconds, for
filesystems where flock does not reach across hosts) is taken over with a note.

Correctness never depends on the lock: partial files carry their own state, files reach their
final name by atomic renames after verification, and records are written whole.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecephys_dl.errors import CacheError, LockHeld
from ecephys_dl.layout import CacheLayout

# LockHeld lives in ecephys_dl.errors; it is named here too, where it is raised.
__all__ = ["Holder", "LockHeld", "RunLock"]

STALE_AFTER = 600.0
HEARTBEAT = 15.0


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: str
    heartbeat: float
    command: str = ""

    def describe(self) -> str:
        return f"{self.command or 'a run'} (pid {self.pid} on {self.host}, since {self.since})"

    def alive_here(self) -> bool:
        """Whether the holder is a live process on this host (only answerable for this host)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _read_holder(data: bytes) -> Holder | None:
    try:
        raw = json.loads(data) if data.strip() else None
        if not isinstance(raw, dict):
            return None
        return Holder(str(raw["host"]), int(raw["pid"]), str(raw["since"]), float(raw["heartbeat"]), str(raw.get("command", "")))
    except (ValueError, KeyError, TypeError):
        return None


class RunLock:
    """``with RunLock(cache, "run", command="fetch"):`` — raises :class:`LockHeld` (exit 3) when taken."""

    def __init__(self, cache_dir: Path, name: str = "run", *, command: str = "", wait: bool = False,
                 stale_after: float = STALE_AFTER, heartbeat: float = HEARTBEAT, notes: Any = None) -> None:  # fmt: skip
        self.path = CacheLayout(Path(cache_dir)).lock_path(name)
        self.command = command
        self.wait = wait
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.notes = notes  # callable(str) for "taking over", "waiting for" messages
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def _note(self, message: str) -> None:
        if self.notes is not None:
            self.notes(message)

    def _write(self) -> None:
        assert self._fd is not None
        data = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": self._since, "heartbeat": time.time(),
                           "command": self.command}).encode()  # fmt: skip
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def _try(self) -> Holder | None:
        """Take the lock, or return who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Never through a link: a planted link must not get another file truncated.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise CacheError(f"the lock file {self.path} is not a regular file: {error.strerror}", hint="remove it, then run again") from error
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CacheError(f"the lock file {self.path} is not a regular file", hint="remove it, then run again")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(os.pread(fd, 4096, 0))
            os.close(fd)
            return holder or Holder("?", 0, "?", time.time(), "another run")
        holder = _read_holder(os.pread(fd, 4096, 0))
        if holder is not None:
            fresh = time.time() - holder.heartbeat < self.stale_after
            if holder.host != socket.gethostname() and fresh:
                # flock does not reach across hosts on every network filesystem: trust the heartbeat.
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                return holder
            if holder.pid != os.getpid() or holder.host != socket.gethostname():
                reason = "no heartbeat since" if holder.host != socket.gethostname() else "its process is gone;"
                self._note(f"taking over a stale lock from {holder.describe()}: {reason} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(holder.heartbeat))}")
        self._fd = fd
        self._write()
        return None

    def acquire(self) -> None:
        waited = False
        while True:
            holder = self._try()
            if holder is None:
                break
            if not self.wait:
                raise LockHeld(f"another run holds the lock on this cache: {holder.describe()}", hint="wait for it to finish, or pass --wait")
            if not waited:
                self._note(f"waiting for {holder.describe()} to finish")
                waited = True
            time.sleep(1.0)
        self._thread = threading.Thread(target=self._beat, name="lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self._write()
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
