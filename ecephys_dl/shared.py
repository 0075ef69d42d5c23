"""What all transfers of one run share: the HTTP client, the connection caps, the rate limit, the sources' health, the cancel switch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from typing import Protocol

import httpx

from ecephys_dl.errors import UsageError
from ecephys_dl.health import SourceHealth
from ecephys_dl.redirects import normalize_hosts
from ecephys_dl.slots import ConnectionSlots, TokenBucket

__all__ = ["Abortable", "Shared"]


class Abortable(Protocol):
    """A transfer in progress that a cancel stops."""

    def abort(self) -> None:
        """Stop now, at a clean point."""


class Shared:
    """What all transfers of one run share: the httpx client, a cap on open connections, an
    optional total rate limit (bytes/s, a token bucket over every connection) and a cancel switch.

    ``allowed_hosts`` are the hosts (``host`` or ``host:port``) a redirect may lead to besides
    each file's own host; by default none. ``source_connections`` caps the connections open to
    any one source (None: only ``max_connections``), and :attr:`health` measures how each source
    serves. ``sleep`` and ``clock`` are injectable for tests;
    with the real ``time.sleep`` every wait wakes at once when the run is cancelled.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        max_connections: int = 16,
        limit_rate: int | None = None,
        allowed_hosts: Collection[str] = (),
        source_connections: int | None = None,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise UsageError(f"the connection cap must be a whole number >= 1, not {max_connections!r}")
        if limit_rate is not None and (
            isinstance(limit_rate, bool) or not isinstance(limit_rate, int) or limit_rate < 1
        ):
            raise UsageError(f"the rate limit must be a whole number of bytes per second >= 1, not {limit_rate!r}")
        if source_connections is not None and (
            isinstance(source_connections, bool) or not isinstance(source_connections, int) or source_connections < 1
        ):
            raise UsageError(f"the connections per source must be a whole number >= 1, not {source_connections!r}")
        self.client = client
        self.max_connections = max_connections
        self.limit_rate = limit_rate
        self.allowed_hosts = normalize_hosts(allowed_hosts)
        self.sleep = sleep
        self.clock = clock
        self.slots = ConnectionSlots(max_connections)
        self.bucket = TokenBucket(limit_rate, clock) if limit_rate is not None else None
        self.health = SourceHealth(cap=source_connections, clock=clock)
        self._cancel = threading.Event()
        self._running: set[Abortable] = set()
        self._registry = threading.Lock()

    def cancel(self) -> None:
        """Make every transfer stop at a clean point and raise :class:`~ecephys_dl.errors.TransferCancelled`."""
        self._cancel.set()
        with self._registry:
            running = list(self._running)
        for transfer in running:
            transfer.abort()
        self.slots.wake()
        self.health.wake()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def register(self, transfer: Abortable) -> None:
        """``transfer`` runs: a cancel aborts it."""
        with self._registry:
            self._running.add(transfer)

    def unregister(self, transfer: Abortable) -> None:
        with self._registry:
            self._running.discard(transfer)
