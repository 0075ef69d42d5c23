"""The run-wide limits every connection passes through: a cap on open connections and a rate bucket.

:class:`ConnectionSlots` hands out at most ``count`` slots, one per open connection, waiting
for one to come free, and gives up when the waiter is told to stop. :class:`TokenBucket` spreads
a total rate over every connection: each read takes its bytes and learns how long to wait.
Both are thread-safe and know nothing of HTTP; the bucket's clock is injected.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["ConnectionSlots", "TokenBucket"]

_POLL = 0.1  # how often a thread waiting for a slot looks at its stop switch


class ConnectionSlots:
    """At most ``count`` connections open at once; a waiter leaves as soon as its stop switch is set."""

    def __init__(self, count: int, *, poll: float = _POLL) -> None:
        self._ready = threading.Condition()
        self._free = count
        self._waiting = 0
        self._poll = poll
        self.count = count

    @property
    def free(self) -> int:
        with self._ready:
            return self._free

    @property
    def waiting(self) -> int:
        """How many threads wait for a slot now."""
        with self._ready:
            return self._waiting

    def acquire(self, stop: threading.Event) -> bool:
        """Take one slot, waiting for one; False (and no slot) when ``stop`` is set first."""
        with self._ready:
            self._waiting += 1
            try:
                while self._free == 0:
                    if stop.is_set():
                        return False
                    self._ready.wait(self._poll)
            finally:
                self._waiting -= 1
            if stop.is_set():
                return False
            self._free -= 1
            return True

    def release(self) -> None:
        """Give a slot back; one waiter takes it."""
        with self._ready:
            self._free += 1
            self._ready.notify()

    def wake(self) -> None:
        """Make every waiter look at its stop switch now."""
        with self._ready:
            self._ready.notify_all()


class TokenBucket:
    """A total rate in bytes/s over every connection, with a tenth of a second of burst.

    The bucket may go into debt, so a read larger than the burst still passes, and its reader
    pays for it by waiting.
    """

    def __init__(self, rate: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self._clock = clock
        self.burst = max(1.0, rate / 10)
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> float:
        """Take ``nbytes`` from the bucket; the seconds the caller must wait before going on."""
        rate = self.rate
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            self._tokens -= nbytes
            return 0.0 if self._tokens >= 0 else -self._tokens / rate
