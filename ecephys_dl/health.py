"""How each source of a run is serving, measured as it runs, and where the next request goes.

A run may fetch one file's pieces from several sources (the warehouse, the S3 mirror, the DANDI
archive). :class:`SourceHealth` is what all transfers of the run share about them: the
connections open to each (at most ``cap`` per source), the throughput of each connection, the
bytes, errors and stalls, and the sources dropped for the whole run. :func:`pick` is the
decision of which source the next request goes to, a pure function of :class:`SourceView`:

- a source is never picked while it has no free connection, or when it just failed the piece;
- a source not yet measured is tried first (fewest connections, then the run's order), so every
  source shows what it can do;
- then the one whose connections bring the most bytes per second: a fast source gets more
  connections than a slow one, up to its cap.

No I/O; thread-safe; the clock is injected.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

__all__ = ["Failure", "SourceHealth", "SourceStats", "SourceView", "pick"]

# A source dropped for this many files is dropped for the rest of the run.
DROPS_FOR_RUN = 3
# Weight of the newest request in a source's per-connection speed (an exponential average).
_SMOOTHING = 0.3
_POLL = 0.1  # how often a thread waiting for a connection looks at its stop switch


class Failure(enum.StrEnum):
    """How a request to a source went wrong."""

    ERROR = "error"  # a transport error, a 5xx, a body that is not the file
    STALL = "stall"  # no byte for --stall-timeout, or slower than --min-speed
    WRONG = "wrong"  # an answer no retry can mend: another size or version, ranges ignored, 4xx


@dataclass(frozen=True)
class SourceView:
    """What :func:`pick` weighs of one source: its place in the run's order, its connections, its speed."""

    name: str
    order: int
    active: int
    cap: int | None  # None: no cap of its own
    speed: float | None  # bytes/s per connection, None until a request finished

    @property
    def room(self) -> bool:
        return self.cap is None or self.active < self.cap


def pick(views: Sequence[SourceView], avoid: Collection[str] = ()) -> str | None:
    """The source the next request goes to, or None when every candidate is full or avoided.

    ``views`` are the sources still usable for the file; ``avoid`` those that just failed the piece.
    """
    open_ = [v for v in views if v.room and v.name not in avoid]
    if not open_:
        return None
    fresh = [v for v in open_ if v.speed is None]
    if fresh:
        return min(fresh, key=lambda v: (v.active, v.order)).name
    return max(open_, key=lambda v: (v.speed or 0.0, -v.active, -v.order)).name


@dataclass(frozen=True)
class SourceStats:
    """One source's share of a run: bytes, the time it served them, its failures, whether it was dropped."""

    source: str
    bytes: int
    seconds: float  # from its first request to its last byte
    requests: int
    errors: int
    stalls: int
    files_dropped: int  # files it was dropped for
    dropped: str | None  # why it was dropped for the whole run, if it was

    @property
    def mean_speed(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "bytes": self.bytes, "seconds": round(self.seconds, 3), "requests": self.requests,
                "mean_speed_bytes_per_second": round(self.mean_speed), "errors": self.errors, "stalls": self.stalls,
                "files_dropped": self.files_dropped, "dropped": self.dropped}  # fmt: skip


class _Source:
    __slots__ = ("active", "bytes", "dropped", "errors", "files_dropped", "first", "last", "order", "requests", "speed", "stalls")

    def __init__(self, order: int) -> None:
        self.order = order
        self.active = 0
        self.speed: float | None = None
        self.bytes = self.requests = self.errors = self.stalls = self.files_dropped = 0
        self.first: float | None = None
        self.last: float | None = None
        self.dropped: str | None = None


class SourceHealth:
    """The sources of one run as they serve: connections open, speed, bytes, failures, drops."""

    def __init__(self, *, cap: int | None = None, clock: Callable[[], float] = time.monotonic, poll: float = _POLL) -> None:
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"the connections per source must be a whole number >= 1, not {cap!r}")
        self.cap = cap
        self._clock = clock
        self._poll = poll
        self._ready = threading.Condition()
        self._sources: dict[str, _Source] = {}

    def _get(self, name: str) -> _Source:
        source = self._sources.get(name)
        if source is None:
            source = self._sources[name] = _Source(len(self._sources))
        return source

    def known(self, names: Sequence[str]) -> None:
        """Make the sources known in this order (the run's preference), so reports list them so."""
        with self._ready:
            for name in names:
                self._get(name)

    def dropped(self, name: str) -> str | None:
        """Why ``name`` was dropped for the run, or None."""
        with self._ready:
            source = self._sources.get(name)
            return source.dropped if source is not None else None

    def acquire(self, names: Sequence[str], avoid: Collection[str], stop: threading.Event) -> str | None:
        """A connection to the best of ``names`` (see :func:`pick`), waiting for one to come free;
        None when ``stop`` is set first, or when every one of them is dropped for the run."""
        with self._ready:
            while not stop.is_set():
                usable = [n for n in names if self._get(n).dropped is None]
                if not usable:
                    return None
                views = [self._view(n) for n in usable]
                choice = pick(views, avoid)
                if choice is not None:
                    source = self._sources[choice]
                    source.active += 1
                    source.requests += 1
                    if source.first is None:
                        source.first = self._clock()
                    return choice
                self._ready.wait(self._poll)
            return None

    def _view(self, name: str) -> SourceView:
        source = self._sources[name]
        return SourceView(name, source.order, source.active, self.cap, source.speed)

    def release(self, name: str) -> None:
        """A connection to ``name`` closed."""
        with self._ready:
            self._sources[name].active -= 1
            self._ready.notify_all()

    def served(self, name: str, nbytes: int, seconds: float) -> None:
        """A request to ``name`` brought ``nbytes`` in ``seconds``: its speed per connection moves."""
        with self._ready:
            source = self._get(name)
            source.bytes += nbytes
            source.last = self._clock()
            if seconds > 0 and nbytes > 0:
                rate = nbytes / seconds
                source.speed = rate if source.speed is None else (1 - _SMOOTHING) * source.speed + _SMOOTHING * rate

    def failed(self, name: str, how: Failure) -> None:
        """A request to ``name`` failed: a stall makes its measured speed zero."""
        with self._ready:
            source = self._get(name)
            if how is Failure.STALL:
                source.stalls += 1
                source.speed = 0.0
            else:
                source.errors += 1

    def dropped_for_file(self, name: str) -> str | None:
        """``name`` was dropped for one file; after :data:`DROPS_FOR_RUN` files, for the run (the reason returned)."""
        with self._ready:
            source = self._get(name)
            source.files_dropped += 1
            if source.dropped is None and source.files_dropped >= DROPS_FOR_RUN:
                source.dropped = f"dropped for {source.files_dropped} files"
                self._ready.notify_all()
                return source.dropped
            return None

    def drop(self, name: str, reason: str) -> None:
        """No request goes to ``name`` for the rest of the run."""
        with self._ready:
            source = self._get(name)
            if source.dropped is None:
                source.dropped = reason
            self._ready.notify_all()

    def wake(self) -> None:
        with self._ready:
            self._ready.notify_all()

    def report(self) -> tuple[SourceStats, ...]:
        """Every source that took part, in the run's order."""
        with self._ready:
            items = sorted(self._sources.items(), key=lambda item: item[1].order)
            return tuple(
                SourceStats(name, s.bytes, (s.last - s.first) if s.first is not None and s.last is not None else 0.0,
                            s.requests, s.errors, s.stalls, s.files_dropped, s.dropped)  # fmt: skip
                for name, s in items
                if name and (s.requests or s.dropped)  # a link of no named source is not one
            )
